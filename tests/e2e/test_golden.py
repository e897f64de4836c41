"""The golden files under tests/golden/ (report/manifest/validate key sets, every --help at 80
columns) match what the code produces now. Regenerate with `PYTHONPATH=. python tests/golden/regen.py`
after a deliberate change, and say what changed in tests/golden/README.md."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def _regen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("golden_regen", GOLDEN / "regen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


regen = _regen()


@pytest.mark.parametrize("command", regen.COMMANDS)
def test_help_matches_golden(command: str, tmp_path: Path) -> None:
    name = f"help/{command or 'qconvert'}.txt"
    assert regen.help_text(command, tmp_path) == (GOLDEN / name).read_text(), name


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, list[str]]]]:
    work = tmp_path_factory.mktemp("golden")
    return work, {name: regen.export_keys(name, work) for name in regen.EXPORTS}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(regen.EXPORTS))
@pytest.mark.parametrize("kind", ["report", "manifest"])
def test_json_keys_match_golden(
    exports: tuple[Path, dict[str, dict[str, list[str]]]], name: str, kind: str
) -> None:
    _, keys = exports
    golden = (GOLDEN / f"{kind}_keys" / f"{name}.txt").read_text().split()
    got = keys[name][kind]
    assert got == golden, {"added": sorted(set(got) - set(golden)), "lost": sorted(set(golden) - set(got))}


@pytest.mark.slow
def test_validate_json_keys_match_golden(exports: tuple[Path, dict[str, dict[str, list[str]]]]) -> None:
    work, _ = exports
    golden = (GOLDEN / "validate_keys.txt").read_text().split()
    got = regen.validate_keys(work / "cpu-int8-static", work)
    assert got == golden, {"added": sorted(set(got) - set(golden)), "lost": sorted(set(golden) - set(got))}


def test_key_paths_mark_lists_and_data_keyed_dicts() -> None:
    paths = regen.key_paths({"a": [{"b": 1}], "outputs": {"logits": {"cosine": 1.0}}})
    assert paths == {"a", "a[].b", "outputs", "outputs.*", "outputs.*.cosine"}
