"""Lowering targets by name (``build --target``): the passes a target runs on the traced graph, the pass that
lowers each variant, and what it does once the engine set is written. ``ort`` (ONNX Runtime) is the default.

A new target registers here (or from its own module listed in :data:`TARGET_MODULES`) and needs no CLI edit.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from qdit4sr_export.errors import UserError

#: Modules whose import registers targets (besides this one's ``ort``).
TARGET_MODULES: tuple[str, ...] = ("qdit4sr_export.trt_target",)


@dataclass(frozen=True)
class Target:
    """A lowering target. ``graph_passes(plan, options)`` run once on the traced FP graph; ``lowering(plan, store,
    options)`` is the per-variant pass (it fills ``store``, shared by the variants, and counts its ``paths``);
    ``final_passes(plan, options)`` run on every graph written, the FP build's included (target-specific rewrites
    both must get so their speeds compare fairly, e.g. ONNX Runtime's fused attention); ``trace(model, plan,
    options, max_latent)`` makes the graph (default: ``trace_to_onnx``); ``finish(folder, manifest, notices,
    options)`` runs after the graphs are written (e.g. building engines) and returns manifest additions.
    ``options`` are the target's settings (``build -T KEY=VALUE``) with their defaults, ``check`` validates them."""

    name: str
    summary: str
    graph_passes: Callable[..., list]
    lowering: Callable[..., Any]
    make_store: Callable[[], Any]
    finish: Callable[..., dict[str, Any] | None] | None = None
    final_passes: Callable[..., list] | None = None
    trace: Callable[..., Any] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    check: Callable[[dict[str, Any]], None] | None = None

    def configure(self, given: Mapping[str, str]) -> dict[str, Any]:
        """The target's options with ``given`` (strings from the CLI) converted to each default's type."""
        out = dict(self.options)
        for key, raw in given.items():
            key = key.replace("-", "_")
            if key not in self.options:
                known = ", ".join(sorted(self.options)) or "none"
                raise UserError(f"target '{self.name}' has no option '{key}' (its options: {known})")
            default = self.options[key]
            try:
                out[key] = type(default)(raw) if not isinstance(default, bool) else \
                    {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}[str(raw).lower()]
            except (ValueError, KeyError):
                raise UserError(f"target '{self.name}' option {key}={raw!r}: expected a {type(default).__name__}") \
                    from None
        if self.check is not None:
            self.check(out)
        return out


_REGISTRY: dict[str, Target] = {}
_loaded = False


def register_target(target: Target) -> Target:
    if target.name in _REGISTRY:
        raise ValueError(f"target {target.name!r} registered twice")
    _REGISTRY[target.name] = target
    return target


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in TARGET_MODULES:
            importlib.import_module(module)


def target_names() -> list[str]:
    _load()
    return list(_REGISTRY)


def get_target(name: str) -> Target:
    _load()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown target '{name}'; valid: {', '.join(_REGISTRY)}") from None


def _ort_passes(plan, options) -> list:
    from qdit4sr_export.passes.annotate_bits import AnnotateWeightBitsPass
    from qdit4sr_export.passes.fold_hadamard import FoldHadamardPass
    from qdit4sr_export.passes.insert_hsvd import InsertHSVDPass

    return [FoldHadamardPass(plan), InsertHSVDPass(plan), AnnotateWeightBitsPass(plan)]


def _ort_lowering(plan, store, options):
    from qdit4sr_export.passes.lower_ort import LowerOrtPass

    return LowerOrtPass(plan, store)


def _ort_store():
    from qdit4sr_export.passes.lower_ort import WeightStore

    return WeightStore()


def _ort_final_passes(plan, options) -> list:
    from qdit4sr_export.passes.fuse_attention import FuseAttentionPass

    return [FuseAttentionPass()]


register_target(Target("ort", "ONNX Runtime graphs: integer GEMMs (MatMulIntegerToFloat), packed INT4/INT8 weights, "
                       "fused attention", _ort_passes, _ort_lowering, _ort_store, final_passes=_ort_final_passes))
