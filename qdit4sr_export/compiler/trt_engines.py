"""TensorRT engines of a ``trt`` engine set: one serialized engine per variant, built with polygraphy's loaders.

The plugins (``plugins/trt_plugins.py``) are registered by importing that module before parsing. Each engine has
one optimization profile (batch 1..``max_batch``, latent side ``min_latent_side``..``max_latent_side``, the engine
set's prompt length), strongly typed (the graph's own fp16/fp32 types), and the builder's timing cache is kept in
the engine set (``timing.cache``) so rebuilding is faster. Before building, every plugin kernel is compiled and
checked against TensorRT's launch contract (``plugins/trt_aot.py``). The manifest records the TensorRT version, the GPU's compute
capability and what the plugins' PTX needs (``plugins``: PTX ISA, target, kernels): an engine is refused on another
version or GPU, or with a driver older than the PTX ISA, with a one-line error naming both.

Nothing here imports TensorRT at module import: the profile logic is plain Python (tested without TensorRT).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from qdit4sr_export.errors import UserError

TIMING_CACHE = "timing.cache"
INSTALL_HINT = ("TensorRT is not installed: pip install 'qdit4sr-export[trt]' and TensorRT >= 10.9 itself (NVIDIA's "
                "wheels: pip install tensorrt --extra-index-url https://pypi.nvidia.com, on a machine with a GPU)")


def tensorrt_available() -> bool:
    """Whether TensorRT with Python plugins (``tensorrt.plugin``, 10.9+) imports here."""
    try:
        import tensorrt  # noqa: F401
        import tensorrt.plugin  # noqa: F401
    except Exception:  # noqa: BLE001 - a stub package or a broken install is "not available"
        return False
    return True


def require_tensorrt():
    """The ``tensorrt`` module, or a one-line error naming the ``trt`` extra and TensorRT's own install."""
    if not tensorrt_available():
        raise UserError(INSTALL_HINT)
    import tensorrt

    return tensorrt


def engine_file(variant_file: str) -> str:
    return Path(variant_file).with_suffix(".engine").as_posix()


def prompt_tokens(folder: Path) -> int:
    """Text tokens of the engine set's prompt embeddings (the profile's fixed text length)."""
    from safetensors import safe_open

    path = folder / "prompt_embeds.safetensors"
    with safe_open(str(path), "np") as f:
        return int(f.get_slice("prompt_embeds").get_shape()[1])


def profile_shapes(config: Mapping[str, Any], options: Mapping[str, Any], tokens: int) -> dict[str, tuple]:
    """(min, opt, max) shape per graph input for the engines' optimization profile."""
    c = int(config["in_channels"])
    b, lo, opt, hi = int(options["max_batch"]), int(options["min_latent_side"]), int(options["opt_latent_side"]), \
        int(options["max_latent_side"])
    patch = int(config.get("patch_size", 2))
    limit = int(config["pos_embed_max_size"]) * patch
    for side in (lo, opt, hi):
        if side % patch or side > limit:
            raise UserError(f"target trt: latent side {side} must be a multiple of {patch} and at most {limit}")
    latent = ((1, c, lo, lo), (b, c, opt, opt), (b, c, hi, hi))
    return {"hidden_states": latent, "lr_latent": latent,
            "encoder_hidden_states": tuple((n, tokens, int(config["joint_attention_dim"])) for n in (1, b, b)),
            "pooled_projections": tuple((n, int(config["pooled_projection_dim"])) for n in (1, b, b)),
            "timestep": ((1,), (b,), (b,))}


def device_capability() -> str:
    """Compute capability of the current CUDA device, e.g. "9.0"."""
    import torch

    if not torch.cuda.is_available():
        raise UserError("TensorRT engines need a CUDA GPU; none is visible here")
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


def check_engines(manifest: Mapping[str, Any], folder: Path) -> None:
    """Refuse engines built by another TensorRT version or for another GPU, naming both."""
    trt = require_tensorrt()
    engines = manifest.get("engines")
    if not engines:
        raise UserError(f"{folder}: the engine set has no TensorRT engines; build them with "
                        f"`qdit4sr-export engines {folder}` where TensorRT is installed")
    if engines["tensorrt_version"] != trt.__version__:
        raise UserError(f"{folder}: engines were built with TensorRT {engines['tensorrt_version']}, this is "
                        f"{trt.__version__}; rebuild them with `qdit4sr-export engines {folder} --force`")
    cc = device_capability()
    if engines["compute_capability"] != cc:
        raise UserError(f"{folder}: engines were built for compute capability {engines['compute_capability']}, this "
                        f"GPU is {cc}; rebuild them with `qdit4sr-export engines {folder} --force`")
    if "plugins" not in engines:
        raise UserError(f"{folder}: the engines predate the plugins' PTX record (ISA and target); rebuild them with "
                        f"`qdit4sr-export engines {folder} --force`")
    check_plugin_needs(engines["plugins"], capability_tuple(), driver_cuda_version(), str(folder))


def capability_tuple() -> tuple[int, int]:
    major, minor = (int(x) for x in device_capability().split("."))
    return major, minor


def driver_cuda_version() -> tuple[int, int]:
    """The CUDA release of the installed NVIDIA driver, e.g. (12, 4) (``cuDriverGetVersion`` of libcuda)."""
    import ctypes

    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        raise UserError("no NVIDIA driver here (libcuda.so.1 does not load): TensorRT engines need one") from None
    version = ctypes.c_int(0)
    if lib.cuDriverGetVersion(ctypes.byref(version)) != 0:
        raise UserError("the NVIDIA driver did not report its CUDA version (cuDriverGetVersion failed)")
    return version.value // 1000, version.value % 1000 // 10


def check_plugin_needs(needs: Mapping[str, Any], capability: tuple[int, int], driver: tuple[int, int],
                       where: str) -> None:
    """Refuse, in one line naming both, a GPU or driver that cannot run the plugins' PTX (``needs``: the manifest's
    ``engines.plugins``: PTX ISA and target)."""
    from qdit4sr_export.plugins.trt_contract import check_capability, check_driver, parse_version

    check_capability(needs["ptx_target"], capability, where)
    check_driver(parse_version(needs["ptx_isa"]), driver, where)


def build_engines(folder: Path, manifest: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """Build and save one engine per variant graph in ``folder``; returns the manifest's ``engines`` entry."""
    trt = require_tensorrt()
    from polygraphy.backend.trt import CreateConfig, NetworkFromOnnxPath, Profile, engine_from_network, save_engine

    import qdit4sr_export.plugins.trt_plugins  # noqa: F401  registers the qdit4sr plugins with TensorRT

    # Every plugin kernel compiled and checked against TensorRT's launch contract before TensorRT builds anything:
    # a kernel it could not launch, a GPU newer than the PTX ISA, or a driver too old is a one-line refusal here.
    from qdit4sr_export.plugins.trt_aot import check_graph_kernels

    major, minor = capability_tuple()
    needs = check_graph_kernels([folder / v["file"] for v in manifest["variants"]], major * 10 + minor)
    check_plugin_needs(needs, (major, minor), driver_cuda_version(), f"{folder}: engine build")
    shapes = profile_shapes(manifest["model"]["config"], options, prompt_tokens(folder))
    profile = Profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.add(name, min=lo, opt=opt, max=hi)
    cache = folder / TIMING_CACHE
    files = {}
    for v in manifest["variants"]:
        network = NetworkFromOnnxPath(str(folder / v["file"]), strongly_typed=True)
        config = CreateConfig(profiles=[profile], load_timing_cache=str(cache) if cache.is_file() else None)
        engine = engine_from_network(network, config=config, save_timing_cache=str(cache))
        out = engine_file(v["file"])
        tmp = folder / f".{out}.tmp-{os.getpid()}"
        save_engine(engine, str(tmp))
        os.replace(tmp, folder / out)
        files[str(v["index"])] = out
    return {"tensorrt_version": trt.__version__, "compute_capability": device_capability(),
            "profile": {k: [list(s) for s in v] for k, v in shapes.items()}, "files": files,
            "timing_cache": TIMING_CACHE, "plugins": needs}
