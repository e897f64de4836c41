"""Streaming statistics equal the statistics of all activations at once, on a real onnxruntime run."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qconvert.calibrate import Dataset
from qconvert.recover.activations import collect


def _conv_relu() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 5, 5])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_streaming_statistics_match_the_whole_set() -> None:
    x = np.random.default_rng(1).normal(size=(37, 3, 5, 5)).astype(np.float32)
    stats = collect(
        _conv_relu(),
        Dataset("t", {"x": x}),
        ["c"],
        ["mean_tensor", "channel_mean", "channel_absmax", "channel_min", "channel_max"],
        batch_size=8,
    )["c"]
    import onnxruntime as ort

    from qconvert.recover.activations import with_outputs

    session = ort.InferenceSession(with_outputs(_conv_relu(), ["c"]).SerializeToString())
    c = session.run(["c"], {"x": x})[0].astype(np.float64)
    assert stats.count == 37
    np.testing.assert_allclose(stats.values["mean_tensor"], c.mean(0), rtol=1e-5, atol=1e-5)
    per_channel = np.moveaxis(c, 1, -1).reshape(-1, 4)
    np.testing.assert_allclose(stats.values["channel_mean"], per_channel.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats.values["channel_absmax"], np.abs(per_channel).max(0), rtol=1e-5)
    np.testing.assert_allclose(stats.values["channel_min"], per_channel.min(0), rtol=1e-5)
    np.testing.assert_allclose(stats.values["channel_max"], per_channel.max(0), rtol=1e-5)
