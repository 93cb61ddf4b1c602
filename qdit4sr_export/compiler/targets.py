"""Lowering targets by name (``build --target``): the passes a target runs on the traced graph, the pass that
lowers each variant, and what it does once the engine set is written. ``ort`` (ONNX Runtime) is the default.

A new target registers here (or from its own module listed in :data:`TARGET_MODULES`) and needs no CLI edit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import click
from typing import Any, Callable, Mapping

from qdit4sr_export.errors import UserError
from qdit4sr_export.passes.registry import PassStep
from qdit4sr_export.registry import Registry

#: Modules whose import registers targets (besides this one's ``ort``).
TARGET_MODULES: tuple[str, ...] = ("qdit4sr_export.compiler.trt_target",)


@dataclass(frozen=True)
class Target:
    """A lowering target. Its pipeline names registered passes (:mod:`qdit4sr_export.passes.registry`):
    ``graph_passes`` run once on the traced FP graph; ``lowering`` is the per-variant pass (it fills the store that
    ``make_store`` makes, shared by the variants, and counts its ``paths``); ``final_passes`` run on every graph
    written, the FP build's included (target-specific rewrites both must get so their speeds compare fairly, e.g.
    ONNX Runtime's fused attention). ``trace(model, plan, options, max_latent)`` makes the graph (default:
    ``trace_to_onnx``); ``finish(folder, manifest, notices, options)`` runs after the graphs are written (e.g.
    building engines) and returns manifest additions. ``options`` are the target's settings (``build -T
    KEY=VALUE``) with their defaults, ``check`` validates them."""

    name: str
    summary: str
    graph_passes: tuple[PassStep, ...]
    lowering: PassStep
    make_store: Callable[[], Any]
    finish: Callable[..., dict[str, Any] | None] | None = None
    final_passes: tuple[PassStep, ...] = ()
    trace: Callable[..., Any] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    check: Callable[[dict[str, Any]], None] | None = None
    #: Old option names still read for one release (old -> new), with a notice.
    renamed: Mapping[str, str] = field(default_factory=dict)

    def pipeline(self) -> dict[str, Any]:
        """The pass pipeline by name (the manifest records it; ``--list-targets`` prints it)."""
        return {"graph": [str(s) for s in self.graph_passes], "per_variant": ["split-variants", str(self.lowering)],
                "final": [str(s) for s in self.final_passes]}

    def upgrade(self, stored: Mapping[str, Any]) -> dict[str, Any]:
        """Options as an older manifest recorded them, under today's names."""
        return {self.renamed.get(k, k): v for k, v in stored.items()}

    def configure(self, given: Mapping[str, str]) -> dict[str, Any]:
        """The target's options with ``given`` (strings from the CLI) converted to each default's type."""
        out = dict(self.options)
        for key, raw in given.items():
            key = key.replace("-", "_")
            if key in self.renamed:
                click.echo(f"notice: target option {key} is deprecated and will be removed in the next release; use "
                           f"{self.renamed[key]}", err=True)
                key = self.renamed[key]
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


TARGETS: Registry[Target] = Registry("target", TARGET_MODULES)


def register_target(target: Target) -> Target:
    return TARGETS.add(target.name, target)


def target_names() -> list[str]:
    return TARGETS.names()


def get_target(name: str) -> Target:
    return TARGETS.get(name)


def _ort_store():
    from qdit4sr_export.passes.lower_ort import WeightStore

    return WeightStore()


register_target(Target("ort", "ONNX Runtime graphs: integer GEMMs (MatMulIntegerToFloat), packed INT4/INT8 weights, "
                       "fused attention",
                       graph_passes=(PassStep("fold-hadamard"), PassStep("insert-hsvd"), PassStep("annotate-bits")),
                       lowering=PassStep("lower-ort"), make_store=_ort_store,
                       final_passes=(PassStep("fuse-attention"),)))
