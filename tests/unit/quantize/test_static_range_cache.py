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


def _scale_of(path: Path, tensor: str) -> float:
    """The scale of the QuantizeLinear that quantizes `tensor`."""
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    (q,) = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor]
    return float(inits[q.input[1]])


@pytest.mark.parametrize("symmetric", [False, True])
def test_ranges_of_the_model_are_reused_where_nodes_are_left_float(
    tmp_path: Path, counted: list[Path], symmetric: bool
) -> None:
    """Sensitivity's isolated quantizations exclude every node but one, the Relu included: with
    `ranges_of` the model's settings they reuse its calibration, and a tensor the model quantized
    at the Relu's range keeps that range."""
    cpu = TARGETS.get("cpu")
    qc = replace(cpu.bind().quantize_config(8, "static", "minmax"), reduce_range=False)
    qc = replace(qc, activation_symmetric=symmetric)
    data = Dataset("calib", {"x": np.random.default_rng(1).normal(size=(32, 8)).astype(np.float32)})
    src = _mlp(tmp_path / "mlp.onnx")
    model = static.quantize_static_int8(src, tmp_path / "model.onnx", qc, data)
    # as sensitivity isolates fc1 where the quantizer folded the Relu into it (asymmetric): the
    # Relu stays quantized, so the graph is the one a fresh calibration gives
    alone = replace(qc, nodes_to_exclude=("fc2",))
    reused = static.quantize_static_int8(src, tmp_path / "reused.onnx", alone, data, ranges_of=qc)
    assert len(counted) == 1
    static._RANGES.clear()
    fresh = static.quantize_static_int8(src, tmp_path / "fresh.onnx", alone, data)
    assert onnx.load(str(reused)).graph == onnx.load(str(fresh)).graph
    # fc1 alone with the Relu float too: without `ranges_of` h is measured afresh (negative values
    # too), with it h keeps the range the model gives it (the Relu's, where the Relu is its only reader)
    static._RANGES.clear()
    static.quantize_static_int8(src, tmp_path / "model2.onnx", qc, data)
    calls = len(counted)
    only_fc1 = replace(qc, nodes_to_exclude=("relu", "fc2"))
    reused = static.quantize_static_int8(src, tmp_path / "reused2.onnx", only_fc1, data, ranges_of=qc)
    assert len(counted) == calls
    fresh = static.quantize_static_int8(src, tmp_path / "fresh2.onnx", only_fc1, data)
    assert len(counted) == calls + 1
    in_model = "r" if not symmetric else "h"  # folded into fc1 (asymmetric) or kept as a node
    assert _scale_of(reused, "h") == pytest.approx(_scale_of(model, in_model))
    assert _scale_of(fresh, "h") > _scale_of(reused, "h")  # h's own range reaches further
