"""Open an :class:`~qdit4sr_export.runtime.pipeline.SRPipeline` on an engine set or an FP checkpoint folder, with a
registered backend; the same code opens it in ``run`` and in each Ray worker.

``threads`` bounds both the backend's intra-op threads and torch's (the autoencoder, resizing and colour fix), so a
run with ``--threads N`` computes the same bytes in one process or in a worker that was given N CPUs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qdit4sr_export.errors import UserError


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def resolve_backend(name: str | None, is_engine: bool, device: str | None):
    """The backend named ``name`` (default: the first that reads what the source is) and its checked device."""
    from qdit4sr_export.runtime.registry import CHECKPOINT, ENGINE_SET, default_backend, get_backend

    reads = ENGINE_SET if is_engine else CHECKPOINT
    backend = default_backend(reads) if name is None else get_backend(name)
    if backend.reads != reads:
        if is_engine:
            raise UserError(f"--backend {backend.name} needs a checkpoint (an engine set holds no FP weights); give "
                            "the FP model folder, with --plan to simulate a plan")
        raise UserError(f"--backend {backend.name} needs an engine set (build one with `qdit4sr-export build`)")
    return backend, backend.check_device(device)


def engine_set_pipeline(folder: Path, backend, device: str, threads: int | None, verify: str = "quick"):
    """(pipeline, report info) of engine set ``folder`` on ``backend``; ``verify`` as in ``EngineSet.load``."""
    from qdit4sr_export.runtime.engine_set import EngineSet
    from qdit4sr_export.runtime.pipeline import SRPipeline, load_assets

    _set_threads(threads)
    engine = EngineSet.load(folder, verify=verify)
    assets = load_assets(folder, shift=engine.shift(), config=engine.pipeline_config())
    runner = backend.open(engine, device=device, threads=threads)
    pipe = SRPipeline(runner, assets, engine, patch_size=engine.config().get("patch_size", 2))
    return pipe, engine_set_info(engine, backend, device)


def engine_set_info(engine, backend, device: str) -> dict[str, Any]:
    """What a run report says about the engine set it ran."""
    return {"engine_set": str(engine.folder), "backend": backend.name, "device": device,
            "build_steps": len(engine.timesteps), "variants": len(engine.variants),
            "variant_lookup": "by timestep value: the variant whose manifest interval holds the step's timestep"}


def checkpoint_pipeline(model: str, backend, plan_file: str | None, device: str, threads: int | None):
    """(pipeline, report info) of an FP pipeline folder on a checkpoint backend (torch: FP, or ``plan_file``
    simulated)."""
    from qdit4sr_export.compiler.build import model_root
    from qdit4sr_export.engine.jsonfile import read_json_object
    from qdit4sr_export.model.sampling import DEFAULT_SHIFT
    from qdit4sr_export.runtime.pipeline import SRPipeline, load_assets

    root = model_root(Path(model))
    if root is None:
        raise UserError(f"{model}: not a pipeline folder (no transformer/ beside vae/); run needs its autoencoder")
    _set_threads(threads)
    runner = backend.open(model, device=device, threads=threads, plan=plan_file)
    config: dict[str, Any] = {}
    shift = DEFAULT_SHIFT
    if (root / "pipeline.json").is_file():
        config = read_json_object(root / "pipeline.json", "pipeline settings")
    if (root / "scheduler" / "scheduler_config.json").is_file():
        shift = float(read_json_object(root / "scheduler" / "scheduler_config.json", "scheduler config")
                      .get("shift", shift))
    info = {"model": str(model), "backend": backend.name, "device": device, "plan": plan_file}
    return SRPipeline(runner, load_assets(root, shift=shift, config=config), patch_size=runner.patch_size), info
