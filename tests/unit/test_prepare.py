"""qconvert.prepare.upgraded_opset: an old-opset ONNX SOURCE is converted up before Q/DQ is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.helper as h
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from qconvert.errors import PrepareError
from qconvert.prepare import MIN_QDQ_OPSET, ai_onnx_opset, prepared_from_onnx, upgraded_opset


def _old_graph(path: Path, opset: int, spatial: int | None = None) -> None:
    """Conv -> (BatchNormalization) -> ReduceMean(axes attribute) -> Squeeze(axes attribute): ops whose
    signatures changed between opset 11 and 13/18."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "conv/w")]
    nodes = [h.make_node("Conv", ["in:0", "conv/w"], ["c"], pads=[1, 1, 1, 1], name="conv")]
    last = "c"
    if spatial is not None:
        for name, value in (("g", 1.0), ("b", 0.0), ("m", 0.0), ("v", 1.0)):
            inits.append(numpy_helper.from_array(np.full((4, 8, 8), value, np.float32), name))
        nodes.append(
            h.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["bn"], spatial=spatial, name="bn/x")
        )
        last = "bn"
    nodes += [
        h.make_node("ReduceMean", [last], ["r"], axes=[2, 3], keepdims=1, name="mean"),
        h.make_node("Squeeze", ["r"], ["out/y"], axes=[2, 3], name="squeeze"),
    ]
    graph = h.make_graph(
        nodes,
        "old",
        [h.make_tensor_value_info("in:0", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [h.make_tensor_value_info("out/y", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.save(model, str(path))


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"in:0": x})[0]


def test_opset_11_is_converted_with_names_and_outputs_kept(tmp_path: Path) -> None:
    _old_graph(tmp_path / "old.onnx", 11)
    upgraded = upgraded_opset(tmp_path / "old.onnx", tmp_path / "new.onnx", MIN_QDQ_OPSET)
    model = onnx.load(str(upgraded))
    assert ai_onnx_opset(model) == MIN_QDQ_OPSET
    assert [i.name for i in model.graph.input] == ["in:0"]
    assert [o.name for o in model.graph.output] == ["out/y"]
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(upgraded, x), _run(tmp_path / "old.onnx", x), rtol=1e-5, atol=1e-5)


def test_new_enough_opset_is_left_alone(tmp_path: Path) -> None:
    _old_graph(tmp_path / "old.onnx", 11)
    up = upgraded_opset(tmp_path / "old.onnx", tmp_path / "new.onnx", MIN_QDQ_OPSET)
    assert upgraded_opset(up, tmp_path / "again.onnx", MIN_QDQ_OPSET) == up
    assert not (tmp_path / "again.onnx").exists()


def test_prepared_graph_of_an_old_file_is_at_the_qdq_opset(tmp_path: Path) -> None:
    _old_graph(tmp_path / "old.onnx", 11)
    prepared = prepared_from_onnx(tmp_path / "old.onnx", tmp_path / "prepared.onnx")
    assert ai_onnx_opset(onnx.load(str(prepared))) >= MIN_QDQ_OPSET


def test_unconvertible_graph_names_the_node(tmp_path: Path) -> None:
    _old_graph(tmp_path / "old.onnx", 8, spatial=0)
    with pytest.raises(PrepareError) as caught:
        upgraded_opset(tmp_path / "old.onnx", tmp_path / "new.onnx", MIN_QDQ_OPSET)
    text = str(caught.value)
    assert "opset 8" in text and "BatchNormalization node 'bn/x'" in text and "--opset" in text
