"""Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization
and Bias Correction", section 4.2, the empirical variant): the mean output shift that quantization
causes in each Conv/Gemm/MatMul is measured on calibration data and folded into the fp32 bias, so
that onnxruntime's own quantized bias carries the correction.

Per layer, with x_q the input the layer really gets in the quantized graph (after the quantized
layers before it), W_q the weight exactly as onnxruntime stores it (`weights.fake_quantize`) and W
the fp32 weight (the value a rounding step such as GPTQ or AdaRound replaced, `base.reference_weight`):
shift = E[layer(x_q; W_q - W)] = layer(E[x_q]; W_q - W) (linearity: only the mean input tensor is
needed, padding included), and bias -= shift. This removes the bias that weight rounding adds.

All layers are corrected at once from one quantized candidate, then (`passes` > 1) again on a fresh
candidate quantized with the corrected biases, so that each correction sees the inputs the
quantized, already corrected layers before it produce. Correcting the *total* output mean error
(E[y_q] - E[y_fp32]) instead would count the error an earlier layer passes on twice when both are
corrected at once (measured: it wrecks EfficientNet-Lite), so it would need one pass per layer.
A layer with no bias gets one (Conv/Gemm: a bias input; MatMul: the following Add's
constant, or a new Add).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qconvert.recover.activations import collect
from qconvert.recover.base import (
    CORRECTION,
    Recovery,
    RecoveryInput,
    StepResult,
    quantize_candidate,
    reference_weight,
)
from qconvert.recover.weights import fake_quantize, node_attribute, weight_axis

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layer:
    """One correctable layer of the fp32 graph."""

    node: str
    op_type: str
    weight: str
    bias: str  # the initializer that carries the correction (added by `with_biases`)
    input: str
    output: str  # the tensor the bias is added into, as the fp32 graph names it
    output_node: str  # the node that writes it (the layer, or the Add after a MatMul)
    scale: float  # bias multiplier (Gemm's beta), 1 elsewhere


def _out_channels(node: onnx.NodeProto, w: np.ndarray) -> int:
    if node.op_type == "Conv":
        return int(w.shape[0])
    if node.op_type == "Gemm":
        return int(w.shape[0] if node_attribute(node, "transB", 0) else w.shape[1])
    return int(w.shape[-1])  # MatMul x @ W


def _correctable(model: onnx.ModelProto, node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> bool:
    if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2 or not node.name:
        return False
    if node.input[1] not in inits or node.input[0] in inits:
        return False
    if node.op_type == "Gemm" and node_attribute(node, "transA", 0):
        return False
    if node.op_type == "MatMul" and len(inits[node.input[1]].dims) != 2:
        return False
    return inits[node.input[1]].data_type == onnx.TensorProto.FLOAT


def with_biases(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[Layer]]:
    """A copy of `model` in which every correctable layer has an fp32 bias initializer of its own,
    and the layers. Added biases are zero, so the function is unchanged."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    uses = {name: len(c) for name, c in consumers.items()}
    layers: list[Layer] = []
    new_nodes: list[tuple[int, onnx.NodeProto]] = []
    for index, node in enumerate(g.node):
        if not _correctable(out, node, inits):
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        channels = _out_channels(node, w)
        own = f"{node.name or node.output[0]}_corrected_bias"
        if node.op_type in ("Conv", "Gemm"):
            name = node.input[2] if len(node.input) > 2 and node.input[2] else ""
            if name and name not in inits:
                continue  # a bias computed at run time: leave the layer alone
            if name:
                b = numpy_helper.to_array(inits[name]).astype(np.float32)
                b = np.broadcast_to(b.reshape(-1) if b.size == channels else b, (channels,)).copy()
            else:
                b = np.zeros(channels, np.float32)
            if name and uses.get(name, 0) == 1 and tuple(inits[name].dims) == (channels,):
                own = name  # the layer's own bias: update in place
            else:
                g.initializer.append(numpy_helper.from_array(b, own))
                inits[own] = g.initializer[-1]
            while len(node.input) < 3:
                node.input.append("")
            node.input[2] = own
            beta = float(node_attribute(node, "beta", 1.0)) if node.op_type == "Gemm" else 1.0
            layers.append(
                Layer(
                    node.name,
                    node.op_type,
                    node.input[1],
                    own,
                    node.input[0],
                    node.output[0],
                    node.name,
                    beta,
                )
            )
            continue
        # MatMul: the following Add's constant when it is a per-feature vector used only there
        after = consumers.get(node.output[0], [])
        if len(after) == 1 and after[0].op_type == "Add":
            add = after[0]
            other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
            if other in inits and uses.get(other, 0) == 1 and tuple(inits[other].dims) == (channels,):
                layers.append(
                    Layer(
                        node.name, "MatMul", node.input[1], other, node.input[0], add.output[0], add.name, 1.0
                    )
                )
                continue
        raw = f"{node.output[0]}_before_bias"
        g.initializer.append(numpy_helper.from_array(np.zeros(channels, np.float32), own))
        inits[own] = g.initializer[-1]
        final = node.output[0]
        node.output[0] = raw
        add = helper.make_node("Add", [raw, own], [final], name=f"{node.name}_bias")
        new_nodes.append((index + 1, add))
        layers.append(Layer(node.name, "MatMul", node.input[1], own, node.input[0], final, add.name, 1.0))
    for offset, (index, add) in enumerate(new_nodes):
        g.node.insert(index + offset, add)
    return out, layers


def _node_map(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {n.name: n for n in model.graph.node if n.name}


def _weight_is_quantized(quantized: onnx.ModelProto, name: str) -> tuple[bool, str]:
    """(whether the quantized graph's layer `name` reads a dequantized weight, its data input)."""
    node = _node_map(quantized).get(name)
    if node is None:
        return False, ""
    producers = {o: n for n in quantized.graph.node for o in n.output}
    weight = producers.get(node.input[1])
    return weight is not None and weight.op_type == "DequantizeLinear", node.input[0]


def _mean_output(layer: Layer, model: onnx.ModelProto, mean_x: np.ndarray, dw: np.ndarray) -> np.ndarray:
    """Per-output-channel mean of layer(mean_x) with weight `dw` and no bias (onnxruntime, CPU)."""
    import onnxruntime as ort

    node = _node_map(model)[layer.node]
    x = mean_x.astype(np.float32)[None]
    if layer.op_type == "Conv":
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        op = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
    elif layer.op_type == "Gemm":
        x = x.reshape(1, -1)
        op = helper.make_node(
            "Gemm",
            ["x", "w"],
            ["y"],
            transB=int(node_attribute(node, "transB", 0)),
            alpha=float(node_attribute(node, "alpha", 1.0)),
        )
    else:
        op = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph(
        [op],
        "mean_shift",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(dw.astype(np.float32), "w")],
    )
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    y = session.run(["y"], {"x": x})[0].astype(np.float64)
    if layer.op_type == "Conv":
        return y.reshape(y.shape[0], y.shape[1], -1).mean(axis=(0, 2))
    return y.reshape(-1, y.shape[-1]).mean(axis=0)


class BiasCorrection(Recovery):
    name: ClassVar[str] = "bias_correction"
    phase: ClassVar[str] = "pre"
    needs_calibration: ClassVar[bool] = True
    formats: ClassVar[frozenset[str]] = frozenset({"qdq", "qoperator"})
    summary: ClassVar[str] = (
        "empirical bias correction: the mean output shift quantization causes in each Conv/Gemm/MatMul, "
        "measured on calibration data layer after layer, folded into the fp32 bias"
    )

    order: ClassVar[int] = CORRECTION

    def __init__(self, passes: int = 1) -> None:
        self.passes = passes

    def run(self, fp32: onnx.ModelProto, quantized: onnx.ModelProto | None, inp: RecoveryInput) -> StepResult:
        assert inp.calibration is not None
        model, layers = with_biases(fp32)
        if not layers:
            return StepResult(
                fp32,
                False,
                ("bias_correction: no Conv/Gemm/MatMul with a constant weight: nothing to correct",),
            )
        # measure on Q/DQ candidates: a QOperator graph hides the float tensors, its arithmetic is the same
        measure = (
            inp if inp.qc.format == "qdq" else replace(inp, qc=replace(inp.qc, format="qdq"), quantize=None)
        )
        inits = {t.name: t for t in model.graph.initializer}
        original = {la.bias: numpy_helper.to_array(inits[la.bias]).astype(np.float64) for la in layers}
        latest: dict[str, np.ndarray] = {}
        for p in range(self.passes):
            candidate = quantize_candidate(model, measure)
            # each pass re-measures the whole shift (W_q - W does not depend on the bias; E[x_q] does):
            # it replaces the previous pass's correction, it does not add to it
            shifts = self._shifts(model, candidate, layers, inp)
            for layer in layers:
                shift = shifts.get(layer.node)
                if shift is None:
                    continue
                latest[layer.bias] = shift
                b = (original[layer.bias] - shift / layer.scale).astype(np.float32)
                inits[layer.bias].CopyFrom(numpy_helper.from_array(b, layer.bias))
            if inp.progress is not None:
                inp.progress(p + 1, self.passes)
        corrected = {k: v for k, v in latest.items() if np.any(v != 0)}
        if not corrected:
            return StepResult(
                fp32, False, ("bias_correction: quantization shifts no layer's mean output: nothing changed",)
            )
        details = {
            "passes": self.passes,
            "layers": len(corrected),
            "max_abs_shift": float(max(np.abs(v).max() for v in corrected.values())),
        }
        note = f"bias_correction ({self.passes} passes): corrected the bias of {len(corrected)} of {len(layers)} layers"
        return StepResult(model, True, (note,), details)

    def _shifts(
        self,
        model: onnx.ModelProto,
        candidate: onnx.ModelProto,
        layers: list[Layer],
        inp: RecoveryInput,
    ) -> dict[str, np.ndarray]:
        assert inp.calibration is not None
        quantized = {layer.node: _weight_is_quantized(candidate, layer.node) for layer in layers}
        active = [layer for layer in layers if quantized[layer.node][0]]
        inputs = sorted({quantized[layer.node][1] for layer in active})
        stats = collect(candidate, inp.calibration, inputs, ["mean_tensor"]) if inputs else {}
        inits = {t.name: t for t in model.graph.initializer}
        out: dict[str, np.ndarray] = {}
        for layer in active:
            node = _node_map(model)[layer.node]
            w = numpy_helper.to_array(inits[layer.weight])
            # against the fp32 weight: a rounding step before this one may have put `w` on its grid
            dw = fake_quantize(w, inp.qc, weight_axis(model, node, inp.qc)) - reference_weight(
                inp, layer.weight, w
            )
            if not np.any(dw):
                continue
            mean_x = stats[quantized[layer.node][1]].values["mean_tensor"]
            out[layer.node] = _mean_output(layer, model, mean_x, dw)
        return out


STEP = BiasCorrection()  # registered (lazily) in qconvert/recover/__init__.py as RECOVERY
