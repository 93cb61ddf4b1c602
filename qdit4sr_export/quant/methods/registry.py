"""Methods register by name: a frozen config dataclass plus a builder from (model, calibration) to a QuantPlan,
with the properties the CLI acts on. Method modules import torch inside their builders, so listing methods and
checking options costs no heavy import."""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from qdit4sr_export.errors import UserError
from qdit4sr_export.registry import Registry

Builder = Callable[..., Any]  # (model, config, *, calibration, progress) -> QuantPlan


@dataclass(frozen=True)
class Method:
    """A registered quantization method and what the CLI needs to know about it.

    ``uses_calibration``: it calibrates when calibration data is given (``needs_calibration``: it cannot run
    without). ``quantizes`` False marks the FP baseline: its builder returns no plan, and ``build`` packages the
    unquantized model."""

    name: str
    summary: str
    config_cls: type
    build: Builder
    needs_calibration: bool = False
    uses_calibration: bool = False
    quantizes: bool = True

    def wants_calibration(self, config: Any) -> bool:
        """Whether a plan with ``config`` uses calibration data (a config may say no, e.g. an ablation that turns
        its only data-driven step off)."""
        if not self.uses_calibration:
            return False
        wants = getattr(config, "wants_calibration", None)
        return self.needs_calibration or wants is None or bool(wants())

    @property
    def vasmp(self) -> bool:
        """Whether ``wbits=None`` (``--wbits auto``) allocates per-layer weight bits at ``wbits_budget``."""
        return "wbits_budget" in self.options()

    @property
    def abits_schedule(self) -> str | None:
        """How the method sets activation bits per timestep: ``"switch"`` (its config's ``vatmp`` turns a schedule
        averaging ``abits`` on or off), ``"always"`` (it always searches one; ``abits`` is its average), or None
        (static ``abits``). A config says ``"always"`` with a class attribute ``ABITS_SCHEDULE``."""
        if "vatmp" in self.options():
            return "switch"
        return getattr(self.config_cls, "ABITS_SCHEDULE", None)

    def options(self) -> dict[str, Any]:
        """Config fields and their defaults (what ``--method-option KEY=VALUE`` may set)."""
        return {f.name: f.default for f in dataclasses.fields(self.config_cls) if f.name != "version"}


METHODS: Registry[Method] = Registry("method")


def register(name: str, *, summary: str, config: type, needs_calibration: bool = False,
             uses_calibration: bool | None = None, quantizes: bool = True) -> Callable[[Builder], Builder]:
    """Decorator: register ``build`` under ``name`` (``uses_calibration`` defaults to ``needs_calibration``)."""
    uses = needs_calibration if uses_calibration is None else uses_calibration
    if needs_calibration and not uses:
        raise ValueError(f"method {name!r} needs calibration data but does not use it")

    def wrap(build: Builder) -> Builder:
        @functools.wraps(build)
        def checked(model, cfg, *, calibration=None, progress: bool = False):
            if needs_calibration:
                from qdit4sr_export.model.weights import has_weights, lazy_copy, materialize, on_meta

                if calibration is None:
                    raise UserError(f"method '{name}' needs calibration data: pass --calib (LR photos or a "
                                    "latents file)")
                if not has_weights(model):
                    raise UserError(f"method '{name}' runs the model on calibration data: give a checkpoint, "
                                    "not a preset name")
                if on_meta(model):  # it runs the FP model: a lazily opened model is loaded whole (float32)
                    model = materialize(lazy_copy(model))
            return build(model, cfg, calibration=calibration if uses else None, progress=progress)

        METHODS.add(name, Method(name, summary, config, checked, needs_calibration, uses, quantizes))
        return build
    return wrap


def method_names(*, quantizing_only: bool = False) -> list[str]:
    """Every registered name in registration order; ``quantizing_only`` leaves out the FP baseline."""
    return [m.name for m in METHODS if m.quantizes or not quantizing_only]


def get_method(name: str) -> Method:
    return METHODS.get(name)


def _convert(value: Any, annotation: Any, key: str, method: str) -> Any:
    """Turn a CLI string into the field's type (int, float, bool, None-able)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    args = typing.get_args(annotation) or (annotation,)
    if text.lower() in ("none", "null") and type(None) in args:
        return None
    for kind in (bool, int, float, str):
        if kind in args or any(getattr(a, "__origin__", None) is kind for a in args):
            if kind is bool:
                if text.lower() in ("1", "true", "yes", "on"):
                    return True
                if text.lower() in ("0", "false", "no", "off"):
                    return False
                continue
            try:
                return kind(text)
            except ValueError:
                continue
    raise UserError(f"method '{method}' option {key}={value!r}: cannot read it as {annotation}")


def make_config(method: Method, options: Mapping[str, Any]) -> Any:
    """The method's config with ``options`` set; an option the method does not have is a one-line error."""
    hints = typing.get_type_hints(method.config_cls)
    fields = method.options()
    kwargs = {}
    for key, value in options.items():
        field = key.replace("-", "_")
        if field not in fields:
            raise UserError(f"option {field} does not apply to method '{method.name}' (its options: "
                            f"{', '.join(sorted(fields))})")
        kwargs[field] = _convert(value, hints[field], key, method.name)
    return method.config_cls(**kwargs)
