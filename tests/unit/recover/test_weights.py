"""fake_quantize equals, bit for bit, the DequantizeLinear output of a real quantize_static run.

Each model is quantized by qconvert's static quantizer (onnxruntime's quantize_static underneath)
under a real target's QuantizeConfig; the weight's DequantizeLinear output is then computed by an
onnxruntime session (optimizations off) and compared with `fake_quantize` bit by bit.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qconvert.calibrate import Dataset
from qconvert.quantize.static import quantize_static_int8
from qconvert.recover.weights import fake_quantize, weight_axis, weight_grid, weight_input
from qconvert.targets import TARGETS
from qconvert.types import QuantizeConfig


def _config(target: str, **changes: object) -> QuantizeConfig:
    t = TARGETS.get(target)
    qc = t.bind().quantize_config(8, "static", "minmax")
    return replace(qc, **changes)  # type: ignore[arg-type]


CONFIGS = {
    "cpu": _config("cpu", format="qdq", reduce_range=False),
    "cpu-reduce-range": _config("cpu", format="qdq", reduce_range=True),
    "cpu-per-tensor": _config("cpu", format="qdq", reduce_range=False, per_channel=False),
    "tensorrt": _config("tensorrt"),
    "qnn": _config("qnn"),  # uint8 asymmetric per-tensor weights, MinimumRealRange
}


def _awkward_weight(shape: tuple[int, ...], axis: int, seed: int) -> np.ndarray:
    """Channels of very different scales, one all zero, one all positive, exact ties on the grid."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=shape).astype(np.float32)
    scales = np.logspace(-3, 1, shape[axis]).astype(np.float32)
    w = w * scales.reshape([-1 if i == axis else 1 for i in range(len(shape))])
    w = np.moveaxis(w, axis, 0).copy()
    w[0] = 0.0
    w[1] = np.abs(w[1])
    # max 127/128 -> per-channel scale exactly 1/128, so 2.5/128 and -3.5/128 are exact ties
    # (half to even: 2 and -4; half away from zero would give 3)
    w[2].flat[:3] = [127 / 128, 2.5 / 128, -3.5 / 128]
    return np.moveaxis(w, 0, axis).copy()


def _model(kind: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    f32 = TensorProto.FLOAT
    if kind in ("conv", "depthwise"):
        group = 8 if kind == "depthwise" else 1
        cin = 8
        w = _awkward_weight((8, cin // group, 3, 3), 0, 1)
        b = np.linspace(-1, 1, 8).astype(np.float32)
        node = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1], group=group, name="n")
        x_info = helper.make_tensor_value_info("x", f32, ["n", cin, 6, 6])
        inits = {"w": w, "b": b}
        x_shape: tuple[int, ...] = (cin, 6, 6)
    elif kind in ("gemm-transB0", "gemm-transB1"):
        trans_b = int(kind.endswith("1"))
        w = _awkward_weight((6, 10) if trans_b else (10, 6), 0 if trans_b else 1, 2)
        node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=trans_b, name="n")
        x_info = helper.make_tensor_value_info("x", f32, ["n", 10])
        inits = {"w": w, "b": np.zeros(6, np.float32)}
        x_shape = (10,)
    else:  # matmul
        w = _awkward_weight((10, 6), 1, 3)
        node = helper.make_node("MatMul", ["x", "w"], ["y"], name="n")
        x_info = helper.make_tensor_value_info("x", f32, ["n", 4, 10])
        inits = {"w": w}
        x_shape = (4, 10)
    graph = helper.make_graph(
        [node],
        "g",
        [x_info],
        [helper.make_tensor_value_info("y", f32, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(4).normal(size=(8, *x_shape)).astype(np.float32)
    return model, {"x": x}


def _dequantized_weight(quantized: onnx.ModelProto) -> np.ndarray:
    """The output of the DequantizeLinear that feeds the layer's weight, computed by onnxruntime."""
    import onnxruntime as ort

    layer = next(n for n in quantized.graph.node if n.op_type in ("Conv", "Gemm", "MatMul"))
    producers = {o: n for n in quantized.graph.node for o in n.output}
    index = 1 if layer.op_type != "MatMul" or layer.input[1] in producers else 0
    dq = producers[layer.input[index]]
    assert dq.op_type == "DequantizeLinear"
    inits = {t.name for t in quantized.graph.initializer}
    assert dq.input[0] in inits, "the weight must be stored quantized"
    probe = onnx.ModelProto()
    probe.CopyFrom(quantized)
    probe.graph.output.append(onnx.ValueInfoProto(name=dq.output[0]))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed_name = session.get_inputs()[0].name
    shape = [d if isinstance(d, int) else 1 for d in session.get_inputs()[0].shape]
    return session.run([dq.output[0]], {feed_name: np.zeros(shape, np.float32)})[0]


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("kind", ["conv", "depthwise", "gemm-transB0", "gemm-transB1", "matmul"])
def test_fake_quantize_is_bit_exact(kind: str, config: str, tmp_path: Path) -> None:
    qc = CONFIGS[config]
    model, feeds = _model(kind)
    src, dest = tmp_path / "m.onnx", tmp_path / "q.onnx"
    onnx.save_model(model, str(src))
    quantize_static_int8(src, dest, qc, Dataset("test", feeds))
    stored = _dequantized_weight(onnx.load(str(dest)))

    node = model.graph.node[0]
    w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w"))
    mine = fake_quantize(w, qc, weight_axis(model, node, qc))
    assert mine.dtype == np.float32 and mine.shape == stored.shape
    assert np.array_equal(mine.view(np.uint32), stored.view(np.uint32)), (
        f"{int((mine != stored).sum())} of {mine.size} values differ"
    )
    # the emulation is not vacuous: rounding moved the weight
    assert not np.array_equal(mine, w)


def test_weight_axis_per_op() -> None:
    expected = {"conv": 0, "depthwise": 0, "gemm-transB0": 1, "gemm-transB1": 0, "matmul": 1}
    for kind, axis in expected.items():
        model, _ = _model(kind)
        assert weight_axis(model, model.graph.node[0]) == axis, kind
        assert weight_input(model, model.graph.node[0]) == "w"
    relu = helper.make_node("Relu", ["x"], ["y"])
    assert weight_axis(_model("conv")[0], relu) is None
    model, _ = _model("matmul")
    override = replace(CONFIGS["cpu"], extra_options=(("QDQOpTypePerChannelSupportToAxis", {"MatMul": 0}),))
    assert weight_axis(model, model.graph.node[0], override) == 0


def test_reduce_range_halves_the_grid() -> None:
    w = _awkward_weight((4, 3, 3, 3), 0, 5)
    full = weight_grid(w, CONFIGS["cpu"], 0)
    reduced = weight_grid(w, CONFIGS["cpu-reduce-range"], 0)
    channel_max = np.abs(w).reshape(4, -1).max(1)
    np.testing.assert_allclose(full.scale.ravel()[1:], channel_max[1:] / 127, rtol=1e-6)
    np.testing.assert_allclose(reduced.scale.ravel()[1:], channel_max[1:] / 64, rtol=1e-6)
    assert full.scale.ravel()[0] == 1.0  # an all-zero channel gets scale 1, like onnxruntime
