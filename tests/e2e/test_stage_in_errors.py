"""A refused run names the pipeline stage it was refused in, and the stages before it, under --debug;
without it the message alone (the flag and the fix) is shown. Exit codes are the same either way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from _models import write_matmul_relu
from conftest import flat
from typer.testing import CliRunner

from qconvert.cli import app

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})


def test_debug_names_the_stage_and_the_stages_before_it(tmp_path: Path) -> None:
    weight = np.random.default_rng(0).standard_normal((4, 3))
    candidate = write_matmul_relu(tmp_path / "candidate.onnx", weight)
    reference = write_matmul_relu(tmp_path / "reference.onnx", weight)
    np.savez(tmp_path / "heldout.npz", x=np.ones((8, 4), np.float32))
    args = [
        "validate",
        str(candidate),
        "--reference",
        str(reference),
        "--data",
        str(tmp_path / "heldout.npz"),
    ]
    args += ["--tolerance", "task_drop<=0.01"]  # needs --metric: refused before any model runs

    plain = runner.invoke(app, args)
    debug = runner.invoke(app, [*args, "--debug"])

    assert plain.exit_code == debug.exit_code == 2
    assert "needs a task metric: pass --metric" in flat(plain.output) and "stage" not in plain.output
    assert "in the 'plan' stage (after: find, verify, open, tolerance)" in flat(debug.output)
