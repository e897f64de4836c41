"""Exit codes a CI system can act on (issue 13, item 5): 1 only for "validated and out of
tolerance", 2 for bad input, 3 for a bug in qconvert; --debug adds a traceback and keeps the code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from conftest import flat
from typer.testing import CliRunner

from qconvert.cli import _common, app
from qconvert.errors import InternalError

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})
REPO = Path(__file__).resolve().parents[2]


def _app_raising(exc: BaseException) -> typer.Typer:
    """A one-command app whose command raises `exc`, behind the real error boundary."""
    probe = typer.Typer(pretty_exceptions_enable=False)

    def boom() -> int:
        raise exc

    probe.command("boom")(_common.command(boom))

    @probe.callback()
    def _root() -> None:
        pass

    return probe


@pytest.mark.parametrize("exc", [RuntimeError("an invariant broke"), InternalError("stage went wrong")])
def test_an_unexpected_exception_is_exit_3_with_traceback_and_a_request_to_report(exc: Exception) -> None:
    result = runner.invoke(_app_raising(exc), ["boom"])

    assert result.exit_code == 3, result.output
    assert "Traceback" in result.output
    text = flat(result.output)
    assert "internal error" in text and "please report it" in text
    assert str(exc) in text


def test_debug_keeps_exit_2_for_bad_input_and_adds_the_traceback(tmp_path: Path) -> None:
    result = runner.invoke(app, ["--debug", "export", str(tmp_path / "missing.py") + ":build"])

    assert result.exit_code == 2, result.output
    assert "Traceback" in result.output
    assert "error (source)" in flat(result.output)
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


def test_without_debug_bad_input_is_exit_2_without_traceback(tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", str(tmp_path / "missing.py") + ":build"])

    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_debug_exit_code_in_a_real_process(tmp_path: Path) -> None:
    """The installed entry point, in its own interpreter: --debug does not turn 2 into 1."""
    proc = subprocess.run(
        [sys.executable, "-c", "from qconvert.cli import main; main()", "--debug", "export", "nope.py:build"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", "NO_COLOR": "1"},
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" in proc.stderr


def test_help_documents_the_exit_codes() -> None:
    result = runner.invoke(app, ["--help"])

    text = flat(result.output)
    assert result.exit_code == 0
    for needle in (
        "Exit codes",
        "1 validated and FAILED (outside tolerance) or INCONCLUSIVE",
        "2 bad input",
        "3 internal error",
    ):
        assert needle in text, text
