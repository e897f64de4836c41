"""Shared by the issue-13 tests: a real artifact folder from a real export, copied per test, and
the CLI run in-process or as a real process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import TINY_CNN, flat, write_model
from typer.testing import CliRunner

from qconvert.cli import app

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})


def qconvert(*args: str) -> tuple[int, str]:
    """`qconvert ARGS` in-process: (exit code, output flattened)."""
    result = runner.invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"qconvert raised {result.exception!r}\n{result.output}") from result.exception
    return result.exit_code, flat(result.output)


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", "NO_COLOR": "1"}


def qconvert_process(*args: str, cwd: Path, **kw: object) -> subprocess.Popen[str]:
    """`qconvert ARGS` as its own process (the installed entry point, this tree's package)."""
    return subprocess.Popen(
        [sys.executable, "-c", "from qconvert.cli import main; main()", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
        **kw,  # type: ignore[call-overload]
    )


def inputs(folder: Path) -> tuple[Path, Path, Path]:
    """model.py (TinyCNN, input 'image' [N, 3, 8, 8]), calibration and held-out .npz in `folder`."""
    model = write_model(folder / "src", TINY_CNN)
    rng = np.random.default_rng(0)
    calib, data = folder / "calib.npz", folder / "heldout.npz"
    np.savez(calib, image=rng.standard_normal((24, 3, 8, 8)).astype(np.float32))
    # 80 held-out samples: enough for a PASSED verdict at 95% (the always-on nonfinite check needs 72)
    np.savez(data, image=rng.standard_normal((80, 3, 8, 8)).astype(np.float32))
    return model, calib, data


def export_args(folder: Path, out: Path) -> list[str]:
    model, calib, data = inputs(folder)
    # format=qdq: one format, not the faster of two measured here (a timing choice); a loose tolerance,
    # since these tests are about files and exit codes, not accuracy
    return ["export", f"{model}:build", "--target", "cpu", "--calibration", str(calib), "--data", str(data),
            "--target-option", "format=qdq", "--tolerance", "top1_agreement>=0.5", "-o", str(out)]  # fmt: skip


def make_artifact(folder: Path) -> Path:
    """A real `qconvert export` OUT_DIR under `folder` (folder/art)."""
    out = folder / "art"
    code, text = qconvert(*export_args(folder, out))
    assert code == 0, text
    return out


def copy_artifact(cached: Path, dest: Path) -> Path:
    shutil.copytree(cached, dest)
    return dest
