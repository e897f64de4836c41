"""Crashes that must be exit 2 with a message naming the flag or file and the fix, found before any
heavy work (issue 13, item 6)."""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from _trust_helpers import copy_artifact, inputs, make_artifact, qconvert
from conftest import TINY_MLP, leftovers, write_model
from numpy.lib import format as npformat

EMBEDDING = """
import torch
from torch import nn


class Bag(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, ids):
        return self.head(self.emb(ids).mean(1))


def build():
    torch.manual_seed(5)
    return Bag()


def example_inputs():
    return (torch.zeros(2, 6, dtype=torch.long),)
"""


def _assert_exit_2(code: int, text: str, *needles: str) -> None:
    assert code == 2, text
    assert "Traceback" not in text
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text}"


def test_an_absurd_input_shape_is_refused_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    mlp = write_model(tmp_path / "mlp", TINY_MLP, "mlp.py")
    started = time.perf_counter()

    code, text = qconvert("export", f"{mlp}:build", "--input", "x:100000000000x16", "-o", str(tmp_path / "o"))

    _assert_exit_2(code, text, "--input 'x:100000000000x16'", "TiB", "e.g. NAME:1x3x224x224")
    assert time.perf_counter() - started < 30
    assert not (tmp_path / "o").exists() and leftovers(tmp_path) == []


def _npz_declaring(path: Path, shape: tuple[int, ...]) -> Path:
    """An .npz whose one member's header declares `shape` (float32) but holds 64 bytes."""
    member = io.BytesIO()
    npformat.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False, "shape": shape})
    member.write(b"\0" * 64)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("image.npy", member.getvalue())
    return path


def test_an_npz_header_declaring_terabytes_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    model, _, data = inputs(tmp_path)
    bad = _npz_declaring(tmp_path / "huge.npz", (10**12, 3, 8, 8))

    code, text = qconvert(
        "export", f"{model}:build", "--calibration", str(bad), "--data", str(data), "-o", str(tmp_path / "o")
    )

    _assert_exit_2(code, text, f"--calibration {bad}", "declares shape", "truncated or malformed")
    assert not (tmp_path / "o").exists() and leftovers(tmp_path) == []


@pytest.mark.slow
def test_token_ids_outside_the_vocabulary_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    model = write_model(tmp_path / "bag", EMBEDDING)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", ids=rng.integers(0, 16, (24, 6)))
    np.savez(tmp_path / "held.npz", ids=rng.integers(0, 40, (12, 6)))

    code, text = qconvert(
        "export", f"{model}:build", "--target", "cpu", "--calibration", str(tmp_path / "calib.npz"),
        "--data", str(tmp_path / "held.npz"), "-o", str(tmp_path / "o"),
    )  # fmt: skip

    _assert_exit_2(code, text, "--data", "outside the model's vocabulary of 16", "valid ids 0..15")
    assert not (tmp_path / "o").exists() and leftovers(tmp_path) == []


def test_an_output_folder_in_a_folder_nobody_can_write_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/sys refuses new folders even to root, as a read-only mount would."""
    monkeypatch.chdir(tmp_path)
    model, calib, data = inputs(tmp_path)

    code, text = qconvert(
        "export",
        f"{model}:build",
        "--calibration",
        str(calib),
        "--data",
        str(data),
        "-o",
        "/sys/qconvert/out",
    )

    _assert_exit_2(code, text, "-o /sys/qconvert/out", "cannot write in /sys", "Choose an -o")


def test_an_output_folder_under_a_regular_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    model, calib, data = inputs(tmp_path)
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file")

    code, text = qconvert(
        "export",
        f"{model}:build",
        "--calibration",
        str(calib),
        "--data",
        str(data),
        "-o",
        str(blocker / "out"),
    )

    _assert_exit_2(code, text, f"{blocker} is a file, not a folder")
    assert blocker.read_text() == "a file"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("trust-bad-art"))


@pytest.mark.parametrize("content", ["{}", "[]", json.dumps({"qconvert": "0.1"})])
def test_run_on_a_folder_whose_manifest_is_not_one(artifact: Path, tmp_path: Path, content: str) -> None:
    art = copy_artifact(artifact, tmp_path / "art")
    (art / "qconvert.json").write_text(content)
    data = json.loads((artifact / "qconvert.json").read_text())["settings"]["data"]

    code, text = qconvert("run", str(art), "--data", data, "-o", str(tmp_path / "outs.npz"))

    _assert_exit_2(code, text, f"{art / 'qconvert.json'}: not a qconvert manifest")
    assert not (tmp_path / "outs.npz").exists()
