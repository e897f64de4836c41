"""The shape of the spine (issue 11), read from the source with ast: no stage imports another stage
(they share only stages/_shared.py, the protocol in base.py and the contexts in context.py), and each
pipeline file, the only place that knows an order, stays under 150 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "qconvert"
STAGES = PACKAGE / "stages"
SHARED = frozenset({"_shared", "base", "context"})
PIPELINE_LIMIT = 150


def _stage_modules_imported(path: Path) -> set[str]:
    """The qconvert.stages modules that `path` (a module in qconvert/stages/) imports, at any depth
    of the file (imports inside functions count): absolute, relative and `from qconvert.stages import X`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1:  # relative, from inside qconvert/stages/
                module = f"qconvert.stages.{module}" if module else "qconvert.stages"
            names = [module] if module != "qconvert.stages" else [f"{module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n.split(".")[2] for n in names if n.startswith("qconvert.stages.")}
    return found


def test_no_stage_imports_a_sibling_stage() -> None:
    siblings = {}
    for path in sorted(STAGES.glob("*.py")):
        own = path.stem
        imported = _stage_modules_imported(path) - SHARED - {own}
        if imported:
            siblings[path.name] = sorted(imported)
    assert not siblings, f"stages import other stages (share through _shared.py instead): {siblings}"


def test_the_shared_stage_modules_import_no_stage() -> None:
    for name in SHARED:
        imported = _stage_modules_imported(STAGES / f"{name}.py") - SHARED
        assert not imported, f"stages/{name}.py imports {sorted(imported)}"


def test_the_check_sees_every_import_form(tmp_path: Path) -> None:
    """The reader is not blind: each way of importing a sibling is found."""
    module = tmp_path / "probe.py"
    module.write_text(
        "import qconvert.stages.plan\n"
        "from qconvert.stages.load import LoadSource\n"
        "from qconvert.stages import quantize\n"
        "from .select import SelectNodes\n"
        "from . import write\n"
        "def f():\n    from qconvert.stages.blame import BlameLayers\n"
        "from qconvert.stages.base import Stage\n"
    )
    assert _stage_modules_imported(module) == {"plan", "load", "quantize", "select", "write", "blame", "base"}


def test_pipeline_files_stay_under_150_lines() -> None:
    long = {
        p.name: n
        for p in sorted((PACKAGE / "pipeline").glob("*.py"))
        if (n := len(p.read_text(encoding="utf-8").splitlines())) >= PIPELINE_LIMIT
    }
    assert not long, f"pipeline files of {PIPELINE_LIMIT} lines or more (move the work into a stage): {long}"
