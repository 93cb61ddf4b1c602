"""The ``triton`` backend: an engine set's DiT4SR with every quantized linear on the Triton kernels.

``activate(variant)`` gives each layer the (weight bits, activation bits) of that variant (weights are stored
once and shared); attention runs through torch SDPA. On a GPU the model runs in bfloat16 (the kernels
accumulate in int32/fp32) and each (variant, input shapes) is captured once as a CUDA graph and replayed; on
the CPU the same kernels run in Triton's interpreter (float32, eager), which is what CI tests.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from qdit4sr_export.runtime.cuda_graphs import GraphCache
from qdit4sr_export.runtime.registry import ENGINE_SET, register_backend

from qdit4sr_export.errors import UserError

log = logging.getLogger(__name__)


def prepare_device(device: str) -> None:
    """Fail early, in one line, when triton or CUDA is missing; select the interpreter for the CPU."""
    from qdit4sr_export.plugins.triton_env import prepare

    prepare(device)


class TritonRunner:
    """Runner (``activate / infer / deactivate``) over the kernel model of an engine set."""

    name = "triton"

    def __init__(self, engine, *, device: str = "cpu", dtype: torch.dtype | None = None,
                 cuda_graphs: bool = True) -> None:
        from qdit4sr_export.runtime.kernel_model import build_kernel_model

        prepare_device(device)
        self.engine = engine
        self.device = torch.device(device)
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.model, self.layers = build_kernel_model(engine, device=self.device, dtype=self.dtype)
        self.patch_size = self.model.config.patch_size
        self.use_graphs = cuda_graphs and self.device.type == "cuda"
        self.graphs = GraphCache(self._forward)
        self.active: int | None = None

    def activate(self, variant: int) -> None:
        if not 0 <= variant < len(self.engine.variants):
            raise UserError(f"engine set has no variant {variant}")
        bits = self.engine.variants[variant].layers
        for name, layer in self.layers.items():
            if name not in bits:
                raise UserError(f"variant {variant} gives no bits for layer '{name}'")
            layer.select(*bits[name])
        self.active = variant

    def _forward(self, *args: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(*args, return_dict=False)[0]

    def infer(self, hidden_states, lr_latent, encoder_hidden_states, pooled_projections, timestep) -> torch.Tensor:
        if self.active is None:
            raise RuntimeError("activate a variant before infer")
        self.engine.check_latent(*hidden_states.shape[-2:])
        args = [t.to(self.device, self.dtype) for t in (hidden_states, lr_latent, encoder_hidden_states,
                                                        pooled_projections)]
        args.append(timestep.to(self.device, torch.float32))
        if self.use_graphs:
            try:
                out = self.graphs((self.active, *(tuple(a.shape) for a in args)), args)
            except RuntimeError as exc:  # a capture failure: keep running, eagerly, and say so once
                log.warning("CUDA graph capture failed (%s); running eagerly", str(exc).splitlines()[0])
                self.use_graphs = False
                out = self._forward(*args)
        else:
            out = self._forward(*args)
        return out.float().cpu()

    def deactivate(self) -> None:
        self.active = None

    def close(self) -> None:
        self.graphs.clear()


@register_backend("triton", summary="Triton low-bit kernels (rotate_quantize + lowbit_gemm) on the engine set's "
                  "packed weights; CUDA, or the CPU through Triton's interpreter", reads=ENGINE_SET,
                  devices=("cpu", "cuda"), prepare=prepare_device)
def open_triton(engine, *, device: str = "cpu", threads: int | None = None, **_: Any) -> TritonRunner:
    if threads:
        torch.set_num_threads(threads)
    return TritonRunner(engine, device=device)
