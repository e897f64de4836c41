"""The output folder: built aside, moved into place on commit, and nothing lost on failure."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from _models import CONV_CHANNELS, HIDDEN, IMAGE_SHAPE, INPUT_NAME, cnn_mlp_onnx_bytes, images, torch_logits

from qconvert import artifacts
from qconvert.artifacts import ArtifactDir, onnx_files, onnx_size, save_onnx
from qconvert.errors import ConfigError


class Boom(Exception):
    pass


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _old_out_dir(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_text("old model")
    (out / "notes.txt").write_text("keep me")
    (out / "qconvert.json").write_text("{}")  # a qconvert artifact folder: --force may replace it
    return out


def _assert_old_contents(out: Path) -> None:
    assert _listing(out) == ["model.onnx", "notes.txt", "qconvert.json"]
    assert (out / "model.onnx").read_text() == "old model"
    assert (out / "notes.txt").read_text() == "keep me"


# --- the happy path -------------------------------------------------------------------------------


def test_files_appear_only_after_commit(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with ArtifactDir(out) as art:
        art.write_text("a.txt", "hello")
        art.write_json("b.json", {"x": 1})
        assert not out.exists()
        assert art.root is not None and art.root.parent == tmp_path
        art.commit()
        assert out.is_dir()
    assert _listing(out) == ["a.txt", "b.json"]
    assert (out / "a.txt").read_text() == "hello"
    assert _listing(tmp_path) == ["out"]  # the temporary folder is gone


def test_scratch_folder_is_dropped_and_not_hashed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with ArtifactDir(out) as art:
        (art.work / "scratch.onnx").write_text("intermediate")
        art.write_text("model.onnx", "final")
        assert list(art.hashes()) == ["model.onnx"]
        art.commit()
    assert _listing(out) == ["model.onnx"]


def test_leaving_without_commit_leaves_nothing(tmp_path: Path) -> None:
    with ArtifactDir(tmp_path / "out") as art:
        art.write_text("a.txt", "never shipped")
    assert _listing(tmp_path) == []


def test_hashes_are_sha256_of_the_files(tmp_path: Path) -> None:
    with ArtifactDir(tmp_path / "out") as art:
        art.write_text("a.txt", "alpha")
        art.path("sub").mkdir()
        art.path("sub/b.bin").write_bytes(bytes(range(256)) * 10)
        hashes = art.hashes()
        art.commit()
    assert hashes == {
        "a.txt": hashlib.sha256(b"alpha").hexdigest(),
        str(Path("sub", "b.bin")): hashlib.sha256(bytes(range(256)) * 10).hexdigest(),
    }
    # and they still describe the committed files
    out = tmp_path / "out"
    assert hashes == {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in hashes}


# --- failures leave nothing behind ----------------------------------------------------------------


def test_exception_leaves_no_out_dir_and_no_temp_folder(tmp_path: Path) -> None:
    with pytest.raises(Boom), ArtifactDir(tmp_path / "out") as art:
        art.write_text("model.onnx", "half written")
        raise Boom
    assert _listing(tmp_path) == []


def test_exception_removes_the_parent_folders_it_created(tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper" / "out"
    with pytest.raises(Boom), ArtifactDir(out) as art:
        assert (tmp_path / "new" / "deeper").is_dir()
        art.write_text("a.txt", "x")
        raise Boom
    assert _listing(tmp_path) == []


def test_exception_keeps_parent_folders_that_already_existed(tmp_path: Path) -> None:
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "other.txt").write_text("someone else's")
    with pytest.raises(Boom), ArtifactDir(tmp_path / "existing" / "out"):
        raise Boom
    assert _listing(tmp_path / "existing") == ["other.txt"]


def test_commit_keeps_created_parent_folders(tmp_path: Path) -> None:
    out = tmp_path / "new" / "out"
    with ArtifactDir(out) as art:
        art.write_text("a.txt", "x")
        art.commit()
    assert (out / "a.txt").read_text() == "x"


# --- an existing OUT_DIR --------------------------------------------------------------------------


def test_existing_out_dir_is_refused_without_force(tmp_path: Path) -> None:
    out = _old_out_dir(tmp_path)
    with pytest.raises(ConfigError, match="--force"):
        ArtifactDir(out)
    _assert_old_contents(out)
    assert _listing(tmp_path) == ["out"]


def test_force_replaces_the_old_contents_only_at_commit(tmp_path: Path) -> None:
    out = _old_out_dir(tmp_path)
    with ArtifactDir(out, force=True) as art:
        art.write_text("model.onnx", "new model")
        _assert_old_contents(out)  # still the old folder while the new one is being built
        art.commit()
    assert _listing(out) == ["model.onnx"]
    assert (out / "model.onnx").read_text() == "new model"
    assert _listing(tmp_path) == ["out"]  # no backup or temporary folder left


def test_force_with_a_failure_keeps_the_old_out_dir(tmp_path: Path) -> None:
    out = _old_out_dir(tmp_path)
    with pytest.raises(Boom), ArtifactDir(out, force=True) as art:
        art.write_text("model.onnx", "new model")
        raise Boom
    _assert_old_contents(out)
    assert _listing(tmp_path) == ["out"]


def test_failed_move_into_place_restores_the_old_out_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the final rename fails (a full disk, a race), the old OUT_DIR is put back and no
    temporary or backup folder is left beside it."""
    out = _old_out_dir(tmp_path)
    real_replace = os.replace

    def failing_replace(src: os.PathLike[str] | str, dst: os.PathLike[str] | str) -> None:
        if Path(src).name.startswith(".out.tmp-"):
            raise OSError("injected: cannot move the new folder into place")
        real_replace(src, dst)

    with ArtifactDir(out, force=True) as art:
        art.write_text("model.onnx", "new model")
        monkeypatch.setattr(os, "replace", failing_replace)
        with pytest.raises(OSError, match="injected"):
            art.commit()
        monkeypatch.undo()
    _assert_old_contents(out)
    assert _listing(tmp_path) == ["out"]


def test_out_dir_that_is_a_file_is_refused_even_with_force(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_text("a file")
    with pytest.raises(ConfigError, match="is a file"):
        ArtifactDir(out, force=True)
    assert out.read_text() == "a file"


@pytest.mark.parametrize("relative", ["calibration.npz", "sub/model.py", "."])
def test_input_inside_out_dir_is_refused(tmp_path: Path, relative: str) -> None:
    out = _old_out_dir(tmp_path)
    given = out / relative
    with pytest.raises(ConfigError, match="inside the output folder"):
        ArtifactDir(out, force=True, inputs=[given])
    _assert_old_contents(out)


def test_input_beside_out_dir_is_fine(tmp_path: Path) -> None:
    data = tmp_path / "out-data.npz"  # a sibling whose name merely starts like OUT_DIR
    data.write_bytes(b"data")
    with ArtifactDir(tmp_path / "out", inputs=[data]) as art:
        art.commit()
    assert data.read_bytes() == b"data"


def test_using_paths_outside_the_with_block_is_an_error(tmp_path: Path) -> None:
    art = ArtifactDir(tmp_path / "out")
    with pytest.raises(RuntimeError, match="outside its `with` block"):
        art.path("model.onnx")


# --- ONNX files -----------------------------------------------------------------------------------


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT_NAME: x})[0]


def test_save_onnx_round_trip(tmp_path: Path) -> None:
    model = onnx.load_from_string(cnn_mlp_onnx_bytes())
    path = save_onnx(model, tmp_path / "model.onnx")
    assert onnx_files(path) == [path]
    assert onnx_size(path) == path.stat().st_size
    loaded = onnx.load(str(path))
    assert loaded == model
    onnx.checker.check_model(loaded)
    x = images(3)
    np.testing.assert_allclose(_run(path, x), torch_logits(x), atol=1e-5)


def test_large_model_goes_to_external_data_and_copies_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over the threshold (lowered here for a small model), weights go to `<name>.data`, and
    copy_onnx brings that file along under the new name."""
    monkeypatch.setattr(artifacts, "EXTERNAL_DATA_THRESHOLD", 1000)
    src = save_onnx(onnx.load_from_string(cnn_mlp_onnx_bytes()), tmp_path / "fp32.onnx")
    assert onnx_files(src) == [src, tmp_path / "fp32.onnx.data"]
    assert onnx_size(src) == src.stat().st_size + (tmp_path / "fp32.onnx.data").stat().st_size
    fc_weight_bytes = HIDDEN * CONV_CHANNELS * IMAGE_SHAPE[1] * IMAGE_SHAPE[2] * 4  # float32
    assert (tmp_path / "fp32.onnx.data").stat().st_size >= fc_weight_bytes  # the weights left the .onnx

    out = tmp_path / "out"
    with ArtifactDir(out) as art:
        art.copy_onnx(src, "reference.onnx")
        art.commit()
    assert _listing(out) == ["reference.onnx", "reference.onnx.data"]
    (tmp_path / "fp32.onnx.data").unlink()  # the copy must not point at the source's data
    x = images(3)
    np.testing.assert_allclose(_run(out / "reference.onnx", x), torch_logits(x), atol=1e-5)
