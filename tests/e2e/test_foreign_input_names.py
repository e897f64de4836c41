"""ONNX files from other tools (issue 15): TensorFlow-style input names (`image:0`) through `--input`,
and `--input` fixing the axes a foreign graph leaves open, so `--calibration random` can run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[2]


def qconvert(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", "NO_COLOR": "1"}
    cmd = [sys.executable, "-c", "from qconvert.cli import main; main()", *argv]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _tf_style_cnn(path: Path) -> Path:
    """A conv net the way tf2onnx names things: `image:0` in, `logits:0` out, H and W left open."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((6, 3, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["image:0", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("ReduceMean", ["r"], ["logits:0"], axes=[2, 3], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "tf_style",
        [helper.make_tensor_value_info("image:0", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits:0", TensorProto.FLOAT, ["N", 6])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_tf_style_name_and_open_axes_through_input(tmp_path: Path) -> None:
    src = _tf_style_cnn(tmp_path / "tf.onnx")
    proc = qconvert(
        "export",
        str(src),
        "--input",
        "image:0:1x3x12x12",
        "--calibration",
        "random",
        "-o",
        "out",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    quantized = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert [i.name for i in quantized.graph.input] == ["image:0"]
    assert [o.name for o in quantized.graph.output] == ["logits:0"]
    assert any(n.op_type == "QuantizeLinear" for n in quantized.graph.node)


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("image:0:1x4x12x12", "axis 1 is 4, but tf.onnx fixes it at 3"),
        ("image:0:1x12x12", "3 axes given, but input 'image:0' of tf.onnx has 4"),
        ("image:1:1x3x12x12", "not inputs of tf.onnx. Its inputs: image:0"),
    ],
)
def test_input_that_contradicts_the_graph_is_exit_2(tmp_path: Path, spec: str, complaint: str) -> None:
    src = _tf_style_cnn(tmp_path / "tf.onnx")
    proc = qconvert("export", src.name, "--input", spec, "--calibration", "random", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 2
    assert complaint in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
