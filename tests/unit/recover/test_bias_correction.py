"""Bias correction removes the mean output shift that weight rounding causes, on real onnxruntime
quantize_static outputs, and changes nothing where rounding shifts nothing."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qconvert.calibrate import Dataset
from qconvert.errors import CalibrationError
from qconvert.recover import RECOVERY
from qconvert.recover.base import RecoveryInput, quantize_candidate
from qconvert.recover.bias_correction import BiasCorrection, with_biases
from qconvert.targets import TARGETS


def _qc(target: str = "cpu", **changes: object):  # type: ignore[no-untyped-def]
    t = TARGETS.get(target)
    qc = t.bind().quantize_config(8, "static", "minmax")
    return replace(qc, **({"format": "qdq", "reduce_range": False} | changes) if target == "cpu" else changes)  # type: ignore[arg-type]


def _model(
    nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], x_shape: list[object], y_shape: list[object]
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _biased_conv() -> onnx.ModelProto:
    """Every weight but each channel's maximum sits 0.4 of a step above a grid point: rounding
    moves them all down, so the output mean drops wherever the input mean is positive."""
    rng = np.random.default_rng(0)
    k = rng.integers(-100, 100, size=(6, 4, 3, 3)).astype(np.float64)
    w = (k + 0.4) / 127
    w[:, 0, 0, 0] = 1.0  # channel max 1 -> scale 1/127
    return _model(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], name="conv")],
        {"w": w.astype(np.float32)},
        ["n", 4, 8, 8],
        ["n", 6, 8, 8],
    )


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


def _data(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.2, 1.8, size=(n, 4, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("target", ["cpu", "tensorrt"])
def test_rounding_mean_shift_is_removed(target: str, tmp_path: Path) -> None:
    fp32 = _biased_conv()
    qc = _qc(target)
    inp = RecoveryInput(qc=qc, calibration=Dataset("calib", {"x": _data(1, 32)}), work=tmp_path)
    held = _data(2, 32)
    reference = _run(fp32, held).mean(axis=(0, 2, 3))
    before = _run(quantize_candidate(fp32, inp), held).mean(axis=(0, 2, 3)) - reference

    result = RECOVERY.get("bias_correction")(fp32, None, inp)
    after = _run(quantize_candidate(result.model, inp), held).mean(axis=(0, 2, 3)) - reference

    assert result.changed and result.details["layers"] == 1
    assert np.abs(before).mean() > 0.05  # the planted shift is real
    assert np.abs(after).mean() < 0.1 * np.abs(before).mean()
    # a bias was added (the conv had none) and it is what moved
    conv = result.model.graph.node[0]
    assert len(conv.input) == 3 and conv.input[2]


def test_weights_on_the_grid_change_nothing(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    w = rng.integers(-127, 128, size=(6, 4, 3, 3)).astype(np.float32) / 128
    w[:, 0, 0, 0] = 127 / 128  # per-channel scale exactly 1/128: every weight is on the grid
    fp32 = _model(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1], name="conv")],
        {"w": w, "b": np.linspace(-1, 1, 6).astype(np.float32)},
        ["n", 4, 8, 8],
        ["n", 6, 8, 8],
    )
    inp = RecoveryInput(qc=_qc(), calibration=Dataset("calib", {"x": _data(1, 16)}), work=tmp_path)
    result = BiasCorrection()(fp32, None, inp)
    assert not result.changed and "nothing changed" in result.notes[0]
    assert result.model.SerializeToString() == fp32.SerializeToString()


def test_a_graph_without_layers_is_left_alone(tmp_path: Path) -> None:
    fp32 = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], {}, ["n", 4], ["n", 4])
    inp = RecoveryInput(qc=_qc(), calibration=Dataset("c", {"x": np.ones((4, 4), np.float32)}), work=tmp_path)
    result = BiasCorrection()(fp32, None, inp)
    assert not result.changed and "nothing to correct" in result.notes[0]


def test_needs_calibration(tmp_path: Path) -> None:
    inp = RecoveryInput(qc=_qc(), calibration=None, work=tmp_path)
    with pytest.raises(CalibrationError, match="--calibration"):
        BiasCorrection()(_biased_conv(), None, inp)


def test_added_biases_preserve_the_function() -> None:
    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("Gemm", ["x", "g"], ["h"], transB=1, name="gemm"),  # no bias input
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "m"], ["y"], name="matmul"),  # no Add after it
    ]
    inits = {"g": rng.normal(size=(7, 5)).astype(np.float32), "m": rng.normal(size=(7, 3)).astype(np.float32)}
    fp32 = _model(nodes, inits, ["n", 5], ["n", 3])
    model, layers = with_biases(fp32)
    onnx.checker.check_model(model)
    assert [la.op_type for la in layers] == ["Gemm", "MatMul"]
    x = rng.normal(size=(9, 5)).astype(np.float32)
    np.testing.assert_allclose(_run(model, x), _run(fp32, x), rtol=1e-6, atol=1e-6)


def test_matmul_bias_correction_lands_in_the_inserted_add(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    k = rng.integers(-100, 100, size=(16, 8)).astype(np.float64)
    w = ((k + 0.4) / 127).astype(np.float32)
    w[0, :] = 1.0
    fp32 = _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], {"w": w}, ["n", 16], ["n", 8])
    data = np.random.default_rng(7).uniform(0.2, 1.8, size=(64, 16)).astype(np.float32)
    inp = RecoveryInput(qc=_qc(), calibration=Dataset("c", {"x": data}), work=tmp_path)
    reference = _run(fp32, data).mean(0)
    before = np.abs(_run(quantize_candidate(fp32, inp), data).mean(0) - reference).mean()
    result = BiasCorrection()(fp32, None, inp)
    after = np.abs(_run(quantize_candidate(result.model, inp), data).mean(0) - reference).mean()
    assert [n.op_type for n in result.model.graph.node] == ["MatMul", "Add"]
    assert after < 0.3 * before  # what is left: rounding of the quantized output itself
