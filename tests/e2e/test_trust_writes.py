"""No command writes onto any file of an input or an artifact folder it reads, --force or not
(issue 13, item 10)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _trust_helpers import copy_artifact, make_artifact, qconvert


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("trust-writes"))


@pytest.fixture
def art(artifact: Path, tmp_path: Path) -> Path:
    return copy_artifact(artifact, tmp_path / "art")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _heldout(art: Path) -> str:
    return str(json.loads((art / "qconvert.json").read_text())["settings"]["data"])


def test_benchmark_json_onto_the_artifacts_reference_is_refused(art: Path) -> None:
    before = _snapshot(art)

    code, text = qconvert(
        "benchmark",
        str(art / "model.onnx"),
        "--json",
        str(art / "reference.onnx"),
        "--force",
        "--repeats",
        "3",
    )

    assert code == 2, text
    assert f"--json {art / 'reference.onnx'}" in text and "never writes into what it reads" in text
    assert _snapshot(art) == before


def test_benchmark_json_as_a_new_file_inside_the_artifact_is_refused(art: Path) -> None:
    before = _snapshot(art)

    code, text = qconvert("benchmark", str(art), "--json", str(art / "bench.json"), "--repeats", "3")

    assert code == 2, text
    assert _snapshot(art) == before


def test_validate_reports_into_the_artifact_are_refused(art: Path) -> None:
    before = _snapshot(art)
    for flag, name in (("--json", "report.json"), ("--html", "report.html"), ("--junit", "qconvert.json")):
        code, text = qconvert("validate", str(art), "--data", _heldout(art), flag, str(art / name), "--force")
        assert code == 2, text
        assert f"{flag} {art / name}" in text
    assert _snapshot(art) == before


def test_run_outputs_into_the_artifact_are_refused(art: Path) -> None:
    before = _snapshot(art)

    code, text = qconvert("run", str(art), "--data", _heldout(art), "-o", str(art / "outputs.npz"), "--force")

    assert code == 2, text
    assert _snapshot(art) == before


def test_writing_beside_the_artifact_still_works(art: Path, tmp_path: Path) -> None:
    code, text = qconvert(
        "validate",
        str(art),
        "--data",
        _heldout(art),
        "--tolerance",
        "top1_agreement>=0.5",
        "--json",
        str(tmp_path / "v.json"),
    )

    assert code == 0, text
    assert (tmp_path / "v.json").is_file()
