"""A dynamic-int8 graph picks its activation ranges at run time over the whole batch, so run in
batches its outputs for one sample depend on the others. Session.run feeds such a graph one sample
at a time (as served at batch 1, and as per-sample confidence intervals assume): the zoo's vit_tiny
showed 93.6% top-1 agreement validated in batches of 64 and 97.6% at batch 1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

from qconvert.calibrate import Dataset
from qconvert.runtime import make_session


def _mlp(path: Path) -> Path:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(16, 32)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(size=(32, 8)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])], inits,
    )  # fmt: skip
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_a_dynamic_int8_graph_runs_one_sample_at_a_time(tmp_path: Path) -> None:
    fp32 = _mlp(tmp_path / "mlp.onnx")
    dynamic = tmp_path / "dynamic.onnx"
    quantize_dynamic(str(fp32), str(dynamic), weight_type=QuantType.QInt8)
    x = np.random.default_rng(1).normal(size=(8, 16)).astype(np.float32)
    x[0] *= 200.0  # one sample with a far wider range than the rest
    data = Dataset("held", {"x": x})

    session = make_session(dynamic)
    assert session.batch_coupled
    alone = np.concatenate([session.inner.run(None, {"x": x[i : i + 1]})[0] for i in range(len(x))])
    together = session.inner.run(None, {"x": x})[0]
    assert not np.allclose(alone[1:], together[1:], rtol=1e-3, atol=1e-3)  # the batch matters here
    np.testing.assert_array_equal(session.run(data)[0], alone)

    # fp32 and static Q/DQ graphs fix their ranges ahead of time: batched as before
    assert not make_session(fp32).batch_coupled
