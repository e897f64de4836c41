"""Artifacts are byte-reproducible (issue 13, item 4): the same inputs, seed and versions give the same
model.onnx and reference.onnx bytes, so the SHA-256 qconvert.json records is stable across runs."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _trust_helpers import env, export_args


@pytest.mark.slow
def test_two_identical_exports_in_two_processes_give_identical_bytes(tmp_path: Path) -> None:
    args = export_args(tmp_path, tmp_path / "out")
    digests = []
    for seed in ("1", "2"):  # str hashes differ between these two interpreters, as between any two runs
        out = tmp_path / "out"
        proc = subprocess.run(
            [sys.executable, "-c", "from qconvert.cli import main; main()", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            env={**env(), "PYTHONHASHSEED": seed},
        )
        assert proc.returncode == 0, proc.stderr
        files = {
            n: hashlib.sha256((out / n).read_bytes()).hexdigest() for n in ("model.onnx", "reference.onnx")
        }
        recorded = json.loads((out / "qconvert.json").read_text())["files"]
        assert {n: recorded[n] for n in files} == files
        digests.append(files)
        shutil.rmtree(out)

    assert digests[0] == digests[1]
