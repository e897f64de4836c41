"""--placement: Q/DQ pairs only on the compute ops (or only on their inputs) keep a hard-swish /
squeeze-excite net's elementwise products in float, which buys accuracy there; a plain conv chain,
which has nothing elementwise, quantizes the same way under every placement."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qconvert.calibrate import Dataset
from qconvert.quantize.placement import Measured, choose_measured, compute_nodes, gated, placed, race, takes
from qconvert.quantize.static import quantize_static_int8
from qconvert.recover.defaults import choose
from qconvert.runtime import CPU
from qconvert.types import QuantizeConfig

# pinned so the graph does not depend on this CPU (the test runs Q/DQ as written, not CPU kernels)
QC = QuantizeConfig(bits=8, mode="static", format="qdq", activation_type="uint8", reduce_range=False)


def _net(hardswish: bool) -> onnx.ModelProto:
    """x [N, 8, 8, 8] -> conv -> act -> depthwise conv -> act -> SE -> conv -> y; act is hard-swish
    (x * clip(x + 3, 0, 6) / 6, decomposed as exporters write it) with a squeeze-excite gate, or
    nothing at all (a plain conv chain)."""
    rng = np.random.default_rng(0)
    inits = {
        "w1": rng.normal(0, 0.5, (8, 8, 1, 1)),
        "b1": rng.normal(0, 0.5, 8),
        "w2": rng.normal(0, 0.5, (8, 1, 3, 3)),
        "b2": rng.normal(0, 0.5, 8),
        "w3": rng.normal(0, 0.4, (8, 8, 1, 1)),
        "b3": rng.normal(0, 0.1, 8),
        "ws": rng.normal(0, 0.5, (8, 8, 1, 1)),
        "bs": rng.normal(0, 0.1, 8),
        "three": np.array(3.0),
        "zero": np.array(0.0),
        "six": np.array(6.0),
    }
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1")]

    def act(src: str, tag: str) -> str:
        if not hardswish:
            return src
        nodes.extend(
            [
                helper.make_node("Add", [src, "three"], [f"{tag}_a"], name=f"{tag}_add"),
                helper.make_node("Clip", [f"{tag}_a", "zero", "six"], [f"{tag}_c"], name=f"{tag}_clip"),
                helper.make_node("Mul", [src, f"{tag}_c"], [f"{tag}_m"], name=f"{tag}_mul"),
                helper.make_node("Div", [f"{tag}_m", "six"], [f"{tag}_y"], name=f"{tag}_div"),
            ]
        )
        return f"{tag}_y"

    a1 = act("c1", "hs1")
    nodes.append(helper.make_node("Conv", [a1, "w2", "b2"], ["c2"], name="dw", group=8, pads=[1, 1, 1, 1]))
    a2 = act("c2", "hs2")
    if hardswish:  # squeeze-excite: a per-channel gate from the pooled tensor
        nodes.extend(
            [
                helper.make_node("GlobalAveragePool", [a2], ["se_p"], name="se_pool"),
                helper.make_node("Conv", ["se_p", "ws", "bs"], ["se_c"], name="se_conv"),
                helper.make_node("HardSigmoid", ["se_c"], ["se_g"], name="se_gate"),
                helper.make_node("Mul", [a2, "se_g"], ["se_y"], name="se_mul"),
            ]
        )
        a2 = "se_y"
    nodes.append(helper.make_node("Conv", [a2, "w3", "b3"], ["y"], name="conv3"))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, 8, 8])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # Q/DQ as written
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def _quantized(model: onnx.ModelProto, placement: str, tmp: Path) -> tuple[Path, int]:
    src = tmp / "fp32.onnx"
    onnx.save_model(model, str(src))
    calibration = Dataset(
        "noise", {"x": np.random.default_rng(1).normal(0, 1, (32, 8, 8, 8)).astype(np.float32)}
    )
    dest = quantize_static_int8(src, tmp / f"{placement}.onnx", placed(QC, model, placement), calibration)
    pairs = sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(dest)).graph.node)
    return dest, pairs


def _sqnr(ref: np.ndarray, out: np.ndarray) -> float:
    return float(10 * np.log10((ref**2).sum() / ((ref - out) ** 2).sum()))


def test_compute_placements_keep_the_gated_products_float(tmp_path: Path) -> None:
    model = _net(hardswish=True)
    assert gated(model) and compute_nodes(model) == ("conv1", "dw", "se_conv", "conv3")
    src = tmp_path / "fp32.onnx"
    onnx.save_model(model, str(src))
    x = np.random.default_rng(2).normal(0, 1, (16, 8, 8, 8)).astype(np.float32)
    ref = _run(src, x)
    found = {}
    for placement in ("all", "compute", "inputs"):
        path, pairs = _quantized(model, placement, tmp_path)
        found[placement] = (pairs, _sqnr(ref, _run(path, x)))
    (all_pairs, all_db), (compute_pairs, compute_db), (input_pairs, input_db) = found.values()
    # fewer tensors rounded: every product of the hard-swishes and the gate stays float
    assert input_pairs < compute_pairs < all_pairs
    # measured here: all 31.2 dB, compute 31.7 dB, inputs 36.4 dB (Q/DQ as written, so on every CPU)
    assert compute_db > all_db + 0.25 and input_db > compute_db + 3.0, found


def test_a_plain_conv_chain_is_quantized_the_same_under_every_placement(tmp_path: Path) -> None:
    model = _net(hardswish=False)
    assert not gated(model)
    src = tmp_path / "fp32.onnx"
    onnx.save_model(model, str(src))
    x = np.random.default_rng(2).normal(0, 1, (4, 8, 8, 8)).astype(np.float32)
    outputs = {}
    for placement in ("all", "compute"):
        (tmp_path / placement).mkdir()
        path, pairs = _quantized(model, placement, tmp_path / placement)
        outputs[placement] = (pairs, _run(path, x))
    assert outputs["all"][0] == outputs["compute"][0]
    np.testing.assert_array_equal(outputs["all"][1], outputs["compute"][1])


def test_placement_narrows_a_selection_and_needs_qdq_for_inputs() -> None:
    model = _net(hardswish=True)
    narrowed = placed(replace(QC, nodes_to_include=("dw", "hs2_mul")), model, "inputs")
    assert narrowed.nodes_to_include == ("dw",)  # the user's --include narrowed, never widened
    logits = replace(QC, extra_options=(("OpTypesToExcludeOutputQuantization", ("Gemm",)),))
    kinds = dict(placed(logits, model, "inputs").extra_options)["OpTypesToExcludeOutputQuantization"]
    assert set(kinds) == {"Gemm", "Conv", "ConvTranspose", "MatMul"}
    assert placed(QC, model, "all") == QC
    assert takes(QC, "inputs") and not takes(replace(QC, format="qoperator"), "inputs")
    assert takes(replace(QC, format="qoperator"), "compute")


@pytest.mark.parametrize(
    ("target", "expected"),
    [("cpu", "compute"), ("tensorrt", "inputs"), ("openvino", "inputs"), ("qnn", None)],
)
def test_defaults_choose_a_placement_for_gated_conv_nets_only(target: str, expected: str | None) -> None:
    assert choose("conv", target, 8, "static", gated=True).placement == expected
    assert choose("conv", target, 8, "static", gated=False).placement is None  # EfficientNet-Lite: ReLU6


def _raced_net(wins: str) -> onnx.ModelProto:
    """conv -> depthwise conv -> ReLU6 -> (gate) -> conv, built so that one placement clearly wins:
    - "compute": an offset that cancels (c + 100 - 100) before the depthwise conv: `all` rounds
      c + 100 to 8 bits (steps of 0.4 on a signal of std ~1), `compute` keeps the Add/Sub float;
    - "all": a dead channel (bias -100) in the depthwise conv: `compute` rounds the conv's output,
      whose per-tensor range that channel stretches to [-100, 8], before the ReLU6; `all` fuses the
      ReLU6 and rounds only its output, [0, 6]."""
    rng = np.random.default_rng(0)
    inits = {
        "w1": rng.normal(0, 0.5, (8, 8, 1, 1)),
        "b1": rng.normal(0, 0.1, 8),
        "w2": rng.normal(0, 0.5, (8, 1, 3, 3)),
        "b2": np.r_[-100.0, np.zeros(7)] if wins == "all" else rng.normal(0, 0.1, 8),
        "wg": rng.normal(0, 0.5, (8, 8, 1, 1)),
        "bg": rng.normal(0, 0.1, 8),
        "w3": rng.normal(0, 0.4, (8, 8, 1, 1)),
        "b3": rng.normal(0, 0.1, 8),
        "off": np.array(100.0),
        "zero": np.array(0.0),
        "six": np.array(6.0),
    }
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1")]
    if wins == "compute":
        nodes += [
            helper.make_node("Add", ["c1", "off"], ["h"], name="add"),
            helper.make_node("Sub", ["h", "off"], ["k"], name="sub"),
        ]
    nodes += [
        helper.make_node(
            "Conv", ["k" if wins == "compute" else "c1", "w2", "b2"], ["c2"], name="dw", group=8
        ),
        helper.make_node("Clip", ["c2", "zero", "six"], ["r2"], name="relu6"),
    ]
    if wins == "compute":  # a squeeze-excite-like gate
        nodes += [
            helper.make_node("Conv", ["r2", "wg", "bg"], ["g0"], name="gate_conv"),
            helper.make_node("Sigmoid", ["g0"], ["g"], name="sigmoid"),
            helper.make_node("Mul", ["r2", "g"], ["m"], name="gate"),
        ]
    nodes.append(
        helper.make_node("Conv", ["m" if wins == "compute" else "r2", "w3", "b3"], ["y"], name="conv3")
    )
    used = {i for n in nodes for i in n.input}
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, 6, 6])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items() if k in used],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("wins", ["compute", "all"])
def test_the_placement_race_picks_the_one_that_measures_better(wins: str, tmp_path: Path) -> None:
    model = _raced_net(wins)
    src = tmp_path / "fp32.onnx"
    onnx.save_model(model, str(src))
    calibration = Dataset(
        "noise", {"x": np.random.default_rng(1).normal(0, 1, (64, 8, 8, 8)).astype(np.float32)}
    )
    candidates = {p: placed(QC, model, p) for p in ("compute", "all")}
    measured = race(src, candidates, calibration, tmp_path, [CPU], None)
    by = {m.placement: m.sqnr_db for m in measured}
    # measured here (this CPU's fused kernels): compute 31.3 vs all 19.6 dB; all 33.0 vs compute 22.5
    other = "all" if wins == "compute" else "compute"
    assert by[wins] > by[other] + 5.0, by
    assert choose_measured(measured).placement == wins
    assert all(m.p50_ms is None for m in measured)  # nothing timed where `time` is None


def test_a_better_placement_is_kept_unless_it_is_much_slower() -> None:
    compute, faster = Measured("compute", 20.0, 10.0), Measured("all", 18.0, 9.5)
    assert choose_measured([compute, faster]).placement == "compute"  # 5% slower: SQNR decides
    assert choose_measured([compute, Measured("all", 18.0, 8.0)]).placement == "all"  # 25% slower
    assert choose_measured([compute, Measured("all", 20.0, 10.0)]).placement == "compute"  # a tie: first
    assert choose_measured([Measured("compute", 20.0, None), Measured("all", 21.0, None)]).placement == "all"
