"""A small conv net built as ONNX, with an optional planted activation outlier, and how the recover
tests run it (onnxruntime's CPU provider, graph optimizations off: Q/DQ computed as written)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def conv_net(outlier: float = 1.0) -> onnx.ModelProto:
    """x [N, 4, 8, 8] -> conv1 -> relu -> conv2 -> relu -> conv3 -> add(skip) -> pool -> gemm [N, 6].

    conv1's channel 0 is `outlier` times larger and conv2 reads it `outlier` times smaller: the fp32
    function does not depend on `outlier`, but with a large one conv1's per-tensor int8 output has a
    step so coarse that its other channels vanish: conv2, the one layer that reads it, is broken."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.4, (8, 4, 3, 3))
    b1 = rng.uniform(0.0, 0.2, 8)
    w1[0] *= outlier
    b1[0] *= outlier
    w2 = rng.normal(0, 0.3, (8, 8, 3, 3))
    w2[:, 0] /= outlier
    inits = {
        "w1": w1,
        "b1": b1,
        "w2": w2,
        "b2": rng.normal(0, 0.1, 8),
        "w3": rng.normal(0, 0.3, (8, 8, 3, 3)),
        "b3": rng.normal(0, 0.1, 8),
        "wg": rng.normal(0, 0.5, (6, 8)),
        "bg": rng.normal(0, 0.1, 6),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], pads=[1, 1, 1, 1], name="conv3"),
        helper.make_node("Add", ["c3", "r2"], ["s"], name="add"),
        helper.make_node("GlobalAveragePool", ["s"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], transB=1, name="gemm"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 6])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def images(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (n, 4, 8, 8)).astype(np.float32)


def run(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
