"""A polygraphy runner over any registered backend's runner, so ``compare`` checks every backend with
polygraphy's Comparator the same way (ONNX Runtime variants go through polygraphy's own OnnxrtRunner)."""

from __future__ import annotations

import time

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner

from qdit4sr_export.runtime.backends import INPUTS

OUTPUT = "sample"


class BackendVariantRunner(BaseRunner):
    """Runs one engine-set variant on a backend runner (``activate / infer / deactivate``) for polygraphy."""

    def __init__(self, runner, variant: int, name: str) -> None:
        super().__init__(name=name, prefix="qdit4sr-backend")
        self.runner = runner
        self.variant = variant

    def activate_impl(self) -> None:
        self.runner.activate(self.variant)

    def get_input_metadata_impl(self):
        from polygraphy.common import TensorMetadata

        meta = TensorMetadata()
        for name, rank in zip(INPUTS, (4, 4, 3, 2, 1)):  # every dimension dynamic (polygraphy needs the rank)
            meta.add(name, np.float32, [None] * rank)
        return meta

    def infer_impl(self, feed_dict):
        start = time.perf_counter()
        out = self.runner.infer(*(torch.from_numpy(np.asarray(feed_dict[n])) for n in INPUTS))
        self.inference_time = time.perf_counter() - start  # polygraphy's Comparator sums it
        return {OUTPUT: out.detach().to("cpu", torch.float32).numpy()}

    def deactivate_impl(self) -> None:
        self.runner.deactivate()
