"""SmoothQuant (Xiao et al. 2022): move activation outliers of MatMul/Gemm inputs into the weights.

A transformer's linear layers see inputs with a few channels far larger than the rest (LayerNorm
outputs, GELU outputs); one per-tensor activation scale then spends most of its int8 grid on those
channels. For each input channel j, with X the layer input and W its weight (K input channels),

    s_j = max|X_j| ** alpha / max|W_j| ** (1 - alpha),   X' = X / s,   W' = diag(s) W,

so X' W' = X W exactly in fp32, and the quantizer sees a flatter X' and a (slightly) less flat W'.
Here s is normalised to the median channel and clamped at >= 1 (see `_scale`): outlier channels are
divided down, calm ones are never amplified, which keeps the result robust to inputs unlike the
calibration data.

Where X / s goes:
- into the producer, where that changes nothing else: a LayerNormalization or SkipLayerNormalization
  (gamma and beta divided by s) or a fused com.microsoft Attention (its V columns of the packed QKV
  weight and bias divided by s: attention mixes tokens, never channels) whose output feeds only the
  smoothed layers;
- otherwise into an inserted Div by s in front of the layers. Div, not Mul: onnxruntime's static and
  dynamic quantizers quantize Mul (and so its outlier-laden input) but leave Div in float, so the
  step needs no node exclusions from the pipeline.

An inserted Div only helps where X itself is not quantized. Under static int8 of every op (the
tensorrt target's default for transformers) X usually is: its producer (a Reshape, a GELU's Mul)
or another reader (a residual Add) gets a Q/DQ pair on it, and every reader, the Div included,
then reads the dequantized X; the Div's output is quantized a second time. The layer then sees
Q2(Q1(X) / s): all of the outlier range's rounding error, plus more. The error criterion models
that double rounding (`_quantized_upstream`), so such a group is smoothed only where it still
measures better. On a timm Swin-T on tensorrt, 37 of 52 groups were smoothed through such Divs and
cost 3.2 points of top-1 agreement against plain onnxruntime (88.0% vs 91.2%, 24.9 vs 26.4 dB).
Two more places where the static quantizer differs from a plain fold: it rounds a LayerNorm's gamma
per tensor, so s is nudged until gamma / s lies on that grid (`snap_to_gamma_grid`); and it fixes
each range from calibration data, so a tensor with few rows (a classifier head's pooled input, one
row per image) is scored two-fold cross-validated (`_held_out_error`).

Layers that read the same tensor (unfused Q, K and V) are smoothed together with one s (from the max
over all their weights). alpha is chosen per group of layers on calibration data: the candidate (no
smoothing, or alpha on a grid) with the smallest relative output error of the layer once its input is
quantized per tensor (range from the calibration min/max, as the static quantizer sets it) and its
weight as onnxruntime stores it under the run's QuantizeConfig (recover.weights.fake_quantize), on a
sample of calibration rows. A group where no alpha beats leaving it alone is left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import onnx
from onnx import numpy_helper

from qconvert.calibrate import Dataset
from qconvert.recover.activations import collect, run_graph
from qconvert.recover.base import Recovery, RecoveryInput, StepResult
from qconvert.recover.weights import fake_quantize, on_grid, quantize_to_grid, weight_grid
from qconvert.types import QuantizeConfig

log = logging.getLogger(__name__)

ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
SAMPLE_ROWS = 512  # calibration rows (tokens) per input tensor used to score each alpha
MIN_GAIN = 0.02  # a group is smoothed only if that lowers its output error by at least 2%
EPS = 1e-8
LAYERNORMS = {"LayerNormalization": (1, 2), "SkipLayerNormalization": (2, 3)}  # (gamma, beta) inputs


@dataclass(frozen=True)
class Layer:
    """A node whose first input is smoothed: its weight initializer, viewed as [K, N]."""

    node: onnx.NodeProto
    weight: str
    transposed: bool  # Gemm transB=1: stored [N, K]


@dataclass(frozen=True)
class Choice:
    tensor: str
    layers: tuple[str, ...]
    alpha: float | None  # None: left alone
    error_before: float
    error_after: float
    where: str = ""  # what absorbed X / s


def smoothable_layers(model: onnx.ModelProto, qc: QuantizeConfig) -> dict[str, list[Layer]]:
    """{input tensor: layers reading it}: MatMul with a 2-D initializer weight, Gemm with a constant B
    (alpha 1, transA 0), and under dynamic quantization the fused Attention (its QKV weight is
    quantized there, not under static)."""
    init = {t.name: t for t in model.graph.initializer}
    groups: dict[str, list[Layer]] = {}
    for node in model.graph.node:
        layer = _layer(node, init, qc)
        if layer is not None:
            groups.setdefault(node.input[0], []).append(layer)
    return groups


def _layer(node: onnx.NodeProto, init: dict[str, onnx.TensorProto], qc: QuantizeConfig) -> Layer | None:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "MatMul" and node.domain in ("", "ai.onnx"):
        ok = len(node.input) == 2
    elif node.op_type == "Gemm":
        ok = attrs.get("transA", 0) == 0 and attrs.get("alpha", 1.0) == 1.0
    elif node.op_type == "Attention" and node.domain == "com.microsoft":
        ok = qc.mode == "dynamic" and not attrs.get("qkv_hidden_sizes")
    else:
        return None
    if not ok or len(node.input) < 2 or node.input[1] not in init or len(init[node.input[1]].dims) != 2:
        return None
    return Layer(node, node.input[1], node.op_type == "Gemm" and attrs.get("transB", 0) == 1)


def _kn(w: np.ndarray, layer: Layer) -> np.ndarray:
    return w.T if layer.transposed else w


def _scale(act_absmax: np.ndarray, w_absmax: np.ndarray, alpha: float) -> np.ndarray:
    """The paper's s, scaled so the median channel gets 1, then clamped at >= 1: only channels louder
    than the median are divided down; calm channels are never amplified. Amplified calm channels
    carry any spike calibration did not see straight into the quantizer (measured on MiniLM with the
    two sentence files swapped: worst cosine 0.984 unclamped, 0.996 clamped)."""
    a, w = np.maximum(act_absmax, EPS), np.maximum(w_absmax, EPS)
    s = a**alpha / w ** (1.0 - alpha)
    s = np.where((act_absmax <= EPS) | (w_absmax <= EPS), 1.0, s)  # dead channels: leave alone
    return np.maximum(s / np.median(s), 1.0)


def _quantize_activation(x: np.ndarray, lo: float, hi: float, qc: QuantizeConfig) -> np.ndarray:
    """x through a per-tensor Q/DQ over [lo, hi] (the calibrated range), as onnxruntime sets it."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    signed = qc.activation_type.startswith("int")
    bits = 16 if qc.activation_type.endswith("16") else 8
    if qc.activation_symmetric:
        bound = max(abs(lo), abs(hi))
        lo, hi = -bound, bound
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    if signed and qc.activation_symmetric:
        qmin = -qmax  # onnxruntime's symmetric signed grid: [-127, 127], zero point 0
    scale = max(hi - lo, EPS) / (qmax - qmin)
    zero = np.round(qmin - lo / scale)
    return (np.clip(np.round(x / scale) + zero, qmin, qmax) - zero) * scale


def _group_error(
    rows: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    weights: list[np.ndarray],
    s: np.ndarray,
    qc: QuantizeConfig,
    upstream: bool = False,
) -> float:
    """Relative squared error of [X W for each layer] once X / s and diag(s) W are quantized;
    `upstream`: X is quantized (over its own range) before it is divided by s, as where the quantizer
    puts a Q/DQ pair on X itself and the Div reads its dequantized copy."""
    x = _quantize_activation(rows, float(lo.min()), float(hi.max()), qc) if upstream else rows
    if upstream and np.all(s == 1.0):
        xq = x  # no Div: X's own Q/DQ is the layer's input quantization
    else:
        xq = _quantize_activation(x / s, float((lo / s).min()), float((hi / s).max()), qc)
    return _layer_error(rows, xq, weights, s, qc)


def _layer_error(
    rows: np.ndarray, xq: np.ndarray, weights: list[np.ndarray], s: np.ndarray, qc: QuantizeConfig
) -> float:
    err = ref = 0.0
    for w in weights:
        axis = 1 if qc.per_channel else None
        wq = fake_quantize((w * s[:, None]).astype(np.float32), qc, axis).astype(np.float64)
        y = rows @ w
        err += float(((xq @ wq - y) ** 2).sum())
        ref += float((y**2).sum())
    return err / max(ref, EPS)


def _sample_rows(
    model: onnx.ModelProto, data: Dataset, tensors: Sequence[str], rows: int
) -> tuple[dict[str, np.ndarray], frozenset[str]]:
    """Up to `rows` evenly spread rows (tokens) of each tensor, flattened to [rows, K]; and the
    tensors whose every row is in the sample."""
    total = len(data)
    kept: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    seen = dict.fromkeys(tensors, 0)
    for values in run_graph(model, data, list(tensors)):
        for name, x in values.items():
            flat = np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1])
            per_batch = max(1, rows * len(x) // max(total, 1))
            step = max(1, len(flat) // per_batch)
            kept[name].append(flat[::step][:per_batch])
            seen[name] += len(flat)
    sample = {t: np.concatenate(v)[:rows] for t, v in kept.items() if v}
    return sample, frozenset(t for t, x in sample.items() if len(x) == seen[t])


def _held_out_error(
    rows: np.ndarray,
    weights: list[np.ndarray],
    w_absmax: np.ndarray,
    alpha: float | None,
    qc: QuantizeConfig,
    upstream: bool,
    gamma: np.ndarray | None,
) -> float:
    """`_group_error` for alpha (None: no smoothing), two-fold cross-validated: s and the activation
    ranges from one half of the rows, the error on the other half (which the ranges then clip, as
    they clip unseen inputs), and the other way round.

    Scored on the rows that set them, s and ranges overfit where there are few rows: the pooled
    features a classifier head reads are one row per calibration sample, and on a timm Swin-T
    (32 calibration images) smoothing the head measured +0.14 dB logits SQNR on the calibration
    images and -1.2 dB on 125 held-out ones (its tight smoothed range clipped unseen inputs)."""
    index = np.arange(len(rows))
    halves = (rows[index % 2 == 0], rows[index % 2 == 1])
    total = 0.0
    for fit, test in (halves, halves[::-1]):
        lo, hi = fit.min(axis=0), fit.max(axis=0)
        s = np.ones(fit.shape[1])
        if alpha is not None:
            s = _scale(np.abs(fit).max(axis=0), w_absmax, alpha)
            s = s if gamma is None else snap_to_gamma_grid(s, gamma, qc)
        total += _group_error(test, lo, hi, weights, s, qc, upstream)
    return total / 2


def _score(
    x: np.ndarray,
    ranges: tuple[np.ndarray, np.ndarray],
    weights: list[np.ndarray],
    w_absmax: np.ndarray,
    alpha: float | None,
    s: np.ndarray,
    qc: QuantizeConfig,
    upstream: bool,
    gamma: np.ndarray | None,
    whole: bool = False,
) -> float:
    """The error a candidate s (alpha None: no smoothing) is judged by. Static int8 fixes the ranges
    from calibration data: where the rows are all the tensor has (`whole`: as one pooled row per
    calibration sample), those rows set the ranges and s, so it is scored on rows that
    did not set them (`_held_out_error`). Otherwise the rows are a sample of many more that set the
    ranges, and halving the sample would understate the ranges (on all-MiniLM-L6-v2, static int8 of
    the MatMuls, worst cosine 0.9985 -> 0.987); dynamic int8 takes each input's own range, for which
    the calibration range stands in. Both are scored on all the rows against the full ranges."""
    if qc.mode == "static" and whole:
        return _held_out_error(x, weights, w_absmax, alpha, qc, upstream, gamma)
    return _group_error(x, ranges[0], ranges[1], weights, s, qc, upstream)


def choose(
    groups: dict[str, list[Layer]],
    arrays: dict[str, np.ndarray],
    stats: dict[str, Any],
    rows: dict[str, np.ndarray],
    qc: QuantizeConfig,
    alphas: Sequence[float],
    upstream: frozenset[str] = frozenset(),
    gammas: dict[str, np.ndarray] | None = None,
    whole: frozenset[str] = frozenset(),
) -> dict[str, tuple[float | None, np.ndarray, float, float]]:
    """{tensor: (alpha or None, s, error before, error after)} per group, by the layer output error;
    `upstream`: the tensors quantized themselves before an inserted Div would divide them; `gammas`:
    the LayerNorm gamma that will absorb 1/s where the quantizer rounds it (`snap_to_gamma_grid`);
    `whole`: the tensors whose rows are all there is (`_score`)."""
    gammas = gammas or {}
    out: dict[str, tuple[float | None, np.ndarray, float, float]] = {}
    for tensor, layers in groups.items():
        if tensor not in rows or (tensor in whole and qc.mode == "static" and len(rows[tensor]) < 4):
            continue
        weights = [_kn(arrays[la.weight], la).astype(np.float64) for la in layers]
        values = stats[tensor].values
        lo, hi, act = values["channel_min"], values["channel_max"], values["channel_absmax"]
        if len(act) != weights[0].shape[0]:  # not a per-channel match (e.g. a broadcast input)
            continue
        w_absmax = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        ones = np.ones_like(act)
        fixed = (rows[tensor], (lo, hi), weights, w_absmax)
        twice, gamma = tensor in upstream, gammas.get(tensor)
        before = _score(*fixed, None, ones, qc, twice, gamma, tensor in whole)
        best: tuple[float | None, np.ndarray, float] = (None, ones, before)
        for alpha in alphas:
            s = _scale(act, w_absmax, alpha)
            s = s if gamma is None else snap_to_gamma_grid(s, gamma, qc)
            error = _score(*fixed, alpha, s, qc, twice, gamma, tensor in whole)
            if error < best[2]:
                best = (alpha, s, error)
        if best[0] is not None and best[2] > before * (1.0 - MIN_GAIN):
            best = (None, ones, before)
        out[tensor] = (best[0], best[1], before, best[2])
    return out


def _unique(model: onnx.ModelProto, base: str, taken: set[str]) -> str:
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


class _Editor:
    """Initializer edits made on copies: every changed tensor gets a new name, so shared
    initializers stay intact for their other readers."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.taken = {t.name for t in model.graph.initializer} | {
            o for n in model.graph.node for o in [*n.input, *n.output]
        }
        self.new: dict[str, np.ndarray] = {}

    def replace_input(self, node: onnx.NodeProto, index: int, value: np.ndarray, tag: str) -> None:
        name = _unique(self.model, f"{node.input[index]}_{tag}", self.taken)
        self.new[name] = value.astype(self.arrays.get(node.input[index], value).dtype)
        self.arrays[name] = self.new[name]
        node.input[index] = name

    def finish(self) -> None:
        self.model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in self.new.items())
        used = {i for n in self.model.graph.node for i in n.input} | {o.name for o in self.model.graph.output}
        keep = [t for t in self.model.graph.initializer if t.name in used]
        del self.model.graph.initializer[:]
        self.model.graph.initializer.extend(keep)


def _absorber(
    graph: onnx.GraphProto, arrays: dict[str, np.ndarray], tensor: str, layers: list[Layer], k: int
) -> onnx.NodeProto | None:
    """The node that makes `tensor` and can divide it by s itself (a LayerNorm's gamma and beta, a
    fused Attention's V columns), when nothing but the smoothed layers reads it."""
    readers = [n for n in graph.node if tensor in n.input]
    names = {id(la.node) for la in layers}
    if any(id(n) not in names for n in readers) or tensor in {o.name for o in graph.output}:
        return None
    producer = next((n for n in graph.node if tensor in n.output), None)
    if producer is None or producer.output[0] != tensor:
        return None
    if producer.op_type in LAYERNORMS and producer.domain in ("", "ai.onnx", "com.microsoft"):
        gamma_at, beta_at = LAYERNORMS[producer.op_type]
        ins = list(producer.input)
        if gamma_at >= len(ins) or ins[gamma_at] not in arrays:
            return None
        if beta_at < len(ins) and ins[beta_at] and ins[beta_at] not in arrays:
            return None
        return producer
    if producer.op_type == "Attention" and producer.domain == "com.microsoft":
        attrs = {a.name for a in producer.attribute}
        w = arrays.get(producer.input[1])
        b = arrays.get(producer.input[2]) if len(producer.input) > 2 else None
        if "qkv_hidden_sizes" in attrs or w is None or b is None or w.shape[1] != 3 * k:
            return None
        return producer
    return None


def _fold_into_producer(edit: _Editor, tensor: str, layers: list[Layer], s: np.ndarray) -> str | None:
    """Divide `tensor` by s inside the node that makes it, when nothing else reads it; what absorbed it."""
    producer = _absorber(edit.model.graph, edit.arrays, tensor, layers, len(s))
    if producer is None:
        return None
    if producer.op_type in LAYERNORMS:
        gamma_at, beta_at = LAYERNORMS[producer.op_type]
        ins = list(producer.input)
        edit.replace_input(producer, gamma_at, edit.arrays[ins[gamma_at]] / s, "smoothquant")
        if beta_at < len(ins) and ins[beta_at]:
            edit.replace_input(producer, beta_at, edit.arrays[ins[beta_at]] / s, "smoothquant")
        return f"{producer.op_type} {producer.name} (gamma, beta)"
    w, b = edit.arrays[producer.input[1]].copy(), edit.arrays[producer.input[2]].copy()
    v = slice(2 * len(s), 3 * len(s))
    w[:, v] /= s
    b[v] /= s
    edit.replace_input(producer, 1, w, "smoothquant")
    edit.replace_input(producer, 2, b, "smoothquant")
    return f"Attention {producer.name} (V weight and bias)"


def _takes(node: onnx.NodeProto, qc: QuantizeConfig) -> bool:
    """Whether the static quantizer puts Q/DQ on `node` (its op type, --exclude, an include list)."""
    from qconvert.quantize.static import static_op_types

    return node.op_type in static_op_types() and qc.selects(node.name)


def _quantized_upstream(graph: onnx.GraphProto, tensor: str, layers: list[Layer], qc: QuantizeConfig) -> bool:
    """Whether static quantization puts a Q/DQ pair on `tensor` itself even once the smoothed layers
    read it through a Div: its producer quantizes its output, or another reader its input. Dynamic
    quantization quantizes only the layers' own inputs. Errs towards yes where unsure (an op type
    onnxruntime quantizes only behind a quantized input, a Reshape, counts as quantizing)."""
    if qc.mode != "static":
        return False
    excluded_outputs: Any = dict(qc.extra_options).get("OpTypesToExcludeOutputQuantization") or ()
    float_outputs = {str(op) for op in excluded_outputs}
    names = {id(la.node) for la in layers}

    for node in graph.node:
        if tensor in node.output and _takes(node, qc) and node.op_type not in float_outputs:
            return True
        if tensor in node.input and id(node) not in names and _takes(node, qc):
            return True
    return False


def _insert_div(edit: _Editor, tensor: str, layers: list[Layer], s: np.ndarray) -> str:
    graph = edit.model.graph
    scale = _unique(edit.model, f"{tensor}_smoothquant_scale", edit.taken)
    out = _unique(edit.model, f"{tensor}_smoothed", edit.taken)
    edit.new[scale] = s.astype(np.float32)
    div = onnx.helper.make_node(
        "Div", [tensor, scale], [out], name=_unique(edit.model, f"{out}/Div", edit.taken)
    )
    for la in layers:
        la.node.input[0] = out
    position = min(list(graph.node).index(la.node) for la in layers)
    graph.node.insert(position, div)
    known = next((v for v in [*graph.value_info, *graph.input] if v.name == tensor), None)
    if known is not None:
        info = onnx.ValueInfoProto()
        info.CopyFrom(known)
        info.name = out
        graph.value_info.append(info)
    return f"Div {div.name} (inserted)"


def apply(
    model: onnx.ModelProto, groups: dict[str, list[Layer]], scales: dict[str, np.ndarray]
) -> dict[str, str]:
    """Smooth `model` in place: each group's weights times s, its input divided by s. {tensor: where}."""
    edit = _Editor(model)
    where: dict[str, str] = {}
    for tensor, s in scales.items():
        layers = groups[tensor]
        for la in layers:
            w = edit.arrays[la.weight]
            edit.replace_input(la.node, 1, w * (s[None, :] if la.transposed else s[:, None]), "smoothquant")
        where[tensor] = _fold_into_producer(edit, tensor, layers, s) or _insert_div(edit, tensor, layers, s)
    edit.finish()
    return where


def snap_to_gamma_grid(s: np.ndarray, gamma: np.ndarray, qc: QuantizeConfig) -> np.ndarray:
    """s nudged so that gamma / s lies on the int8 grid the static quantizer stores a LayerNorm's
    gamma on (one scale for the tensor), so folding 1/s into gamma costs no rounding.

    onnxruntime's static quantizer quantizes LayerNormalization's gamma as a weight, per tensor. A
    smoothed gamma / s spans a wider range than gamma (outlier channels divided down), and its small
    entries round to a few grid steps: a gain error of several percent on exactly the channels that
    carry most of the layer's output (on a timm Swin-T, gamma 1 / s ~ 0.05 rounds to 6 steps of
    1/127: -5.5%). Any s is function-preserving, so s_j becomes gamma_j / Q(gamma_j / s_j); a channel
    whose gamma / s rounds to 0 (or a zero gamma), or whose nudged s would fall below 1, keeps its s.
    Only where the quantizer takes the LayerNorm (`_gammas`): on all-MiniLM-L6-v2 with only the
    MatMuls quantized, snapping gammas nobody rounds cost worst cosine 0.9985 -> 0.987."""
    g = (gamma / s).astype(np.float32)
    grid = weight_grid(g, qc, None)
    target = on_grid(g, quantize_to_grid(g, grid), grid).astype(np.float64)
    ok = (target != 0) & (gamma != 0) & (np.sign(target) == np.sign(gamma))
    snapped = gamma / np.where(ok, target, 1.0)
    # never amplify a channel (see `_scale`): there gamma is left to round as it would unsmoothed
    return np.where(ok & (snapped >= 1.0), snapped, s)


def _gammas(
    graph: onnx.GraphProto, groups: dict[str, list[Layer]], arrays: dict[str, np.ndarray], qc: QuantizeConfig
) -> dict[str, np.ndarray]:
    """{tensor: gamma} of the group inputs a LayerNorm will absorb 1/s into, under static quantization
    (which rounds gamma as a weight)."""
    if qc.mode != "static":
        return {}
    out = {}
    for tensor, layers in groups.items():
        k = _kn(arrays[layers[0].weight], layers[0]).shape[0]
        producer = _absorber(graph, arrays, tensor, layers, k)
        if producer is not None and producer.op_type in LAYERNORMS and _takes(producer, qc):
            gamma = arrays[producer.input[LAYERNORMS[producer.op_type][0]]].astype(np.float64)
            if gamma.shape == (k,):
                out[tensor] = gamma
    return out


def _rounded_first(
    graph: onnx.GraphProto, groups: dict[str, list[Layer]], arrays: dict[str, np.ndarray], qc: QuantizeConfig
) -> frozenset[str]:
    """The group inputs no producer can absorb s into whose inserted Div would read them already
    quantized (`_quantized_upstream`)."""
    out = set()
    for tensor, layers in groups.items():
        k = _kn(arrays[layers[0].weight], layers[0]).shape[0]
        if _absorber(graph, arrays, tensor, layers, k) is None and _quantized_upstream(
            graph, tensor, layers, qc
        ):
            out.add(tensor)
    return frozenset(out)


class SmoothQuant(Recovery):
    name: ClassVar[str] = "smoothquant"
    phase: ClassVar[str] = "pre"
    needs_calibration: ClassVar[bool] = True
    formats: ClassVar[frozenset[str]] = frozenset({"qdq", "qoperator"})
    summary: ClassVar[str] = (
        "SmoothQuant: activation outlier channels of MatMul/Gemm inputs moved into the weights, alpha per "
        "layer by the quantized output error"
    )

    def __init__(self, alphas: Sequence[float] = ALPHAS, rows: int = SAMPLE_ROWS) -> None:
        self.alphas = tuple(alphas)
        self.rows = rows

    def why_not(self, qc: QuantizeConfig) -> str | None:
        if qc.mode not in ("static", "dynamic") or qc.bits != 8:
            return f"smoothquant applies to 8-bit static or dynamic quantization, not {qc.bits}-bit {qc.mode}"
        return super().why_not(qc)

    def run(self, fp32: onnx.ModelProto, quantized: onnx.ModelProto | None, inp: RecoveryInput) -> StepResult:
        assert inp.calibration is not None  # requires() checked it
        model = onnx.ModelProto()
        model.CopyFrom(fp32)
        groups = smoothable_layers(model, inp.qc)
        if not groups:
            return StepResult(model, False, ("smoothquant: no MatMul/Gemm with a constant weight to smooth",))
        tensors = sorted(groups)
        stats = collect(
            model,
            inp.calibration,
            tensors,
            ["channel_absmax", "channel_min", "channel_max"],
            progress=inp.progress,
            channel_last=True,
        )
        rows, whole = _sample_rows(model, inp.calibration, tensors, self.rows)
        arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        upstream = _rounded_first(model.graph, groups, arrays, inp.qc)
        gammas = _gammas(model.graph, groups, arrays, inp.qc)
        chosen = choose(groups, arrays, stats, rows, inp.qc, self.alphas, upstream, gammas, whole)
        scales = {t: c[1] for t, c in chosen.items() if c[0] is not None}
        where = apply(model, groups, scales) if scales else {}
        choices = [
            Choice(t, tuple(la.node.name for la in groups[t]), c[0], c[2], c[3], where.get(t, ""))
            for t, c in chosen.items()
        ]
        details = {"layers": [_choice_json(c) for c in choices]}
        kept = sum(1 for t in upstream if t not in scales)
        why = (
            f" ({kept} because the quantizer rounds their input before an inserted Div could divide it)"
            if kept
            else ""
        )
        if not scales:
            note = f"smoothquant: none of {len(groups)} layer input(s) gained from smoothing{why}; graph unchanged"
            return StepResult(fp32, False, (note,), details)
        inserted = sum(1 for w in where.values() if w.startswith("Div"))
        note = (
            f"smoothquant: {len(scales)} of {len(groups)} layer input(s) smoothed (alpha "
            f"{', '.join(sorted({f'{c.alpha:g}' for c in choices if c.alpha is not None}))}); "
            f"{len(scales) - inserted} folded into the producer, {inserted} by an inserted Div"
            + (
                f"; {kept} left alone because the quantizer rounds their input before a Div could divide it"
                if kept
                else ""
            )
        )
        return StepResult(model, True, (note,), details)


def _choice_json(c: Choice) -> dict[str, Any]:
    return {
        "tensor": c.tensor,
        "layers": list(c.layers),
        "alpha": c.alpha,
        "error_before": c.error_before,
        "error_after": c.error_after,
        "absorbed_by": c.where,
    }


STEP = SmoothQuant()  # registered (lazily) in qconvert/recover/__init__.py as RECOVERY
