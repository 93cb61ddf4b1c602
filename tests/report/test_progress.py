"""Progress bars appear on a terminal only, unless QDIT4SR_PROGRESS forces them on or off."""

import io

from qdit4sr_export.report.progress import progress_bar


def _shown(monkeypatch, value, enabled=True, tty=False):
    stream = io.StringIO()
    stream.isatty = lambda: tty
    if value is None:
        monkeypatch.delenv("QDIT4SR_PROGRESS", raising=False)
    else:
        monkeypatch.setenv("QDIT4SR_PROGRESS", value)
    list(progress_bar(range(3), enabled=enabled, file=stream, desc="work"))
    return "work" in stream.getvalue()


def test_bars_follow_the_terminal_and_the_environment(monkeypatch):
    assert not _shown(monkeypatch, None)
    assert _shown(monkeypatch, None, tty=True)
    assert _shown(monkeypatch, "1") and not _shown(monkeypatch, "0", tty=True)
    assert not _shown(monkeypatch, "1", enabled=False)  # --json: never
