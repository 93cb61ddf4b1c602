"""The CLI's shared vocabulary: options grouped into sections in ``--help``, old spellings that still work for one
release with a one-line notice, and the ``--list-*`` flags that print a registry and exit.

Every command is a :class:`Command`; an option joins a help section with ``section=``. A deprecated spelling is a
hidden :class:`Deprecated` option whose ``apply`` turns its value into the new spelling before the command runs (it
refuses to be given together with the new one)."""

from __future__ import annotations

from typing import Any, Callable

import click
from click.core import ParameterSource

from qdit4sr_export.errors import UserError

#: Sections in the order --help prints them; an option without one lands in "Other options".
SECTIONS = ("Method", "Bits", "Calibration and sampling", "Target", "Sampling", "Runtime", "Tolerances", "Input",
            "Output", "Other options")


class Option(click.Option):
    """A click option that names its ``--help`` section."""

    def __init__(self, *args: Any, section: str = "Other options", **kwargs: Any) -> None:
        if section not in SECTIONS:
            raise ValueError(f"unknown help section {section!r}")
        super().__init__(*args, **kwargs)
        self.section = section


class Deprecated(click.Option):
    """An old spelling kept for one release: hidden, it prints ``notice: --old is deprecated; use NEW`` and
    ``apply(ctx, value)`` sets the new spelling's parameters (a conflict with them is a one-line error)."""

    def __init__(self, *args: Any, use: str, apply: Callable[[click.Context, Any], None], **kwargs: Any) -> None:
        kwargs.setdefault("hidden", True)
        kwargs.setdefault("help", f"Deprecated: use {use}.")
        super().__init__(*args, **kwargs)
        self.use = use
        self.apply = apply

    @property
    def spelling(self) -> str:
        return max(self.opts, key=len)


class Command(click.Command):
    """A command whose ``--help`` groups options by section and which translates deprecated spellings."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            if not isinstance(param, click.Option):
                continue
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(getattr(param, "section", "Other options"), []).append(record)
        for name in SECTIONS:
            if name in sections:
                with formatter.section(name):
                    formatter.write_dl(sections[name])

    def invoke(self, ctx: click.Context) -> Any:
        for param in self.params:
            if isinstance(param, Deprecated):
                value = ctx.params.pop(param.name, None)
                if ctx.get_parameter_source(param.name) == ParameterSource.COMMANDLINE:
                    click.echo(f"notice: {param.spelling} is deprecated and will be removed in the next release; "
                               f"use {param.use}", err=True)
                    param.apply(ctx, value)
        return super().invoke(ctx)


def option(*decls: str, section: str, **kwargs: Any):
    """``click.option`` for an option in help section ``section``."""
    return click.option(*decls, cls=Option, section=section, **kwargs)


def deprecated(*decls: str, use: str, apply: Callable[[click.Context, Any], None], **kwargs: Any):
    """``click.option`` for an old spelling (see :class:`Deprecated`)."""
    return click.option(*decls, cls=Deprecated, use=use, apply=apply, **kwargs)


def given(ctx: click.Context, name: str) -> bool:
    """Whether parameter ``name`` was given on the command line (or set there by a deprecated spelling)."""
    return ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE


def set_param(ctx: click.Context, name: str, value: Any, old: str, new: str) -> None:
    """Give parameter ``name`` the value of a deprecated spelling; an error if the new spelling was given too."""
    if given(ctx, name):
        raise UserError(f"{old} and {new} set the same thing: give {new} only")
    ctx.params[name] = value
    ctx.set_parameter_source(name, ParameterSource.COMMANDLINE)


def renamed(old: str, new: str, name: str, **kwargs: Any):
    """``old`` is now spelled ``new`` (parameter ``name``), with the same values."""
    return deprecated(old, f"deprecated_{name}_{old.strip('-').replace('-', '_')}", use=new,
                      apply=lambda ctx, value: set_param(ctx, name, value, old, new), **kwargs)


def method_option(old: str, key: str, value_of: Callable[[Any], Any] = str, **kwargs: Any):
    """``old VALUE`` is now ``-O key=VALUE`` (the method's config field)."""
    def apply(ctx: click.Context, value: Any) -> None:
        ctx.params["method_option"] = (*ctx.params.get("method_option", ()), f"{key}={value_of(value)}")
    return deprecated(old, f"deprecated_{key}_{old.strip('-').replace('-', '_')}", use=f"-O {key}=...",
                      apply=apply, **kwargs)


def list_flag(flag: str, what: str, lines: Callable[[], list[str]]):
    """``--list-X``: print ``lines()`` and exit before any argument is required."""
    def show(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value and not ctx.resilient_parsing:
            click.echo("\n".join(lines()))
            ctx.exit()
    return option(flag, is_flag=True, is_eager=True, expose_value=False, callback=show,
                  help=f"List the {what}, then exit.", section="Other options")


def method_lines() -> list[str]:
    from qdit4sr_export.quant.methods import get_method, method_names

    out = []
    for name in method_names():
        m = get_method(name)
        out.append(f"{name:<10} {m.summary}\n{'':<10} options: "
                   + ", ".join(f"{k}={v}" for k, v in m.options().items()))
    return out


def target_lines() -> list[str]:
    from qdit4sr_export.compiler.targets import TARGETS

    out = []
    for t in TARGETS:
        opts = ", ".join(f"{k}={v}" for k, v in t.options.items()) or "none"
        pipeline = t.pipeline()
        passes = " -> ".join(pipeline["graph"]) + " | per variant: " + " -> ".join(pipeline["per_variant"])
        if pipeline["final"]:
            passes += " | every graph: " + " -> ".join(pipeline["final"])
        out.append(f"{t.name:<6} {t.summary}\n{'':<6} passes: {passes}\n{'':<6} options: {opts}")
    return out


def backend_lines() -> list[str]:
    from qdit4sr_export.runtime.registry import BACKENDS

    return [f"{b.name:<13} reads {b.reads}; devices {', '.join(b.devices)}: {b.summary}" for b in BACKENDS]


def key_values(items: tuple[str, ...], flag: str) -> dict[str, str]:
    """``KEY=VALUE`` items of a repeatable option as a dict (keys with '-' spelled '_')."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = value.strip()
    return out
