"""Output that survives an 80-column CI log (issue 14, item 2): help wraps instead of cutting with `…`,
keeps option names and Rich-looking text (`[hf]`) whole, shows no Python types as metavars, and the
tables fold instead of cutting."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def _regen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("golden_regen_80", GOLDEN / "regen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


regen = _regen()
HELP_FILES = sorted((GOLDEN / "help").glob("*.txt"))


def test_every_command_has_a_golden_help() -> None:
    assert {p.stem for p in HELP_FILES} == {c or "qconvert" for c in regen.COMMANDS}


@pytest.mark.parametrize("path", HELP_FILES, ids=lambda p: p.stem)
def test_golden_help_is_never_cut(path: Path) -> None:
    text = path.read_text()
    assert "…" not in text, path.name
    assert max(len(line) for line in text.splitlines()) <= 80, path.name
    # no Python types as metavars, no Rich escapes, no typer-style {required} arguments
    for leak in ("<bool>", "<list[", "<str>", "<int", "<path>", "\\[", "{"):
        assert leak not in text, (path.name, leak)
    # an option name is never broken across lines ("--max-" / "length")
    assert not re.search(r"--[a-z-]*-\n", text), path.name


def test_export_help_keeps_option_names_and_markup_like_text(tmp_path: Path) -> None:
    text = regen.help_text("export", tmp_path)
    assert "--calibration-method [minmax|entropy|percentile|mse]" in text
    assert 'pip install "qconvert[hf]"' in " ".join(text.split())
    assert "-o, --out PATH" in text and "--input TEXT" in text
    assert "Usage: qconvert export [OPTIONS] [SOURCE]" in text
    # every command's first sentence is whole in the root command list
    root = regen.help_text("", tmp_path)
    assert "..." not in root.split("Commands:")[1]


def test_targets_table_folds_at_80_columns(tmp_path: Path) -> None:
    proc = regen.qconvert("targets", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout
    assert max(len(line) for line in proc.stdout.splitlines()) <= 80
    flat = " ".join(proc.stdout.replace("│", " ").split())
    # the options column, the one --target-option needs, is readable whole
    assert "compute_units=ALL" in flat and "CPUAndNeuralEngine" in flat
    assert "profile_batch=" in flat
