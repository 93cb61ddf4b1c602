"""``qdit4sr-export run MODEL_OR_ENGINE_DIR INPUT... -o OUT``: x4 super-resolution of images, in this process or on a
Ray cluster (``--ray``), resumable (``--resume``). The per-image work and the report are the runtime's
(:mod:`~qdit4sr_export.runtime.image_job`, :mod:`~qdit4sr_export.runtime.run_report`); this module checks the
arguments and every output before any compute, and picks where the images run."""

from __future__ import annotations

import hashlib
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from qdit4sr_export.cli.options import Command, backend_lines, list_flag, option, renamed
from qdit4sr_export.errors import UserError

#: The report of a folder output when --report is not given.
DEFAULT_REPORT_NAME = "run.json"


def _outputs(inputs: list[Path], output: Path, many: bool) -> list[Path]:
    """Where each result goes: -o is a file for one input, a folder for a folder or several inputs."""
    from qdit4sr_export.runtime.images import IMAGE_SUFFIXES

    if not many:
        return [output / inputs[0].name if output.is_dir() else output]
    if output.suffix.lower() in IMAGE_SUFFIXES or (output.exists() and not output.is_dir()):
        raise UserError(f"-o {output}: {len(inputs)} inputs need an output folder, not a file name")
    return [output / p.name for p in inputs]


@click.command(cls=Command)
@click.argument("model", metavar="MODEL_OR_ENGINE_DIR", type=click.Path(exists=True, path_type=Path))
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...", type=click.Path(path_type=Path))
@option("-o", "--output", section="Output", required=True, type=click.Path(path_type=Path),
        help="Output image (one input) or folder (a folder or several inputs).")
@option("--alpha", section="Output", type=click.Choice(["keep", "drop"]), default="keep",
        help="Images with transparency: upscale the alpha channel bicubically and keep it, or drop it.")
@option("--report", "report_file", section="Output", default=None, type=click.Path(dir_okay=False, path_type=Path),
        help="JSON run report, rewritten as images finish: per image its output's sha256, time, worker, steps "
             f"(default: OUT/{DEFAULT_REPORT_NAME} for a folder output, none for a single file).")
@option("--force", section="Output", is_flag=True,
        help="Overwrite existing outputs and report (default: refuse them before any compute).")
@option("--resume", section="Output", is_flag=True,
        help="Skip inputs whose output exists with the sha256 the report records; run the rest (default: refuse "
             "existing outputs).")
@option("--grid-steps", section="Sampling", type=click.IntRange(min=1), default=None, metavar="N",
        help="Sampling grid: steps from sigma 1 to 0 (default: the model's pipeline.json); the run executes those at "
             "or below --start-sigma.")
@option("--start-sigma", section="Sampling", type=click.FloatRange(0, 1, min_open=True), default=None,
        help="Start from (1 - s) LR latent + s noise (1 = pure noise; default: the model's pipeline.json).")
@option("--cfg", "guidance", section="Sampling", type=float, default=None,
        help="Classifier-free guidance scale (1 = off; default: the model's pipeline.json).")
@option("--seed", section="Sampling", type=int, default=0, help="Noise seed.")
@option("--color-fix", section="Sampling", type=click.Choice(["adain", "wavelet", "none"]), default=None,
        help="Colour correction against the bicubic image (default: the model's pipeline.json, else adain).")
@option("--tile", section="Sampling", type=click.IntRange(min=8), default=64, help="Latent tile size.")
@option("--overlap", section="Sampling", type=click.IntRange(min=0), default=24, help="Latent tile overlap.")
@option("--backend", section="Runtime", default=None, metavar="NAME",
        help="Backend (--list-backends; default: ort for an engine set, torch for a checkpoint).")
@list_flag("--list-backends", "backends", backend_lines)
@option("--device", section="Runtime", type=click.Choice(["cpu", "cuda"]), default=None,
        help="Where the backend runs (default: its first device: cpu, cuda for trt).")
@option("--threads", section="Runtime", type=click.IntRange(min=1), default=None,
        help="Intra-op threads of the backend and torch (default: all cores; with --ray 1 per worker, and each "
             "worker reserves that many CPUs).")
@option("--plan", "plan_file", section="Runtime", default=None, type=click.Path(exists=True, dir_okay=False),
        help="torch backend: simulate this QuantPlan on the checkpoint (default: FP).")
@option("--verify", section="Runtime", is_flag=True,
        help="Hash every engine-set file in full before running (by default large files get a sampled check).")
@option("--ray", "ray_address", section="Runtime", is_flag=False, flag_value="auto", default=None,
        metavar="[auto|ADDRESS]", help="Run on a Ray cluster: auto (RAY_ADDRESS, else one started here with `ray "
        "start`, else a new local one) or the head's ADDRESS (default: this process; needs the ray extra).")
@option("--workers", section="Runtime", type=click.IntRange(min=1), default=None,
        help="--ray: worker actors, each loading the engine set once (default: as many as the cluster's CPUs, or "
             "GPUs with --gpus-per-worker, hold).")
@option("--gpus-per-worker", section="Runtime", type=click.FloatRange(min=0), default=0.0,
        help="--ray: GPUs each worker reserves (with --device cuda or --backend trt).")
@option("--ship-engine-set", section="Runtime", is_flag=True,
        help="--ray: send the engine set to each node once through Ray's object store (default: every worker "
             "reads it at the same path, e.g. a shared file system).")
@renamed("--steps", "--grid-steps", "grid_steps", type=click.IntRange(min=1))
def run(model, inputs, output, alpha, report_file, force, resume, grid_steps, start_sigma, guidance, seed, color_fix,
        tile, overlap, backend, device, threads, plan_file, verify, ray_address, workers, gpus_per_worker,
        ship_engine_set) -> None:
    """Super-resolve INPUT images (files or folders) x4 with an engine set or an FP checkpoint folder.

    Outputs keep the input names (in the -o folder) and formats; greyscale stays greyscale, 16-bit PNG stays
    16-bit. Existing outputs are refused unless --force or --resume. A file that cannot be read (or is too small
    for the model) is reported and skipped; the others still run (exit status 1 then). Ctrl-C leaves whole outputs
    and a report of what is done; --resume finishes the rest.
    """
    if tile <= overlap:
        raise UserError(f"--overlap {overlap} must be smaller than --tile {tile}")
    is_engine = (model / "manifest.json").is_file()
    if plan_file and is_engine:
        raise UserError("--plan is for the torch backend on a checkpoint, not for an engine set")
    _check_ray_options(ray_address, workers, gpus_per_worker, ship_engine_set, is_engine, device)
    if force and resume:
        raise UserError("--force starts over and --resume keeps what is done: give one")
    missing = next((p for p in inputs if not p.exists()), None)
    if missing is not None:  # before the runtime (torch) loads; find_inputs says the same
        raise UserError(f"{missing}: no such file or folder")
    from qdit4sr_export.runtime.batch import check_unique_outputs
    from qdit4sr_export.runtime.images import check_output_format, find_inputs

    files = find_inputs(list(inputs))
    if not files:
        raise UserError(f"no image files in {', '.join(map(str, inputs))}")
    many = len(files) > 1 or any(p.is_dir() for p in inputs)
    jobs = list(zip(files, _outputs(files, output, many)))
    check_unique_outputs(jobs)
    for _, dst in jobs:
        check_output_format(dst)
    folder = output if many or output.is_dir() else None
    parent = output.parent if not output.is_dir() else output
    if not parent.is_dir():
        raise UserError(f"-o {output}: folder {parent} does not exist")
    report_path = report_file or (folder / DEFAULT_REPORT_NAME if folder else None)
    _check_existing(jobs, report_path, force, resume)
    from qdit4sr_export.runtime.pipeline_loader import resolve_backend

    chosen, device = resolve_backend(backend, is_engine, device)
    options = {"steps": grid_steps, "cfg": guidance, "start_sigma": start_sigma, "seed": seed, "tile": tile,
               "overlap": overlap, "color_fix": color_fix, "alpha": alpha}
    identity = _identity(model, is_engine, chosen.name, device, plan_file, options)
    carried = _resumable(report_path, identity, jobs) if resume else {}
    todo = [(src, dst) for src, dst in jobs if str(src) not in carried]
    if carried:
        click.echo(f"resume: {len(carried)} of {len(jobs)} images done earlier (outputs verified by sha256); "
                   f"running {len(todo)}")
    from qdit4sr_export.engine.atomic import remove_leftovers
    from qdit4sr_export.runtime.image_job import ImageSettings
    from qdit4sr_export.runtime.pipeline import PipelineOptions

    for path in [dst for _, dst in jobs] + ([report_path] if report_path else []):
        remove_leftovers(path)  # temporaries of a killed earlier run
    settings = ImageSettings(PipelineOptions(grid_steps, guidance, start_sigma, color_fix, seed, tile, overlap), alpha)
    batch = Batch(jobs, todo, carried, {"options": options, "identity": identity}, report_path, folder)
    if ray_address is None:
        failed = _run_local(model, is_engine, chosen, device, threads, plan_file, verify, settings, batch)
    else:
        failed = _run_ray(model, chosen, device, threads, verify, ray_address, workers, gpus_per_worker,
                          ship_engine_set, settings, batch)
    if report_path:
        click.echo(f"report: {report_path}")
    if failed:
        raise SystemExit(1)


@dataclass(frozen=True)
class Batch:
    """The run's images: every job (input, output), those still to do, the verified records carried over by
    --resume, the report header so far, where the report goes and the output folder (None: one output file)."""

    jobs: list
    todo: list
    carried: dict
    header: dict
    report_path: Path | None
    folder: Path | None


def _check_ray_options(ray_address, workers, gpus_per_worker, ship_engine_set, is_engine, device) -> None:
    given = [flag for flag, value in (("--workers", workers), ("--gpus-per-worker", gpus_per_worker),
                                      ("--ship-engine-set", ship_engine_set)) if value]
    if ray_address is None:
        if given:
            raise UserError(f"{given[0]} is for runs on Ray: add --ray")
        return
    if not is_engine:
        raise UserError("--ray runs engine sets (build one with `qdit4sr-export build`), not a checkpoint")
    if device == "cuda" and not gpus_per_worker:
        raise UserError("--ray with --device cuda needs --gpus-per-worker (Ray gives GPUs only to workers that "
                        "reserve them)")
    from qdit4sr_export.runtime.distributed import require_ray

    require_ray()


def _check_existing(jobs, report_path: Path | None, force: bool, resume: bool) -> None:
    """Existing outputs (or report) are refused unless --force (overwrite) or --resume (verify, skip, redo)."""
    if force or resume:
        return
    existing = [dst for _, dst in jobs if dst.exists()] + ([report_path] if report_path and report_path.exists()
                                                          else [])
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise UserError(f"{existing[0]} already exists{more}; pass --force to overwrite, or --resume to skip "
                        "the images a report records as done")


def _identity(model: Path, is_engine: bool, backend, device, plan_file, options: dict) -> dict:
    """What decides an output's bytes: --resume refuses a report made with another identity."""
    def digest(path) -> str:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()

    source = ({"engine_set_manifest_sha256": digest(model / "manifest.json")} if is_engine
              else {"model": str(model.resolve()), "plan_sha256": digest(plan_file) if plan_file else None})
    return {**source, "backend": backend, "device": device, "options": options}


def _resumable(report_path: Path | None, identity: dict, jobs) -> dict:
    from qdit4sr_export.runtime.run_report import verified_records

    if report_path is None or not report_path.is_file():
        click.echo(f"notice: --resume: no report at {report_path or '(none: give --report)'} to verify outputs "
                   "against; every input runs", err=True)
        return {}
    return verified_records(report_path, identity, jobs)


def _collect_until_done(records, batch: Batch, info: dict) -> int:
    """Record ``records`` into the report (a Ctrl-C or SIGTERM writes it and says what is done); the failures."""
    from qdit4sr_export import __version__
    from qdit4sr_export.runtime.batch import collect
    from qdit4sr_export.runtime.run_report import RunReport

    if batch.folder is not None:
        batch.folder.mkdir(exist_ok=True)
    report = RunReport(batch.report_path, {"tool_version": __version__, **info, **batch.header},
                       [str(src) for src, _ in batch.jobs], batch.carried)
    report.write()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        failed = collect(records, report, total=len(batch.todo))
    except KeyboardInterrupt:
        report.write()
        summary = report.summary()
        where = f"; report: {batch.report_path}" if batch.report_path else ""
        click.echo(f"error: interrupted: {summary['done']} of {summary['inputs']} images done, "
                   f"{summary['failed']} failed{where}; outputs are whole; run again with --resume to finish",
                   err=True)
        sys.exit(130)
    except BaseException:  # a bug: the report still says what was done before it
        report.write()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    report.write()
    return failed


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _run_local(model, is_engine, backend, device, threads, plan_file, verify, settings, batch: Batch) -> int:
    from qdit4sr_export.runtime.batch import local_records
    from qdit4sr_export.runtime.image_job import worker_name
    from qdit4sr_export.runtime.pipeline_loader import checkpoint_pipeline, engine_set_pipeline

    pipe, info = None, {"engine_set" if is_engine else "model": str(model), "backend": backend.name, "device": device}
    if batch.todo:
        if is_engine:
            pipe, info = engine_set_pipeline(model, backend, device, threads, "full" if verify else "quick")
        else:
            pipe, info = checkpoint_pipeline(str(model), backend, plan_file, device, threads)
    info["runner"] = {"ray": None, "workers": 1, "threads": threads, "worker": worker_name()}
    return _collect_until_done(local_records(pipe, batch.todo, settings), batch, info)


def _run_ray(model, backend, device, threads, verify, address, workers, gpus_per_worker, ship, settings,
             batch: Batch) -> int:
    from qdit4sr_export.runtime import distributed
    from qdit4sr_export.runtime.engine_set import EngineSet
    from qdit4sr_export.runtime.pipeline_loader import engine_set_info

    info = engine_set_info(EngineSet.load(model, verify="full" if verify else "quick"), backend, device)
    where = distributed.connect(address, verbose=logging.getLogger().level <= logging.INFO)
    threads = threads or 1
    workers = workers or distributed.default_workers(threads, gpus_per_worker)  # super_resolve checks one fits
    info["runner"] = {"ray": where, "workers": workers, "threads": threads, "gpus_per_worker": gpus_per_worker,
                      "engine_set_on_workers": "shipped through the Ray object store, once per node" if ship
                      else "read at the same path on every node"}
    records = []
    if batch.todo:
        dataset = distributed.super_resolve(batch.todo, model, options=settings.options, alpha=settings.alpha,
                                            backend=backend.name, device=device, threads=threads, workers=workers,
                                            gpus_per_worker=gpus_per_worker, ship_engine_set=ship)
        records = distributed.records(dataset, [str(src) for src, _ in batch.todo])
    return _collect_until_done(records, batch, info)
