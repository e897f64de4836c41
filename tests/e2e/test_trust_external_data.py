"""An ONNX SOURCE's external data under any name is copied (after the traversal checks), and every
message about it names the user's file, never qconvert's internal copy (issue 13, item 11)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _models import IMAGE_SHAPE, INPUT_NAME, cnn_mlp_onnx_bytes
from _trust_helpers import qconvert
from conftest import leftovers


def _model_with_external_data(folder: Path, location: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model = onnx.load_from_string(cnn_mlp_onnx_bytes())
    path = folder / "model.onnx"
    onnx.save_model(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location,
        size_threshold=0,
    )  # fmt: skip
    assert (folder / location).is_file()
    return path


def _data(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    calib, held = tmp_path / "calib.npz", tmp_path / "held.npz"
    np.savez(calib, **{INPUT_NAME: rng.standard_normal((24, *IMAGE_SHAPE)).astype(np.float32)})
    # 128: a classifier shows top1_agreement>=0.97 at 95% from 125 held-out samples
    np.savez(held, **{INPUT_NAME: rng.standard_normal((128, *IMAGE_SHAPE)).astype(np.float32)})
    return calib, held


@pytest.mark.slow
@pytest.mark.parametrize("location", ["weights.bin", "params.dat"])
def test_external_data_under_any_name_is_used(
    tmp_path: Path, location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    source = _model_with_external_data(tmp_path / "src", location)
    calib, held = _data(tmp_path)
    out = tmp_path / "out"

    code, text = qconvert(
        "export",
        str(source),
        "--target",
        "cpu",
        "--calibration",
        str(calib),
        "--data",
        str(held),
        "-o",
        str(out),
    )

    assert code == 0, text
    x = np.load(held)[INPUT_NAME][:2]
    ref = ort.InferenceSession(str(out / "reference.onnx"), providers=["CPUExecutionProvider"])
    assert np.isfinite(ref.run(None, {INPUT_NAME: x})[0]).all()
    assert (source.parent / location).is_file()  # the user's files are untouched
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("location", ["weights.bin", "model.onnx.data"])
def test_truncated_external_data_names_the_users_file(
    tmp_path: Path, location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    source = _model_with_external_data(tmp_path / "src", location)
    data_file = source.parent / location
    data_file.write_bytes(data_file.read_bytes()[:100])
    calib, held = _data(tmp_path)

    code, text = qconvert(
        "export", str(source), "--target", "cpu", "--calibration", str(calib), "--data", str(held),
        "-o", str(tmp_path / "out"),
    )  # fmt: skip

    assert code == 2, text
    assert str(data_file) in text and "truncated" in text
    assert "_work" not in text and ".tmp-" not in text
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
