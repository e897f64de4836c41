"""Calibration runs once per (graph, data, settings): re-quantizing the same graph with other nodes
excluded (sensitivity, --auto) reuses the ranges, and gives the same graph as calibrating afresh."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qconvert.calibrate import Dataset
from qconvert.quantize import static
from qconvert.targets import TARGETS


def _mlp(path: Path, scale: float = 1.0) -> Path:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((scale * rng.normal(size=(8, 16))).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(size=(16, 4)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        inits,
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = static.calibrate_streaming

    def counting(src: Path, *args: object, **kwargs: object) -> object:
        calls.append(src)
        return real(src, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(static, "calibrate_streaming", counting)
    static._RANGES.clear()
    return calls


def test_ranges_are_calibrated_once_per_graph(tmp_path: Path, counted: list[Path]) -> None:
    cpu = TARGETS.get("cpu")
    qc = replace(cpu.bind().quantize_config(8, "static", "minmax"), reduce_range=False)
    data = Dataset("calib", {"x": np.random.default_rng(1).normal(size=(32, 8)).astype(np.float32)})
    src = _mlp(tmp_path / "mlp.onnx")
    first = static.quantize_static_int8(src, tmp_path / "a.onnx", qc, data)
    excluded = static.quantize_static_int8(
        src, tmp_path / "b.onnx", replace(qc, nodes_to_exclude=("fc2",)), data
    )
    assert len(counted) == 1  # the second quantization reused the ranges
    assert {n.name for n in onnx.load(str(excluded)).graph.node if n.op_type == "MatMul"} == {"fc1", "fc2"}
    static._RANGES.clear()
    afresh = static.quantize_static_int8(src, tmp_path / "c.onnx", qc, data)
    assert len(counted) == 2
    assert onnx.load(str(afresh)).graph == onnx.load(str(first)).graph

    # another graph (other weights, so other activation ranges) is calibrated again
    other = _mlp(tmp_path / "other.onnx", scale=3.0)
    static.quantize_static_int8(other, tmp_path / "d.onnx", qc, data)
    assert len(counted) == 3
    # and so is the same graph with other data
    static.quantize_static_int8(src, tmp_path / "e.onnx", qc, data.subset(slice(0, 16)))
    assert len(counted) == 4
