"""The common slips are diagnosed up front (issue 14): `model.py` without `:factory`, an
already-quantized .onnx as SOURCE, a DATA folder holding a file that is not samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qconvert.calibrate.readers import ModelInput, load_dataset
from qconvert.errors import CalibrationError, SourceError
from qconvert.sources import load_source, quantized_ops


def _fp32_graph() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _qdq_graph() -> onnx.ModelProto:
    inits = [
        numpy_helper.from_array(np.array(0.1, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.uint8), "z"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_python_file_without_factory_lists_its_callables(tmp_path: Path) -> None:
    source = tmp_path / "mymodel.py"
    source.write_text(
        "import torch\nclass TinyMLP(torch.nn.Module):\n    pass\n"
        "def build():\n    return TinyMLP()\ndef example_inputs():\n    return ()\ndef _private():\n    pass\n"
        "raise SystemExit('never run')\n"  # the file is read, not imported
    )
    with pytest.raises(SourceError) as e:
        load_source(str(source))
    text = str(e.value)
    assert "add `:factory`" in text and "callables here: TinyMLP, build, example_inputs" in text
    assert f"{source}:build" in text and "_private" not in text and "pickle" not in text


def test_already_quantized_onnx_is_refused_up_front(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(_qdq_graph(), str(path))
    with pytest.raises(SourceError) as e:
        load_source(str(path))
    text = str(e.value)
    assert "quantized already" in text and "1 QuantizeLinear" in text and "reference.onnx" in text
    assert quantized_ops(_fp32_graph()) == {}


def test_fp32_onnx_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "fp32.onnx"
    onnx.save(_fp32_graph(), str(path))
    loaded = load_source(str(path))
    assert loaded.input_names == ("x",) and loaded.output_names == ("y",)


def test_data_folder_names_the_file_that_disagrees(tmp_path: Path) -> None:
    folder = tmp_path / "work"
    folder.mkdir()
    np.savez(folder / "calib.npz", features=np.zeros((8, 32), np.float32))
    np.savez(folder / "preds.npz", scores=np.zeros((8, 5), np.float32))
    inputs = [ModelInput("features", (None, 32), "float32")]
    with pytest.raises(CalibrationError) as e:
        load_dataset(folder, inputs, flag="--calibration")
    text = str(e.value)
    assert "preds.npz" in text and "calib.npz" in text and "move" in text
    assert "concatenation axis" not in text  # not numpy's own message
