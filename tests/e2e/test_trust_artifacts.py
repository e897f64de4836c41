"""`qconvert validate` on someone else's artifact (issue 13, items 2 and 3): nothing the manifest
names is executed, and every file it records is verified before anything is measured."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from _trust_helpers import copy_artifact, make_artifact, qconvert


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("trust-art"))


@pytest.fixture
def art(artifact: Path, tmp_path: Path) -> Path:
    return copy_artifact(artifact, tmp_path / "art")


def _heldout(art: Path) -> str:
    return str(json.loads((art / "qconvert.json").read_text())["settings"]["data"])


def _evil_module(folder: Path, marker: Path) -> Path:
    """A data callable that writes `marker` when imported or called."""
    path = folder / "evil.py"
    path.write_text(
        f"open({str(marker)!r}, 'w').write('imported')\n"
        "def fn():\n"
        f"    open({str(marker)!r}, 'w').write('called')\n"
        "    return []\n"
    )
    return path


def _edit_manifest(art: Path, **settings: object) -> None:
    path = art / "qconvert.json"
    manifest = json.loads(path.read_text())
    manifest["settings"].update(settings)
    path.write_text(json.dumps(manifest, indent=2))


def test_validate_never_imports_a_calibration_callable_the_manifest_names(
    art: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "MARKER"
    evil = _evil_module(tmp_path, marker)
    _edit_manifest(art, calibration=f"{evil}:fn")

    code, text = qconvert("validate", str(art), "--data", _heldout(art), "--tolerance", "top1_agreement>=0.5")

    assert not marker.exists(), f"validate ran code the manifest names ({marker.read_text()})"
    assert code == 0, text
    assert "never runs code an artifact names" in caplog.text


def test_validate_never_imports_a_data_callable_the_manifest_names(art: Path, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    evil = _evil_module(tmp_path, marker)
    _edit_manifest(art, data=f"{evil}:fn")

    code, text = qconvert("validate", str(art))

    assert not marker.exists(), "validate ran code the manifest names"
    assert code == 2, text
    assert "--data" in text


def test_validate_refuses_a_provider_option_that_loads_a_library(art: Path, tmp_path: Path) -> None:
    path = art / "qconvert.json"
    manifest = json.loads(path.read_text())
    manifest["providers"][0]["options"] = {"custom_op_library": str(tmp_path / "evil.so")}
    path.write_text(json.dumps(manifest))

    code, text = qconvert("validate", str(art), "--data", _heldout(art), "--tolerance", "top1_agreement>=0.5")

    assert code == 2, text
    assert "never loads code an artifact names" in text


@pytest.mark.parametrize("name", ["model.onnx", "reference.onnx", "report.json"])
def test_validate_refuses_a_file_that_no_longer_matches_its_recorded_hash(art: Path, name: str) -> None:
    with (art / name).open("ab") as f:
        f.write(b"\0")

    code, text = qconvert("validate", str(art), "--data", _heldout(art), "--tolerance", "top1_agreement>=0.5")

    assert code == 2, text
    assert f"{art / name}" in text and "SHA-256" in text
    assert "PASSED" not in text


def test_validate_refuses_a_swapped_model(art: Path, tmp_path: Path) -> None:
    """model.onnx replaced by another valid model (the reference): still a hash mismatch."""
    (art / "model.onnx").write_bytes((art / "reference.onnx").read_bytes())

    code, text = qconvert("validate", str(art), "--data", _heldout(art), "--tolerance", "top1_agreement>=0.5")

    assert code == 2, text
    assert "model.onnx" in text and "does not match" in text


def test_validate_refuses_a_recorded_file_that_is_missing(art: Path) -> None:
    (art / "report.html").unlink()

    code, text = qconvert("validate", str(art), "--data", _heldout(art), "--tolerance", "top1_agreement>=0.5")

    assert code == 2, text
    assert "report.html" in text and "missing" in text


def test_validate_refuses_a_manifest_path_outside_the_folder(art: Path) -> None:
    path = art / "qconvert.json"
    manifest = json.loads(path.read_text())
    manifest["files"]["../outside.txt"] = "0" * 64
    path.write_text(json.dumps(manifest))

    code, text = qconvert("validate", str(art), "--data", _heldout(art), "--tolerance", "top1_agreement>=0.5")

    assert code == 2, text
    assert "../outside.txt" in text


def test_validate_prints_and_writes_the_manifests_own_hash(art: Path, tmp_path: Path) -> None:
    report = tmp_path / "validate.json"
    digest = hashlib.sha256((art / "qconvert.json").read_bytes()).hexdigest()

    code, text = qconvert(
        "validate",
        str(art),
        "--data",
        _heldout(art),
        "--tolerance",
        "top1_agreement>=0.5",
        "--json",
        str(report),
    )

    assert code == 0, text
    assert digest in text
    written = json.loads(report.read_text())
    assert written["manifest_sha256"] == digest
    assert written["verified_files"] >= 4


@pytest.mark.slow
def test_export_prints_the_manifests_own_hash(tmp_path: Path) -> None:
    from _trust_helpers import export_args

    out = tmp_path / "out"
    code, text = qconvert(*export_args(tmp_path, out))

    assert code == 0, text
    digest = hashlib.sha256((out / "qconvert.json").read_bytes()).hexdigest()
    assert f"qconvert.json sha256: {digest}" in text
