"""The common slips, through the command line (issue 14): exit 2 with the diagnosis, before any
work; and --data inside the --calibration folder is called out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[2]


def qconvert(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", "NO_COLOR": "1"}
    cmd = [sys.executable, "-c", "from qconvert.cli import main; main()", *argv]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _mlp(path: Path) -> Path:
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((32, 5)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("MatMul", ["features", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("MatMul", ["hr", "w2"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 5])],
        [w1, w2],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_slips_are_exit_2_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "mymodel.py").write_text("def build():\n    pass\n\ndef example_inputs():\n    pass\n")
    proc = qconvert("export", "mymodel.py", "--calibration", "random", cwd=tmp_path)
    assert proc.returncode == 2
    assert "add `:factory`; callables here: build, example_inputs" in proc.stderr
    assert "pickle" not in proc.stderr and "Traceback" not in proc.stderr


def test_already_quantized_source_and_data_inside_calibration(tmp_path: Path) -> None:
    model = _mlp(tmp_path / "mlp.onnx")
    folder = tmp_path / "work"
    folder.mkdir()
    rng = np.random.default_rng(1)
    np.savez(folder / "calib.npz", features=rng.standard_normal((64, 16)).astype(np.float32))
    np.savez(folder / "heldout.npz", features=rng.standard_normal((32, 16)).astype(np.float32))
    proc = qconvert(
        "export", str(model), "--calibration", "work", "--data", "work/heldout.npz", "-o", "out", cwd=tmp_path
    )
    assert proc.returncode in (0, 1), proc.stderr
    flat = " ".join(proc.stderr.split())
    assert "--data work/heldout.npz lies inside the --calibration folder work" in flat
    # the export's own output is quantized: given back as SOURCE, it is refused up front
    proc = qconvert(
        "export", "out/model.onnx", "--calibration", "work/calib.npz", "-o", "again", cwd=tmp_path
    )
    assert proc.returncode == 2
    assert "is quantized already" in proc.stderr and "QuantizeLinear" in proc.stderr
    assert "SSA" not in proc.stderr and not (tmp_path / "again").exists()
