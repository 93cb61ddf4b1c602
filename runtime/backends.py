"""Runners behind one interface: ``activate(variant) / infer(...) / deactivate()`` (registered by name in
:mod:`qdit4sr_export.runtime.registry`).

``OrtRunner`` runs an engine set's variant graphs with ONNX Runtime (CPU, or CUDA when onnxruntime-gpu is
installed and asked for); ``TorchRunner`` runs the FP model or the fake-quant simulation of a plan (the oracle).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Protocol

import numpy as np
import torch
from qdit4sr_export.runtime import ort_placement as placement
from qdit4sr_export.runtime.engine_set import EngineSet
from qdit4sr_export.runtime.ort_placement import CUDA
from qdit4sr_export.runtime.shared_weights import SharedInt8, session_graph

from qdit4sr_export.errors import UserError

#: Graph optimizers that would give each session a private copy of weights derived from shared initializers.
NO_COPY_OPTIMIZERS = ["ConstantFolding"]
INPUTS = ("hidden_states", "lr_latent", "encoder_hidden_states", "pooled_projections", "timestep")


class Runner(Protocol):
    """What the pipeline needs from a backend."""

    name: str

    def activate(self, variant: int) -> None: ...

    def infer(self, hidden_states: torch.Tensor, lr_latent: torch.Tensor, encoder_hidden_states: torch.Tensor,
              pooled_projections: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor: ...

    def deactivate(self) -> None: ...


def numpy_feeds(*inputs: torch.Tensor) -> dict[str, np.ndarray]:
    """The five model inputs as contiguous float32 numpy arrays by graph input name."""
    return {name: np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy()) for name, t in zip(INPUTS, inputs)}


def ort_providers(device: str) -> list[str]:
    """ONNX Runtime providers for ``device`` ("cpu" or "cuda"); asking for CUDA without it is an error."""
    import onnxruntime as ort

    if device == "cpu":
        return ["CPUExecutionProvider"]
    if CUDA not in ort.get_available_providers():
        raise UserError(f"--device cuda needs onnxruntime-gpu (pip install 'qdit4sr-export[gpu]'; {CUDA} is not "
                        f"among this onnxruntime's providers: {', '.join(ort.get_available_providers())})")
    return [CUDA, "CPUExecutionProvider"]


def uses_plugin_ops(engine: EngineSet) -> bool:
    """Whether the engine set's graphs hold the TensorRT plugin ops (a ``--target trt`` build)."""
    return engine.manifest.get("target", {}).get("name") == "trt"


def make_session(path, providers: list[str], threads: int | None = None, *, external_folder=None,
                 plugin_ops: bool = False, initializers=None, profile_prefix: str | None = None,
                 prepack: bool = False):
    """An ORT session on one variant graph (a path, or serialized bytes whose external data lies in
    ``external_folder``) with the runtime's settings. ``plugin_ops`` registers the CPU reference implementations
    of the TensorRT plugin ops (``plugins/ort_reference.py``) so a ``--target trt`` graph runs as TensorRT would
    parse it; ``initializers`` (name -> OrtValue) are shared initializers used in place
    (:mod:`qdit4sr_export.runtime.shared_weights`); ``profile_prefix`` turns ORT's profiler on; ``prepack`` lets
    the session fold and prepack its weights into a private copy (:mod:`qdit4sr_export.runtime.prepacked`)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if plugin_ops:
        from qdit4sr_export.plugins.ort_reference import custom_ops_library

        so.register_custom_ops_library(custom_ops_library())
    for name, value in (initializers or {}).items():
        so.add_initializer(name, value)
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    if external_folder is not None:
        so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(external_folder))
    # Keep float activations where the graph dequantizes INT4 weights (the simulation's arithmetic).
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    # Variants share weights: ORT maps weights.bin and uses it in place unless a session prepacks a weight or
    # constant-folds it (INT4 -> INT8 casts) into a private copy; both off unless ``prepack`` (BENCHMARKS.md,
    # "ONNX Runtime latency", prices both).
    if not prepack:
        so.add_session_config_entry("session.disable_prepacking", "1")
    if threads:
        so.intra_op_num_threads = threads
    if CUDA in providers:  # name every node the CUDA EP leaves to the CPU (runtime/ort_placement.py)
        placement.record(so)
    model = path if isinstance(path, bytes) else str(path)
    session = ort.InferenceSession(model, so, providers=providers,
                                   disabled_optimizers=[] if prepack else NO_COPY_OPTIMIZERS)
    placement.report(session, providers, "ONNX Runtime session" if isinstance(path, bytes) else str(path))
    return session


class OrtRunner:
    """Variant sessions of an engine set, created on first use and kept (at most ``max_sessions``, LRU); INT4
    weights are unpacked to int8 once and shared by all of them (:mod:`~qdit4sr_export.runtime.shared_weights`),
    or, with ``prepack``, folded and prepacked by each session into its own copy (faster, more memory)."""

    name = "ort"

    def __init__(self, engine: EngineSet, *, device: str = "cpu", threads: int | None = None,
                 max_sessions: int | None = None, profile_prefix: str | None = None, prepack: bool = False) -> None:
        self.engine = engine
        self.prepack = prepack
        self.profile_prefix = profile_prefix
        self.providers = ort_providers(device)
        self.threads = threads
        self.max_sessions = max_sessions
        self.shared = SharedInt8(engine.weights)
        self.sessions: OrderedDict[int, object] = OrderedDict()
        self.active: int | None = None

    def _session(self, index: int):
        if index in self.sessions:
            self.sessions.move_to_end(index)
            return self.sessions[index]
        path = self.engine.folder / self.engine.variants[index].file
        if self.prepack:  # each session folds and prepacks its own copy of the weights
            from qdit4sr_export.runtime.prepacked import prepacked_graph

            graph, shared = prepacked_graph(path), None
        else:
            graph, shared = session_graph(path, self.shared)
        session = make_session(graph, self.providers, self.threads, external_folder=self.engine.folder,
                               plugin_ops=uses_plugin_ops(self.engine), initializers=shared,
                               profile_prefix=self.profile_prefix, prepack=self.prepack)
        self.sessions[index] = session
        while self.max_sessions is not None and len(self.sessions) > self.max_sessions:
            self.sessions.popitem(last=False)
        return session

    def load_all(self) -> None:
        """Create every variant's session now (instead of on first use)."""
        for v in self.engine.variants:
            self._session(v.index)

    def activate(self, variant: int) -> None:
        if not 0 <= variant < len(self.engine.variants):
            raise UserError(f"engine set has no variant {variant}")
        self._session(variant)
        self.active = variant

    def infer(self, hidden_states, lr_latent, encoder_hidden_states, pooled_projections, timestep) -> torch.Tensor:
        if self.active is None:
            raise RuntimeError("activate a variant before infer")
        self.engine.check_latent(*hidden_states.shape[-2:])
        feeds = numpy_feeds(hidden_states, lr_latent, encoder_hidden_states, pooled_projections, timestep)
        return torch.from_numpy(self._session(self.active).run(None, feeds)[0])

    def deactivate(self) -> None:
        self.active = None

    def close(self) -> None:
        self.sessions.clear()
        self.shared.clear()


class TorchRunner:
    """The FP model, or the simulation of ``plan`` on a copy of it (it follows the timestep by itself)."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, plan=None, *, cache_weights: bool = False) -> None:
        if plan is not None:
            from qdit4sr_export.quant.simulate import apply_plan

            model = copy.deepcopy(model)
            sim = apply_plan(model, plan)
            if cache_weights:  # keep the rebuilt float weights (small models: same numbers, faster)
                sim.cache_weights()
        self.model = model.eval()
        self.plan = plan
        self.patch_size = model.config.patch_size

    def activate(self, variant: int) -> None:
        """No-op: the simulation picks each layer's bits from the timestep argument."""

    def infer(self, hidden_states, lr_latent, encoder_hidden_states, pooled_projections, timestep) -> torch.Tensor:
        with torch.no_grad():
            return self.model(hidden_states, lr_latent, encoder_hidden_states, pooled_projections, timestep,
                              return_dict=False)[0]

    def deactivate(self) -> None:
        """No-op."""
