"""Batch super-resolution on Ray Data: ``super_resolve(paths_or_dataset, engine_set, output, ...)`` returns a Ray
Dataset with one row per input (its run-report record), computed by a pool of actors that each load the engine set
once and run :func:`~qdit4sr_export.runtime.image_job.super_resolve_image`, the per-image code of a local ``run``
(same pipeline, same output names, bytes, hashes and record fields).

Faults: each image is its own task. A worker that dies mid-image is restarted by Ray and the image retried (on the
restarted or another worker) up to ``MAX_RETRIES`` times; an image that still has no result (it kills every worker
that takes it) is dropped by Ray Data (``max_errored_blocks=-1``) and :func:`records` reports it as failed. A bad
image (unreadable, corrupt, too small, non-finite result) is a failed record from the worker, never a task error.
Outputs are written atomically by the workers, so a killed worker leaves no partial image.

The engine set is read by every worker at the same path (a shared file system, or one node) or, with
``ship_engine_set=True``, shipped through Ray's object store once per node (:mod:`engine_shipping`).
"""

from __future__ import annotations

import json
import logging
import posixpath
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from qdit4sr_export.errors import UserError
from qdit4sr_export.runtime.image_job import ImageSettings, failure, super_resolve_image, worker_name

RAY_EXTRA = "pip install 'qdit4sr-export[ray]'"
#: Retries of an image whose worker died (Ray restarts the worker; the image may land on any live one).
MAX_RETRIES = 2
#: Columns of the returned dataset besides ``record`` (the whole record as JSON).
COLUMNS = ("input", "output", "status", "error", "sha256", "seconds", "worker")


def require_ray():
    """The ``ray`` module with Ray Data, or a one-line error naming the extra that installs it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UserError(f"--ray needs Ray Data, which is not installed: {RAY_EXTRA}") from None
    return ray


def connect(address: str = "auto", *, verbose: bool = False) -> str:
    """Join the Ray cluster at ``address`` ("auto": RAY_ADDRESS, else a cluster started on this machine with
    ``ray start``, else a new local one); returns where the driver is connected."""
    ray = require_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=None if address == "auto" else address, include_dashboard=False,
                     log_to_driver=verbose, logging_level=logging.INFO if verbose else logging.ERROR)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise UserError(f"--ray {address}: cannot join a Ray cluster there ({str(exc).splitlines()[0]})") from None
    if not verbose:  # the run's own bar and per-image lines say what Ray Data's INFO logs would
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    return ray.get_runtime_context().gcs_address


def record_columns(records: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """A batch of records as Ray Data columns: the main fields, and each whole record as JSON."""
    columns = {key: np.array([r.get(key) for r in records], dtype=object) for key in COLUMNS}
    columns["record"] = np.array([json.dumps(r) for r in records], dtype=object)
    return columns


class SRWorker:
    """A Ray Data actor: opens the engine set's pipeline once, then super-resolves one row (``path``, ``output``,
    optionally ``bytes``) per call."""

    def __init__(self, engine, backend: str | None, device: str | None, threads: int | None,
                 settings: ImageSettings, verify: str = "quick") -> None:
        from qdit4sr_export.runtime.engine_shipping import ShippedEngineSet, materialize
        from qdit4sr_export.runtime.pipeline_loader import engine_set_pipeline, resolve_backend

        folder = materialize(engine) if isinstance(engine, ShippedEngineSet) else Path(engine)
        if not (folder / "manifest.json").is_file():
            raise UserError(f"{folder}: no engine set at this path on worker {worker_name()}; put it on a path "
                            "every node reads, or ship it (--ship-engine-set)")
        chosen, device = resolve_backend(backend, True, device)
        self.folder = folder
        self.pipe, _ = engine_set_pipeline(folder, chosen, device, threads, verify)
        if hasattr(self.pipe.runner, "load_all"):  # sessions now, so an image's time is the image's own
            self.pipe.runner.load_all()
        self.settings = settings

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = []
        for i, path in enumerate(batch["path"]):
            data = batch["bytes"][i] if "bytes" in batch else None
            try:
                records.append(super_resolve_image(self.pipe, path, batch["output"][i], self.settings, data=data))
            except Exception as exc:  # a bug or a backend failure on one image must not stop the others
                records.append(failure(path, f"{path}: unexpected error on {worker_name()}: "
                                             f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))
        return record_columns(records)


def _with_outputs(dataset, output: str | Path | None):
    """A dataset with a ``path`` column gets ``output`` = the output folder / the input's file name."""
    if "output" in dataset.columns():
        return dataset
    if output is None:
        raise UserError("super_resolve: give an output folder, or an 'output' column in the dataset")
    folder = str(output)

    def name_outputs(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**batch, "output": np.array([str(Path(folder) / posixpath.basename(str(p))) for p in batch["path"]],
                                            dtype=object)}
    return dataset.map_batches(name_outputs, batch_format="numpy")


def input_dataset(inputs, output: str | Path | None = None):
    """The inputs as a Ray dataset of (``path``, ``output``[, ``bytes``]) rows, one image per block (the unit a
    worker's death costs): a dataset with a ``path`` column (e.g. ``ray.data.read_binary_files(...,
    include_paths=True)``, any filesystem pyarrow reads), a list of paths, or a list of (path, output) pairs."""
    ray = require_ray()
    if isinstance(inputs, ray.data.Dataset):
        if "path" not in inputs.columns():
            raise UserError("super_resolve: the dataset needs a 'path' column (read_binary_files(..., "
                            "include_paths=True) gives one)")
        return _with_outputs(inputs, output)
    items = []
    for item in inputs:
        src, dst = item if isinstance(item, tuple) else (item, None)
        if dst is None:
            if output is None:
                raise UserError("super_resolve: give an output folder for inputs without their own output path")
            dst = Path(output) / Path(src).name
        items.append({"path": str(src), "output": str(dst)})
    if not items:
        raise UserError("super_resolve: no inputs")
    return ray.data.from_items(items, override_num_blocks=len(items))


def default_workers(threads: int, gpus_per_worker: float) -> int:
    """As many workers as the cluster's CPUs (or GPUs, when workers take GPUs) hold; a one-line error when not even
    one worker fits (Ray would wait for it forever)."""
    import ray

    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    if threads > cpus or gpus_per_worker > gpus:
        raise UserError(f"a worker needs {threads} CPU(s) and {gpus_per_worker:g} GPU(s); the Ray cluster has "
                        f"{cpus:g} CPU(s) and {gpus:g} GPU(s)")
    return max(1, int(gpus // gpus_per_worker) if gpus_per_worker else int(cpus // threads))


def super_resolve(inputs, engine_set: str | Path, output: str | Path | None = None, *, options=None,
                  alpha: str = "keep", backend: str | None = None, device: str | None = None,
                  threads: int | None = None, workers: int | None = None, gpus_per_worker: float = 0,
                  ship_engine_set: bool = False, verify: str = "quick"):
    """Super-resolve ``inputs`` (see :func:`input_dataset`) with ``engine_set`` on the connected Ray cluster
    (connecting with "auto" if not yet), writing into ``output``. Returns the lazy Ray Dataset of records (columns
    :data:`COLUMNS` and ``record``, the whole record as JSON): iterate it (or :func:`records`) to run.

    Each of ``workers`` actors (default: what the cluster holds) reserves ``threads`` CPUs (default 1, also its
    intra-op threads) and ``gpus_per_worker`` GPUs. ``options`` is a ``PipelineOptions`` (default: the model's
    pipeline.json)."""
    from qdit4sr_export.runtime.engine_shipping import ship
    from qdit4sr_export.runtime.pipeline import PipelineOptions

    ray = require_ray()
    if not ray.is_initialized():
        connect("auto")
    threads = threads or 1
    fitting = default_workers(threads, gpus_per_worker)  # a one-line error if not even one fits
    workers = workers or fitting
    dataset = input_dataset(inputs, output)
    engine = ship(engine_set) if ship_engine_set else str(Path(engine_set).resolve())
    settings = ImageSettings(options or PipelineOptions(), alpha)
    with warnings.catch_warnings():
        # Ray 2.60 deprecates passing Ray remote args (max_task_retries) this way, with no named replacement yet;
        # the ray extra pins ray < 2.64, where they go.
        warnings.simplefilter("ignore", DeprecationWarning)
        result = dataset.map_batches(
            SRWorker, batch_size=1, batch_format="numpy", concurrency=workers, num_cpus=threads,
            num_gpus=gpus_per_worker or None, max_restarts=-1, max_task_retries=MAX_RETRIES,
            fn_constructor_kwargs={"engine": engine, "backend": backend, "device": device, "threads": threads,
                                   "settings": settings, "verify": verify})
    result.context.max_errored_blocks = -1  # an image that kills every worker is dropped, not the job
    result.context.enable_progress_bars = False
    return result


def _user_error_in(exc: BaseException | None) -> str | None:
    """The message of a UserError behind a Ray error (a worker that could not start: Ray passes on only the text of
    its traceback), or None."""
    prefix = f"{UserError.__module__}.{UserError.__qualname__}: "
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, UserError):
            return str(exc)
        lines = [line for line in str(exc).splitlines() if line.startswith(prefix)]
        if lines:
            return lines[-1][len(prefix):]
        exc = exc.__cause__ or exc.__context__
    return None


def records(dataset, inputs: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The records of ``dataset`` (from :func:`super_resolve`) as they arrive, then a failed record for each of
    ``inputs`` that came back from no worker (its task failed ``MAX_RETRIES + 1`` times)."""
    pending = dict.fromkeys(inputs)
    try:
        for row in dataset.iter_rows():
            record = json.loads(row["record"])
            pending.pop(record["input"], None)
            yield record
    except Exception as exc:
        message = _user_error_in(exc)
        if message is None:
            raise
        raise UserError(f"a Ray worker failed: {message}") from None
    for source in pending:
        yield failure(source, f"{source}: no result: its Ray task failed {MAX_RETRIES + 1} times (the worker "
                              "died each time; see the Ray logs)", worker="ray")
