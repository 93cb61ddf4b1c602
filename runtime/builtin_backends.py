"""The built-in backends: ``ort`` (engine sets on ONNX Runtime, the embedded default), ``ort-prepacked`` (the
same with prepacked private weights per session: memory for speed), ``torch`` (an FP
checkpoint, or the fake-quant simulation of a plan on it: the oracle) and ``trt`` (the TensorRT engines of a
``--target trt`` set). Heavy imports happen when one is opened."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qdit4sr_export.runtime.registry import CHECKPOINT, ENGINE_SET, register_backend


@register_backend("ort", summary="ONNX Runtime on the engine set's variant graphs (CPU; CUDA with onnxruntime-gpu)",
                  reads=ENGINE_SET, devices=("cpu", "cuda"), runs_graphs=True)
def open_ort(engine, *, device: str = "cpu", threads: int | None = None, **_: Any):
    from qdit4sr_export.runtime.backends import OrtRunner

    return OrtRunner(engine, device=device, threads=threads)


@register_backend("ort-prepacked", summary="ONNX Runtime (CPU) with each variant session folding and prepacking "
                  "its own copy of the weights: faster integer GEMMs, one weight copy per variant in memory",
                  reads=ENGINE_SET, devices=("cpu",))
def open_ort_prepacked(engine, *, threads: int | None = None, **_: Any):
    from qdit4sr_export.runtime.backends import OrtRunner

    return OrtRunner(engine, threads=threads, prepack=True)


@register_backend("torch", summary="PyTorch on an FP checkpoint, or the simulation of --plan on it (the oracle)",
                  reads=CHECKPOINT, devices=("cpu",))
def open_torch(model_path: str | Path, *, plan: str | None = None, **_: Any):
    from qdit4sr_export.runtime.backends import TorchRunner

    from qdit4sr_export.model import load_dit4sr
    from qdit4sr_export.quant.plan import QuantPlan

    net = load_dit4sr(model_path)
    return TorchRunner(net, QuantPlan.load(plan) if plan else None)


@register_backend("trt", summary="TensorRT engines of a --target trt engine set (needs TensorRT and a CUDA GPU)",
                  reads=ENGINE_SET, devices=("cuda",))
def open_trt(engine, **_: Any):
    from qdit4sr_export.compiler.trt_engines import check_engines, require_tensorrt
    from qdit4sr_export.errors import UserError

    require_tensorrt()
    target = engine.manifest.get("target", {}).get("name")
    if target != "trt":
        raise UserError(f"{engine.folder}: built for target '{target}'; the trt backend runs sets built with "
                        "--target trt (run this one with --backend ort)")
    check_engines(engine.manifest, engine.folder)
    from qdit4sr_export.runtime.trt_backend import TrtRunner

    return TrtRunner(engine)
