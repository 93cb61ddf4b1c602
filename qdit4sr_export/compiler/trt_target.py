"""The ``trt`` lowering target: plugin graphs for TensorRT, and their engines where TensorRT is installed.

Graph: the model traced at the target's ``precision`` (fp16 by default: the graph computes in half precision where
the model does, float32 where diffusers keeps statistics in float32), the planned layers' weights kept in float32
for the quantizer, rotations folded into the weights without online nodes (the plugin rotates), the H-SVD factors
as initializers, and ``LowerTrtPass`` turning each quantized linear into ``RotateQuantize`` + ``LowbitGemm``.
Engines: built by :mod:`qdit4sr_export.compiler.trt_engines` when ``tensorrt`` imports (``engines=auto``), else a notice
says how to build them later (``qdit4sr-export engines ENGINE_SET``).
"""

from __future__ import annotations

from typing import Any

from qdit4sr_export.compiler.targets import Target, register_target
from qdit4sr_export.errors import UserError
from qdit4sr_export.passes.registry import PassStep

PRECISIONS = ("fp16", "fp32")
ENGINE_MODES = ("auto", "no")
OPTIONS = {"precision": "fp16", "engines": "auto", "max_batch": 2, "min_latent_side": 32, "opt_latent_side": 64,
           "max_latent_side": 128}
RENAMED = {"min_side": "min_latent_side", "opt_side": "opt_latent_side", "max_side": "max_latent_side"}


def check_options(options: dict[str, Any]) -> None:
    if options["precision"] not in PRECISIONS:
        raise UserError(f"target trt: precision must be one of {', '.join(PRECISIONS)}, got {options['precision']!r}")
    if options["engines"] not in ENGINE_MODES:
        raise UserError(f"target trt: engines must be one of {', '.join(ENGINE_MODES)}, got {options['engines']!r}")
    if not 1 <= options["min_latent_side"] <= options["opt_latent_side"] <= options["max_latent_side"] \
            or options["max_batch"] < 1:
        raise UserError("target trt: the profile needs 1 <= min_latent_side <= opt_latent_side <= max_latent_side and "
                        "max_batch >= 1")


def _trace(model, plan, options, max_latent=None):
    import torch

    from qdit4sr_export.compiler.trace import trace_to_onnx

    if plan is not None:
        from qdit4sr_export.passes.lower_trt import check_supported

        check_supported(plan)  # refuse before tracing, naming the layer
    if options["precision"] == "fp32":
        return trace_to_onnx(model, max_latent=max_latent)
    # the quantizer reads the planned layers' float32 weights, exactly as the simulation does
    keep = [f"{name}.{part}" for name in (plan.layers if plan is not None else ()) for part in ("weight", "bias")]
    return trace_to_onnx(model, dtype=torch.float16, max_latent=max_latent, float32=keep)


def _store():
    from qdit4sr_export.passes.lower_trt import TrtWeightStore

    return TrtWeightStore()


def _finish(folder, manifest, notices, options) -> dict[str, Any] | None:
    from qdit4sr_export.compiler.trt_engines import build_engines, tensorrt_available

    if options["engines"] == "no":
        return None
    if not tensorrt_available():
        notices.append("TensorRT is not installed here: the engine set holds the plugin graphs only; build the "
                       "engines where TensorRT is installed with `qdit4sr-export engines ENGINE_SET`")
        return None
    return {"engines": build_engines(folder, manifest, options)}


register_target(Target("trt", "TensorRT plugin graphs (RotateQuantize + LowbitGemm on the Triton kernels), and "
                              "engines where TensorRT is installed",
                       graph_passes=(PassStep("fold-hadamard", {"online": False}),
                                     PassStep("insert-hsvd", {"emit": False}), PassStep("annotate-bits")),
                       lowering=PassStep("lower-trt"), make_store=_store, finish=_finish, trace=_trace,
                       options=OPTIONS, check=check_options, renamed=RENAMED))
