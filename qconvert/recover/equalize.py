"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization
and Bias Correction", section 4.1), on the ONNX graph.

For two layers A -> f -> B, where f is positively homogeneous (f(x / s) = f(x) / s for s > 0:
identity, Relu, LeakyRelu, Clip(0, +inf)), scaling A's output channel i by 1/s_i (its weights and
bias) and B's input channel i by s_i leaves the function unchanged. With r_A[i] = max|W_A[i, ...]|
and r_B[i] = max|W_B[..., i, ...]|, s_i = sqrt(r_A[i] / r_B[i]) makes both ranges sqrt(r_A r_B): the
channels that were tiny in one layer and huge in the other share one range, so per-tensor and
per-channel grids both fit them. Pairs are swept repeatedly until the scales settle (a layer can
be B of one pair and A of the next: pointwise -> depthwise -> pointwise).

Handled: Conv (group 1, and depthwise on either side), Gemm (transB 0/1, transA 0) and MatMul with
a 2-D constant weight; A's output must feed only f and f's output only B.

ReLU6 (Clip(0, 6)) is NOT positively homogeneous: clip(x / s, 0, 6) != clip(x, 0, 6) / s. ONNX's
Clip takes only scalar bounds, so the per-channel bound 6 / s_i the paper would need cannot be
written without an extra op. By default (relu6="skip") such pairs are left alone, exactly, and
counted in the note. relu6="bound" equalizes them too and rewrites the Clip as the exact
Min(Relu(x), 6 / s) per channel (Min stays float under onnxruntime's quantizers: one more Q/DQ).
Measured on EfficientNet-Lite1 (benchmarks/bench_accuracy.py), "bound" equalizes all 44 pairs and
keeps fp32 to 108 dB, but int8 cpu falls from 15.4 to 9.2 dB logits SQNR (qnn per-tensor: 6.3 ->
8.0 dB, and worse than bias correction alone once combined): with per-channel weights the weight
ranges were not the problem, and the rescaled activations suit per-tensor activation grids worse.
Nothing is approximated in either mode: the fp32 function is preserved to rounding.

High-bias absorption (section 4.1.2) is applied where it is exact: when f is the identity and B
has no padding (a 1x1 Conv, Gemm or MatMul), A's output channel i is shifted by c_i (the middle of
its range on calibration data, when given) and B's bias absorbs W_B c_i, which centres the
activation ranges the per-tensor activation quantizer sees. Across a ReLU it would be exact only if
the pre-activation never fell below c_i, which calibration data cannot guarantee: not done.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qconvert.recover.base import Recovery, RecoveryInput, StepResult
from qconvert.recover.weights import node_attribute

log = logging.getLogger(__name__)

HOMOGENEOUS = ("Relu", "LeakyRelu")
SWEEPS = 20
TOLERANCE = 1e-4  # stop when no scale moves by more than this (relative)


@dataclass(frozen=True)
class Pair:
    a: str  # node names
    b: str
    between: str | None  # the activation node between them, None for a direct edge
    channels: int


class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.inits = {t.name: t for t in model.graph.initializer}
        self.nodes = {n.name: n for n in model.graph.node if n.name}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in model.graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in model.graph.output}
        self.uses = {k: len(v) for k, v in self.consumers.items()}

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.inits[name]).astype(np.float64)

    def set(self, name: str, value: np.ndarray) -> None:
        self.inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))

    def layer_kind(self, node: onnx.NodeProto) -> str | None:
        """'conv', 'depthwise', 'gemm', 'matmul' for a layer CLE can scale, else None."""
        if not node.name or len(node.input) < 2 or node.input[1] not in self.inits:
            return None
        if self.uses.get(node.input[1], 0) != 1 or node.input[0] in self.inits:
            return None  # a shared weight cannot be scaled for one layer only
        if (
            len(node.input) > 2
            and node.input[2]
            and (node.input[2] not in self.inits or self.uses.get(node.input[2], 0) != 1)
        ):
            return None
        w = self.inits[node.input[1]]
        if node.op_type == "Conv":
            group = int(node_attribute(node, "group", 1))
            if group == 1:
                return "conv"
            return "depthwise" if w.dims[1] == 1 and group == w.dims[0] else None
        if node.op_type == "Gemm" and not node_attribute(node, "transA", 0) and len(w.dims) == 2:
            return "gemm"
        if node.op_type == "MatMul" and len(w.dims) == 2:
            return "matmul"
        return None

    def out_channels(self, node: onnx.NodeProto) -> int:
        dims = self.inits[node.input[1]].dims
        if node.op_type == "Conv":
            return int(dims[0])
        if node.op_type == "Gemm":
            return int(dims[0] if node_attribute(node, "transB", 0) else dims[1])
        return int(dims[1])

    def in_channels(self, node: onnx.NodeProto) -> int:
        dims = self.inits[node.input[1]].dims
        kind = self.layer_kind(node)
        if kind == "depthwise":
            return int(dims[0])
        if node.op_type == "Conv":
            return int(dims[1])
        if node.op_type == "Gemm":
            return int(dims[1] if node_attribute(node, "transB", 0) else dims[0])
        return int(dims[0])


def _homogeneous(node: onnx.NodeProto, g: _Graph) -> bool | None:
    """True: positively homogeneous; False: a bounded Clip (ReLU6); None: something else."""
    if node.op_type in HOMOGENEOUS:
        return True
    if node.op_type != "Clip":
        return None
    lo = node.input[1] if len(node.input) > 1 else ""
    hi = node.input[2] if len(node.input) > 2 else ""
    if any(name and name not in g.inits for name in (lo, hi)):
        return None
    low = float(g.array(lo).reshape(-1)[0]) if lo else -np.inf
    high = float(g.array(hi).reshape(-1)[0]) if hi else np.inf
    if low == 0.0 and high == np.inf:
        return True
    return False if low == 0.0 else None


def find_pairs(model: onnx.ModelProto, relu6: str = "skip") -> tuple[list[Pair], int]:
    """The equalizable pairs, and how many A -> ReLU6 -> B pairs were skipped (with relu6="bound"
    those are pairs too: `equalize` rewrites their Clip into an exact per-channel bound)."""
    g = _Graph(model)
    pairs: list[Pair] = []
    skipped = 0
    for a in model.graph.node:
        if g.layer_kind(a) is None or a.output[0] in g.outputs:
            continue
        after = g.consumers.get(a.output[0], [])
        if len(after) != 1:
            continue
        between: onnx.NodeProto | None = None
        b = after[0]
        if g.layer_kind(b) is None:
            homogeneous = _homogeneous(b, g)
            if homogeneous is None or b.output[0] in g.outputs:
                continue
            nxt = g.consumers.get(b.output[0], [])
            if len(nxt) != 1 or g.layer_kind(nxt[0]) is None or nxt[0].input[0] != b.output[0]:
                continue
            if not homogeneous and relu6 != "bound":
                skipped += 1
                continue
            between, b = b, nxt[0]
        elif b.input[0] != a.output[0]:
            continue
        if g.out_channels(a) != g.in_channels(b):
            continue
        pairs.append(Pair(a.name, b.name, between.name if between else None, g.out_channels(a)))
    return pairs, skipped


def _a_range(g: _Graph, node: onnx.NodeProto) -> np.ndarray:
    w = np.abs(g.array(node.input[1]))
    if node.op_type == "Conv":
        return w.reshape(w.shape[0], -1).max(axis=1)
    if node.op_type == "Gemm" and node_attribute(node, "transB", 0):
        return w.max(axis=1)
    return w.max(axis=0)


def _b_range(g: _Graph, node: onnx.NodeProto) -> np.ndarray:
    w = np.abs(g.array(node.input[1]))
    if node.op_type == "Conv":
        if g.layer_kind(node) == "depthwise":
            return w.reshape(w.shape[0], -1).max(axis=1)
        return np.moveaxis(w, 1, 0).reshape(w.shape[1], -1).max(axis=1)
    if node.op_type == "Gemm" and node_attribute(node, "transB", 0):
        return w.max(axis=0)
    return w.max(axis=1)


def _scale_a(g: _Graph, node: onnx.NodeProto, s: np.ndarray) -> None:
    """A's output channel i divided by s_i (weights and bias)."""
    w = g.array(node.input[1])
    if node.op_type == "Conv":
        w = w / s.reshape(-1, *([1] * (w.ndim - 1)))
    elif node.op_type == "Gemm" and node_attribute(node, "transB", 0):
        w = w / s[:, None]
    else:
        w = w / s[None, :]
    g.set(node.input[1], w)
    if len(node.input) > 2 and node.input[2]:
        b = g.array(node.input[2])
        g.set(node.input[2], (b.reshape(-1) / s).reshape(b.shape) if b.size == s.size else b)


def _scale_b(g: _Graph, node: onnx.NodeProto, s: np.ndarray) -> None:
    """B's input channel i multiplied by s_i."""
    w = g.array(node.input[1])
    if node.op_type == "Conv":
        shape = (
            (-1, *([1] * (w.ndim - 1)))
            if g.layer_kind(node) == "depthwise"
            else (1, -1, *([1] * (w.ndim - 2)))
        )
        w = w * s.reshape(shape)
    elif node.op_type == "Gemm" and node_attribute(node, "transB", 0):
        w = w * s[None, :]
    else:
        w = w * s[:, None]
    g.set(node.input[1], w)


def equalize(model: onnx.ModelProto, pairs: list[Pair]) -> tuple[onnx.ModelProto, dict[str, float]]:
    """A copy of `model` with every pair equalized; {pair: largest scale change}."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = _Graph(out)
    moved: dict[str, float] = {}
    total = {p.a: np.ones(p.channels) for p in pairs}  # A's output channel i divided by total[i]
    for _ in range(SWEEPS):
        largest = 0.0
        for p in pairs:
            a, b = g.nodes[p.a], g.nodes[p.b]
            ra, rb = _a_range(g, a), _b_range(g, b)
            floor = 1e-8 * max(float(ra.max()), float(rb.max()), 1e-30)
            live = (ra > floor) & (rb > floor)
            s = np.ones(p.channels)
            s[live] = np.sqrt(ra[live] / rb[live])
            if np.all(np.abs(s - 1) < TOLERANCE):
                continue
            _scale_a(g, a, s)
            _scale_b(g, b, s)
            total[p.a] = total[p.a] * s
            change = float(np.abs(np.log(s)).max())
            moved[f"{p.a}->{p.b}"] = max(moved.get(f"{p.a}->{p.b}", 0.0), change)
            largest = max(largest, change)
        if largest < TOLERANCE:
            break
    for p in pairs:
        if p.between is not None and g.nodes[p.between].op_type == "Clip" and p.a in total:
            _bound_clip(g, g.nodes[p.between], g.nodes[p.a], total[p.a])
    return out, moved


def _bound_clip(g: _Graph, clip: onnx.NodeProto, a: onnx.NodeProto, scale: np.ndarray) -> None:
    """Clip(0, hi) on channels divided by `scale`: exactly Min(Relu(x), hi / scale) per channel."""
    hi_name = clip.input[2] if len(clip.input) > 2 else ""
    if not hi_name:
        return  # Clip(0, +inf) is a ReLU: nothing to bound
    hi = float(g.array(hi_name).reshape(-1)[0])
    rank = len(g.inits[a.input[1]].dims)
    shape: tuple[int, ...] = (-1, *([1] * (rank - 2))) if a.op_type == "Conv" else (-1,)
    bound = f"{clip.name}_bound"
    g.model.graph.initializer.append(
        numpy_helper.from_array((hi / scale).reshape(shape).astype(np.float32), bound)
    )
    relu_out = f"{clip.output[0]}_relu"
    nodes = list(g.model.graph.node)
    at = nodes.index(clip)
    relu = helper.make_node("Relu", [clip.input[0]], [relu_out], name=f"{clip.name}_relu")
    low = helper.make_node("Min", [relu_out, bound], [clip.output[0]], name=f"{clip.name}_bound")
    del g.model.graph.node[at]
    g.model.graph.node.insert(at, low)
    g.model.graph.node.insert(at, relu)


def absorb_high_bias(
    model: onnx.ModelProto, pairs: list[Pair], ranges: dict[str, tuple[np.ndarray, np.ndarray]]
) -> int:
    """In place: shift A's output channels to the middle of their calibrated range where exact
    (no activation between, B without padding); returns the number of pairs changed."""
    g = _Graph(model)
    done = 0
    for p in pairs:
        a, b = g.nodes[p.a], g.nodes[p.b]
        if p.between is not None or a.output[0] not in ranges:
            continue
        if b.op_type == "Conv" and (
            g.layer_kind(b) != "conv"
            or any(d != 1 for d in g.inits[b.input[1]].dims[2:])
            or any(node_attribute(b, "pads", [0]))
            or node_attribute(b, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID")
        ):
            continue
        if len(a.input) < 3 or not a.input[2]:
            continue  # A needs a bias to take the shift
        name = b.input[2] if len(b.input) > 2 and b.input[2] else ""
        if b.op_type == "MatMul" or not name:
            continue  # no bias in B to absorb the shift into
        low, high = ranges[a.output[0]]
        c = (low + high) / 2
        if not np.any(c):
            continue
        ba = g.array(a.input[2])
        g.set(a.input[2], ba.reshape(-1) - c)
        wb = g.array(b.input[1])
        if b.op_type == "Conv":
            shift = np.einsum("oi,i->o", wb.reshape(wb.shape[0], wb.shape[1]), c)
        elif b.op_type == "Gemm" and node_attribute(b, "transB", 0):
            shift = wb @ c
        else:
            shift = c @ wb
        if b.op_type == "Gemm":
            shift = shift * float(node_attribute(b, "alpha", 1.0)) / float(node_attribute(b, "beta", 1.0))
        g.set(name, g.array(name).reshape(-1) + shift)
        done += 1
    return done


class Equalize(Recovery):
    name: ClassVar[str] = "equalize"
    phase: ClassVar[str] = "pre"
    needs_calibration: ClassVar[bool] = False
    formats: ClassVar[frozenset[str]] = frozenset({"qdq", "qoperator"})
    summary: ClassVar[str] = (
        "cross-layer equalization: per-channel scales moved between consecutive Conv/Gemm/MatMul layers "
        "through identity/ReLU, so both layers' channels share one range (function-preserving)"
    )

    def __init__(self, relu6: str = "skip") -> None:
        if relu6 not in ("skip", "bound"):
            raise ValueError(f"relu6={relu6!r}; valid: skip, bound")
        self.relu6 = relu6

    def run(self, fp32: onnx.ModelProto, quantized: onnx.ModelProto | None, inp: RecoveryInput) -> StepResult:
        pairs, skipped = find_pairs(fp32, self.relu6)
        relu6 = (
            f"; {skipped} pair(s) across ReLU6 (Clip 0..6) left alone: it is not scale-equivariant"
            if skipped
            else ""
        )
        if not pairs:
            return StepResult(fp32, False, (f"equalize: no Conv/Gemm/MatMul pair to equalize{relu6}",))
        model, moved = equalize(fp32, pairs)
        absorbed = 0
        if inp.calibration is not None and len(inp.calibration):
            absorbed = absorb_high_bias(model, pairs, _identity_ranges(model, pairs, inp))
        if not moved and not absorbed:
            return StepResult(fp32, False, (f"equalize: {len(pairs)} pair(s) already balanced{relu6}",))
        details = {
            "pairs": len(pairs),
            "equalized": len(moved),
            "skipped_relu6": skipped,
            "absorbed_bias": absorbed,
            "max_log_scale": max(moved.values(), default=0.0),
        }
        note = (
            f"equalize: {len(moved)} of {len(pairs)} pair(s) equalized, {absorbed} bias(es) absorbed{relu6}"
        )
        return StepResult(model, True, (note,), details)


def _identity_ranges(
    model: onnx.ModelProto, pairs: list[Pair], inp: RecoveryInput
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from qconvert.recover.activations import collect

    assert inp.calibration is not None
    g = _Graph(model)
    conv = [g.nodes[p.a].output[0] for p in pairs if p.between is None and g.nodes[p.a].op_type == "Conv"]
    rest = [g.nodes[p.a].output[0] for p in pairs if p.between is None and g.nodes[p.a].op_type != "Conv"]
    stats = collect(model, inp.calibration, conv, ["channel_min", "channel_max"]) if conv else {}
    if rest:
        stats.update(collect(model, inp.calibration, rest, ["channel_min", "channel_max"], channel_last=True))
    return {k: (v.values["channel_min"], v.values["channel_max"]) for k, v in stats.items()}


STEP = Equalize()  # registered (lazily) in qconvert/recover/__init__.py as RECOVERY
