"""Passes by name: each pass class registers itself with a one-line summary and the build context its constructor
takes (``plan``, ``store``, ``variant``). Lowering targets name their pass pipelines with :class:`PassStep`, so a
new pass registers in its own module, a target lists it, and neither the builder nor the CLI changes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from qdit4sr_export.registry import Registry

#: Modules whose import registers passes (in pipeline order, which --list-passes follows).
PASS_MODULES = ("qdit4sr_export.passes.fold_hadamard", "qdit4sr_export.passes.insert_hsvd",
                "qdit4sr_export.passes.annotate_bits", "qdit4sr_export.passes.split_variants",
                "qdit4sr_export.passes.lower_ort", "qdit4sr_export.passes.lower_trt",
                "qdit4sr_export.passes.fuse_attention")
#: What a pass constructor may take from the build, by name.
CONTEXT = ("plan", "store", "variant")


@dataclass(frozen=True)
class PassInfo:
    """A registered pass: its class and the build context its constructor takes, in order."""

    name: str
    summary: str
    cls: type
    takes: tuple[str, ...]


@dataclass(frozen=True)
class PassStep:
    """One step of a target's pipeline: a registered pass by name, with constructor keywords."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.name}({opts})" if opts else self.name


PASSES: Registry[PassInfo] = Registry("pass", PASS_MODULES)


def register_pass(name: str, summary: str, takes: tuple[str, ...] = ("plan",)) -> Callable[[type], type]:
    """Class decorator: register a pass under ``name``; ``takes`` lists the build context its constructor reads."""
    unknown = set(takes) - set(CONTEXT)
    if unknown:
        raise ValueError(f"pass {name!r} takes unknown context {sorted(unknown)}; known: {', '.join(CONTEXT)}")

    def wrap(cls: type) -> type:
        PASSES.add(name, PassInfo(name, summary, cls, tuple(takes)))
        cls.pass_name = name
        return cls
    return wrap


def make_pass(step: PassStep | str, **context: Any):
    """An instance of ``step``'s pass, given the build context (``plan=``, ``store=``, ``variant=``)."""
    step = PassStep(step) if isinstance(step, str) else step
    info = PASSES.get(step.name)
    missing = [k for k in info.takes if k not in context]
    if missing:
        raise ValueError(f"pass {step.name!r} needs {', '.join(missing)} from the build")
    return info.cls(*(context[k] for k in info.takes), **step.options)
