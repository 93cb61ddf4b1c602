"""The ``trt`` backend: a ``--target trt`` engine set's serialized engines through polygraphy's ``TrtRunner``.

One execution context per variant, created on first use, all of them on one device-memory buffer sized for the
largest engine (only one variant runs at a time), so switching variants across the trajectory costs no extra
activation memory. The engines carry the plugins' ahead-of-time kernels; the plugin module is imported anyway so
an engine built with the JIT implementation also deserializes. Needs TensorRT and a CUDA GPU: without them, a
one-line error names what to install.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from qdit4sr_export.runtime.backends import numpy_feeds

from qdit4sr_export.errors import UserError


class TrtRunner:
    """Variant engines of an engine set behind the runner interface (``activate / infer / deactivate``)."""

    name = "trt"

    def __init__(self, engine) -> None:
        import qdit4sr_export.plugins.trt_plugins  # noqa: F401  registers the plugins (JIT implementations)
        import tensorrt as trt
        from polygraphy import cuda

        self.trt = trt
        self.engine_set = engine
        files = engine.manifest["engines"]["files"]
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engines = {}
        for v in engine.variants:
            data = (engine.folder / files[str(v.index)]).read_bytes()
            self.engines[v.index] = runtime.deserialize_cuda_engine(data)
            if self.engines[v.index] is None:
                raise UserError(f"{engine.folder}: TensorRT could not load {files[str(v.index)]}")
        size = max(e.device_memory_size_v2 for e in self.engines.values())
        self.memory = cuda.DeviceArray.raw((size,))
        self.runners: dict[int, Any] = {}
        self.active: int | None = None

    def _runner(self, index: int):
        if index not in self.runners:
            from polygraphy.backend.trt import TrtRunner as PolyTrtRunner

            engine = self.engines[index]
            context = engine.create_execution_context(self.trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            context.set_device_memory(self.memory.ptr, engine.device_memory_size_v2)
            runner = PolyTrtRunner(context, name=f"trt:variant_{index:02d}")
            runner.activate()
            self.runners[index] = runner
        return self.runners[index]

    def activate(self, variant: int) -> None:
        if variant not in self.engines:
            raise UserError(f"engine set has no variant {variant}")
        self._runner(variant)
        self.active = variant

    def infer(self, hidden_states, lr_latent, encoder_hidden_states, pooled_projections, timestep) -> torch.Tensor:
        if self.active is None:
            raise RuntimeError("activate a variant before infer")
        self.engine_set.check_latent(*hidden_states.shape[-2:])
        feeds = numpy_feeds(hidden_states, lr_latent, encoder_hidden_states, pooled_projections, timestep)
        out = self._runner(self.active).infer(feeds)["sample"]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))

    def deactivate(self) -> None:
        self.active = None

    def close(self) -> None:
        for runner in self.runners.values():
            runner.deactivate()
        self.runners.clear()
        self.memory.free()
