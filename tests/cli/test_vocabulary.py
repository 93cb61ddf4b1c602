"""One CLI vocabulary: every option has help and says its default, options sit in help sections, the list flags
appear wherever the option they list is accepted, and old spellings are hidden."""

import click
import pytest
from click.testing import CliRunner

from qdit4sr_export.cli import main
from qdit4sr_export.cli.options import Deprecated, Option

COMMANDS = sorted(main.commands)
#: Spellings replaced by one name per concept (they still parse for one release, hidden).
OLD = {"--steps", "--side", "--max-latent", "--svd-rank", "--local-rank", "--max-segments", "--rotation-seed",
       "--hadamard-block", "--hadamard", "--wbits-min", "--wbits-max", "--no-hsvd", "--no-vasmp", "--no-vatmp"}


def _options(name):
    return [p for p in main.commands[name].params if isinstance(p, click.Option)]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_visible_option_has_help_a_section_and_its_default(name):
    for p in _options(name):
        if p.hidden:
            assert isinstance(p, Deprecated), (name, p.opts)
            continue
        assert isinstance(p, Option), (name, p.opts)
        assert p.help and p.help.strip(), (name, p.opts)
        if not p.is_flag and not p.required and p.default is None and not p.multiple:
            assert "default" in p.help.lower(), (name, p.opts)


@pytest.mark.parametrize("name", COMMANDS)
def test_old_spellings_are_hidden_and_new_ones_shown(name):
    shown = {o for p in _options(name) if not p.hidden for o in p.opts}
    assert not shown & OLD, (name, shown & OLD)
    text = CliRunner().invoke(main, [name, "--help"]).output
    for old in OLD:
        assert f" {old} " not in text and f" {old}\n" not in text, (name, old)


@pytest.mark.parametrize("name", COMMANDS)
def test_list_flags_wherever_their_option_is_accepted(name):
    opts = {o for p in _options(name) for o in p.opts}
    for option, listing in (("--method", "--list-methods"), ("--target", "--list-targets"),
                            ("--target-option", "--list-targets"), ("--backend", "--list-backends")):
        if option in opts:
            assert listing in opts, (name, listing)
            result = CliRunner().invoke(main, [name, listing])
            assert result.exit_code == 0 and result.output.strip(), (name, listing)


def test_one_name_per_concept_across_commands():
    """The latent side, the sampling grid, bits and budgets are spelled the same wherever they appear."""
    spelled = {o for name in COMMANDS for p in _options(name) if not p.hidden for o in p.opts}
    assert {"--latent-side", "--max-latent-side", "--grid-steps", "--wbits", "--abits", "--wbits-budget",
            "--abits-budget"} <= spelled
    assert not {o for o in spelled if "side" in o} - {"--latent-side", "--max-latent-side"}
    assert not {o for o in spelled if "steps" in o} - {"--grid-steps"}


def test_help_groups_options_in_sections():
    text = CliRunner().invoke(main, ["build", "--help"]).output
    order = [text.index(f"\n{s}:\n") for s in ("Method", "Bits", "Calibration and sampling", "Target", "Output")]
    assert order == sorted(order)
