"""Cross-layer equalization keeps the fp32 function, restores the quantized SQNR of a network with a
planted channel-scale imbalance, and leaves ReLU6 pairs (not scale-equivariant) alone."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from qconvert.calibrate import Dataset
from qconvert.recover import RECOVERY
from qconvert.recover.base import RecoveryInput, quantize_candidate
from qconvert.recover.equalize import Equalize, find_pairs
from qconvert.targets import TARGETS


def _qc():  # type: ignore[no-untyped-def]
    t = TARGETS.get("cpu")
    qc = t.bind().quantize_config(8, "static", "minmax")
    return replace(qc, format="qdq", reduce_range=False)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


def _sqnr(ref: np.ndarray, out: np.ndarray) -> float:
    ref, out = ref.astype(np.float64), out.astype(np.float64)
    return float(10 * np.log10((ref**2).sum() / ((ref - out) ** 2).sum()))


def _chain(imbalance: float, activation: str = "Relu") -> onnx.ModelProto:
    """conv 3x3 (8) -> act -> depthwise 3x3 -> act -> conv 1x1 (6) -> global pool -> gemm (4).
    Channel i of the first conv is scaled by k_i and the depthwise input by 1/k_i (log-spaced over
    `imbalance` decades): the same function, but one grid for very different channels."""
    rng = np.random.default_rng(0)
    k = np.logspace(-imbalance / 2, imbalance / 2, 8)
    w1 = rng.normal(size=(8, 3, 3, 3)) * k[:, None, None, None]
    b1 = rng.normal(size=8) * 0.1 * k
    dw = rng.normal(size=(8, 1, 3, 3)) / k[:, None, None, None]
    inits = {
        "w1": w1,
        "b1": b1,
        "dw": dw,
        "bdw": rng.normal(size=8) * 0.1,
        "w3": rng.normal(size=(6, 8, 1, 1)),
        "b3": rng.normal(size=6) * 0.1,
        "wg": rng.normal(size=(4, 6)),
        "bg": np.zeros(4),
    }
    act = (
        (lambda i, o: helper.make_node("Relu", [i], [o], name=f"act_{o}"))
        if activation == "Relu"
        else (lambda i, o: helper.make_node("Clip", [i, "zero", "six"], [o], name=f"act_{o}"))
    )
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        act("c1", "a1"),
        helper.make_node("Conv", ["a1", "dw", "bdw"], ["c2"], pads=[1, 1, 1, 1], group=8, name="dw"),
        act("c2", "a2"),
        helper.make_node("Conv", ["a2", "w3", "b3"], ["c3"], name="conv3"),
        helper.make_node("GlobalAveragePool", ["c3"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], transB=1, name="gemm"),
    ]
    tensors = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in inits.items()]
    tensors += [
        numpy_helper.from_array(np.array(0, np.float32), "zero"),
        numpy_helper.from_array(np.array(6, np.float32), "six"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        tensors,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _x(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, 10, 10)).astype(np.float32)


def test_function_preserved_and_planted_imbalance_removed(tmp_path: Path) -> None:
    fp32 = _chain(imbalance=4.0)
    inp = RecoveryInput(qc=_qc(), calibration=Dataset("c", {"x": _x(1, 32)}), work=tmp_path)
    result = RECOVERY.get("equalize")(fp32, None, inp)
    assert result.changed and result.details["equalized"] == 2  # conv1->dw and dw->conv3
    held = _x(2, 32)
    np.testing.assert_allclose(_run(result.model, held), _run(fp32, held), rtol=1e-5, atol=1e-5)

    before = _sqnr(_run(fp32, held), _run(quantize_candidate(fp32, inp), held))
    after = _sqnr(_run(fp32, held), _run(quantize_candidate(result.model, inp), held))
    balanced = _chain(imbalance=0.0)
    clean = _sqnr(_run(balanced, held), _run(quantize_candidate(balanced, inp), held))
    assert after > before + 10, (before, after)  # the planted imbalance costs > 10 dB; CLE wins it back
    assert after > clean - 3, (after, clean)


def test_relu6_pairs_are_left_alone(tmp_path: Path) -> None:
    fp32 = _chain(imbalance=4.0, activation="Clip")
    pairs, skipped = find_pairs(fp32)
    assert skipped == 2 and [(p.a, p.b) for p in pairs] == []
    inp = RecoveryInput(qc=_qc(), calibration=None, work=tmp_path)
    result = Equalize()(fp32, None, inp)
    assert not result.changed and "ReLU6" in result.notes[0]
    assert result.model.SerializeToString() == fp32.SerializeToString()


def test_bias_absorption_through_identity_keeps_the_function(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    inits = {
        "w1": rng.normal(size=(5, 3, 3, 3)),
        "b1": rng.normal(size=5) * 3 + 4,  # a large mean offset
        "w2": rng.normal(size=(4, 5, 1, 1)),
        "b2": rng.normal(size=4),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Conv", ["c1", "w2", "b2"], ["y"], name="conv2"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 10, 10])],
        [numpy_helper.from_array(v.astype(np.float32), n) for n, v in inits.items()],
    )
    fp32 = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    inp = RecoveryInput(qc=_qc(), calibration=Dataset("c", {"x": _x(1, 16)}), work=tmp_path)
    result = Equalize()(fp32, None, inp)
    assert result.details["absorbed_bias"] == 1
    held = _x(2, 16)
    np.testing.assert_allclose(_run(result.model, held), _run(fp32, held), rtol=1e-4, atol=1e-4)


def test_nothing_to_equalize(tmp_path: Path) -> None:
    w = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2, 4, 4])],
        [w],
    )
    fp32 = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = Equalize()(fp32, None, RecoveryInput(qc=_qc(), calibration=None, work=tmp_path))
    assert not result.changed and "no Conv/Gemm/MatMul pair" in result.notes[0]


def test_relu6_bound_mode_is_exact(tmp_path: Path) -> None:
    """relu6="bound" equalizes across Clip(0, 6) by rewriting it as Min(Relu(x), 6 / s) per channel."""
    fp32 = _chain(imbalance=4.0, activation="Clip")
    result = Equalize(relu6="bound")(fp32, None, RecoveryInput(qc=_qc(), calibration=None, work=tmp_path))
    assert result.changed and result.details["equalized"] == 2
    assert [n.op_type for n in result.model.graph.node].count("Min") == 2
    held = _x(2, 32) * 4  # large enough that the 6 bound is hit
    ref = _run(fp32, held)
    np.testing.assert_allclose(_run(result.model, held), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
