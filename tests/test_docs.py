"""The documentation site: `mkdocs build --strict` succeeds (a broken link, a missing page or a docstring the API page
cannot render fails it), every page is in the navigation, and the generated CLI reference names every command."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("mkdocs", reason="mkdocs is not installed (the dev and docs extras have it)")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    problems = [line for line in proc.stderr.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert proc.returncode == 0, "\n".join(problems) or proc.stderr[-3000:]
    return out


def nav_pages(nav) -> set[str]:
    """Every page file the mkdocs.yml navigation names."""
    if isinstance(nav, str):
        return {nav} if nav.endswith(".md") else set()
    if isinstance(nav, dict):
        return set().union(*(nav_pages(v) for v in nav.values()))
    return set().union(*(nav_pages(item) for item in nav))


def test_strict_build_succeeds(site):
    assert (site / "index.html").is_file() and (site / "cli" / "index.html").is_file()


def test_every_page_is_in_the_navigation():
    from mkdocs.config import load_config
    from mkdocs.structure.files import get_files

    config = load_config(str(ROOT / "mkdocs.yml"))
    built = {f.src_uri for f in get_files(config).documentation_pages()}  # exclude_docs applied
    listed = nav_pages(config["nav"])
    assert not built - listed, f"pages missing from the nav in mkdocs.yml: {sorted(built - listed)}"
    assert built, "no pages found"


def test_the_cli_reference_names_every_command(site):
    import click

    from qdit4sr_export.cli import main

    html = (site / "cli" / "index.html").read_text()
    headings = set(re.findall(r'<h\d id="qdit4sr-export-([a-z-]+)"', html))
    assert set(main.commands) <= headings, f"commands without a section: {sorted(set(main.commands) - headings)}"
    for name, command in main.commands.items():  # and the options --help shows, old spellings (hidden) aside
        for option in (p for p in command.params if isinstance(p, click.Option) and not p.hidden):
            assert max(option.opts, key=len) in html, f"{name}: {option.opts} missing from the CLI reference"
