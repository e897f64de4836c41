"""The weights exactly as onnxruntime's `quantize_static` will store them (Q/DQ format).

Pre-phase recovery steps change the fp32 weights so that, once onnxruntime quantizes them under the
run's `QuantizeConfig`, the stored values are the ones the algorithm wants. To do that a step must
know those stored values without running the quantizer: `fake_quantize(w, qc, axis)` is the
dequantized weight (what the DequantizeLinear in front of the layer outputs), bit for bit, and
`weight_axis(model, node)` is the channel axis onnxruntime quantizes that node's weight along.

The arithmetic follows onnxruntime's Q/DQ weight quantization: per channel (always symmetric, the
zero point the middle of the range) or per tensor (symmetric per `WeightSymmetric`), the range
widened to include 0, `MinimumRealRange` honoured, the scale computed in float64 and stored as
float32, the quotient rounded half to even in float32 and clipped to the type's full range, and
DequantizeLinear's (q - zero_point) * scale in float32. Only float32 weights are emulated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from qconvert.types import QuantizeConfig

# (full range, symmetric range, reduced range) of each integer weight type
_RANGES: dict[str, tuple[tuple[int, int], tuple[int, int] | None, tuple[int, int]]] = {
    "int8": ((-128, 127), (-127, 127), (-64, 64)),
    "uint8": ((0, 255), None, (0, 127)),
    "int16": ((-32768, 32767), (-32767, 32767), (-16384, 16384)),
    "uint16": ((0, 65535), None, (0, 32767)),
    "int4": ((-8, 7), None, (-4, 3)),
    "uint4": ((0, 15), None, (0, 7)),
}

# op type -> (weight input index, default channel axis); MatMul quantizes any initializer input
_WEIGHT_OPS: dict[str, tuple[int, int]] = {"Conv": (1, 0), "ConvTranspose": (1, 1), "MatMul": (1, 1)}


@dataclass(frozen=True)
class WeightGrid:
    """The integer grid of one weight: dequantized = (q - zero_point) * scale, q in [qmin, qmax].
    `scale` and `zero_point` broadcast against the weight (channel axis kept, other axes size 1)."""

    scale: np.ndarray  # float32
    zero_point: np.ndarray  # int64
    qmin: int  # clip bounds of the stored integers (the type's full range)
    qmax: int
    axis: int | None  # None: one scale for the whole tensor


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def weight_input(model: onnx.ModelProto, node: onnx.NodeProto) -> str | None:
    """The name of the initializer onnxruntime quantizes as `node`'s weight, or None when it has
    none (an op without weights, or a weight computed at run time)."""
    inits = _initializers(model)
    if node.op_type in ("Conv", "ConvTranspose", "Gemm"):
        name = node.input[1] if len(node.input) > 1 else ""
        return name if name in inits else None
    if node.op_type == "MatMul":
        for name in (node.input[1], node.input[0]):
            if name in inits:
                return name
    return None


def weight_axis(model: onnx.ModelProto, node: onnx.NodeProto, qc: QuantizeConfig | None = None) -> int | None:
    """The per-channel axis onnxruntime uses for `node`'s weight when quantizing per channel, or
    None where it quantizes that weight per tensor (or the node has no initializer weight).

    Conv: 0 (output channels; depthwise too), ConvTranspose: 1, Gemm: 0 with transB=1 else 1,
    MatMul: 1 (or `QDQOpTypePerChannelSupportToAxis` from `qc.extra_options`). An axis outside the
    weight's rank means per tensor, as in onnxruntime. Whether per-channel is on at all is
    `qc.per_channel`, which `fake_quantize` applies."""
    name = weight_input(model, node)
    if name is None:
        return None
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        axis = 0 if trans_b else 1
    else:
        axis = _WEIGHT_OPS[node.op_type][1]
        if node.op_type == "MatMul" and qc is not None:
            overrides = dict(qc.extra_options).get("QDQOpTypePerChannelSupportToAxis")
            if isinstance(overrides, dict) and "MatMul" in overrides:
                axis = int(overrides["MatMul"])
    rank = len(_initializers(model)[name].dims)
    axis = axis + rank if axis < 0 else axis
    return axis if 0 <= axis < rank else None


def _qrange(qc: QuantizeConfig, symmetric: bool) -> tuple[int, int]:
    try:
        full, sym, reduced = _RANGES[qc.weight_type]
    except KeyError:
        raise ValueError(
            f"weight type {qc.weight_type!r} is not an integer type; valid: {', '.join(_RANGES)}"
        ) from None
    if qc.reduce_range:
        return reduced
    if symmetric and sym is not None:
        return sym
    return full


def weight_grid(w: np.ndarray, qc: QuantizeConfig, axis: int | None) -> WeightGrid:
    """The scale and zero point onnxruntime's Q/DQ quantizer gives `w` under `qc` (per channel
    along `axis` when `qc.per_channel` and `axis` is not None)."""
    w = np.asarray(w)
    if w.dtype != np.float32:
        raise ValueError(f"only float32 weights are emulated, got {w.dtype}")
    extra = dict(qc.extra_options)
    per_channel = bool(qc.per_channel) and axis is not None and w.ndim > 0
    # onnxruntime quantizes per-channel weights symmetrically whatever WeightSymmetric says
    symmetric = True if per_channel else bool(extra.get("WeightSymmetric", qc.weight_symmetric))
    qmin, qmax = _qrange(qc, symmetric)
    full_min, full_max = _RANGES[qc.weight_type][0]
    if per_channel:
        assert axis is not None
        reduce_axes = tuple(i for i in range(w.ndim) if i != axis)
        rmin = w.min(axis=reduce_axes, keepdims=True) if w.size else np.zeros((), np.float32)
        rmax = w.max(axis=reduce_axes, keepdims=True) if w.size else np.zeros((), np.float32)
    else:
        rmin = np.asarray(w.min() if w.size else 0.0, np.float32)
        rmax = np.asarray(w.max() if w.size else 0.0, np.float32)
    rmin = np.minimum(rmin, np.float32(0))
    rmax = np.maximum(rmax, np.float32(0))
    min_real_range = extra.get("MinimumRealRange")
    if min_real_range is not None:
        rmax = np.maximum(rmax, rmin + np.float32(float(min_real_range)))  # type: ignore[arg-type]
    if symmetric:
        absmax = np.maximum(np.abs(rmin), np.abs(rmax))
        rmin, rmax = -absmax, absmax
    scale64 = (rmax.astype(np.float64) - rmin.astype(np.float64)) / float(qmax - qmin)
    tiny = scale64 < np.finfo(np.float32).tiny
    if symmetric:
        zp = np.full(scale64.shape, np.round((qmin + qmax) / 2.0), dtype=np.float64)
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            zp = np.round(qmin - rmin.astype(np.float64) / np.where(tiny, 1.0, scale64))
    scale = np.where(tiny, np.float32(1.0), scale64.astype(np.float32)).astype(np.float32)
    zero_point = np.where(tiny, 0, zp).astype(np.int64)
    return WeightGrid(scale, zero_point, full_min, full_max, axis if per_channel else None)


def quantize_to_grid(w: np.ndarray, grid: WeightGrid) -> np.ndarray:
    """The stored integers (int64) onnxruntime writes for `w` on `grid`."""
    q = np.round(np.asarray(w, np.float32) / grid.scale) + grid.zero_point.astype(np.float32)
    return np.clip(q, grid.qmin, grid.qmax).astype(np.int64)


def dequantize(q: np.ndarray, grid: WeightGrid) -> np.ndarray:
    """DequantizeLinear's output for the integers `q`: (q - zero_point) * scale in float32."""
    return (q - grid.zero_point).astype(np.float32) * grid.scale


def fake_quantize(w: np.ndarray, qc: QuantizeConfig, axis: int | None) -> np.ndarray:
    """`w` as onnxruntime's quantize_static stores it for `qc`, dequantized (float32, bit-exact)."""
    grid = weight_grid(w, qc, axis)
    return dequantize(quantize_to_grid(w, grid), grid)


def node_attribute(node: onnx.NodeProto, name: str, default: Any) -> Any:
    """`node`'s attribute `name` as a Python value, or `default`."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


@dataclass(frozen=True)
class RoundableWeight:
    """A layer whose weight a rounding step (AdaRound, GPTQ) may choose the integers of."""

    node: onnx.NodeProto
    weight: str  # the initializer
    axis: int | None  # onnxruntime's per-channel axis (None: per tensor)


def roundable_weights(
    model: onnx.ModelProto, qc: QuantizeConfig, step: str
) -> tuple[list[RoundableWeight], list[str]]:
    """(layers whose rounding a step may choose, in graph order; notes on those it leaves alone):
    2-D Conv, Gemm (alpha = beta = 1, transA 0) and MatMul with a 2-D float32 initializer weight of
    their own, on a symmetric grid (per channel, or symmetric per tensor)."""
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    uses: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    layers, notes = [], []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        name = weight_input(model, node)
        if name is None or arrays[name].dtype != np.float32 or uses.get(name, 0) > 1:
            continue
        w = arrays[name]
        ok = {
            "Conv": w.ndim == 4,
            "Gemm": node_attribute(node, "alpha", 1.0) == 1.0
            and node_attribute(node, "beta", 1.0) == 1.0
            and not node_attribute(node, "transA", 0),
            "MatMul": w.ndim == 2 and name == node.input[1],
        }[node.op_type]
        if not ok:
            continue
        axis = weight_axis(model, node, qc)
        per_channel = bool(qc.per_channel) and axis is not None
        symmetric = per_channel or bool(dict(qc.extra_options).get("WeightSymmetric", qc.weight_symmetric))
        if not symmetric:
            notes.append(f"{step}: {node.name or node.output[0]} has an asymmetric weight grid; left alone")
            continue
        layers.append(RoundableWeight(node, name, axis))
    return layers, notes


def channel_absmax(a: np.ndarray, axis: int | None) -> np.ndarray:
    """max|a| per channel along `axis` (kept as a broadcastable axis), or over the whole tensor."""
    mag = np.abs(a)
    if axis is None:
        return np.asarray(mag.max())
    return np.asarray(mag.max(axis=tuple(i for i in range(a.ndim) if i != axis), keepdims=True))


def max_elements(w: np.ndarray, grid: WeightGrid) -> np.ndarray:
    """True at each channel's (or the tensor's) max|w| element(s): the values onnxruntime derives
    the scale from, which a rounding step keeps as they are."""
    return np.asarray(np.abs(w) == channel_absmax(w, grid.axis))


def on_grid(w: np.ndarray, integers: np.ndarray, grid: WeightGrid) -> np.ndarray:
    """fp32 weights onnxruntime quantizes to `integers` on `w`'s grid: (q - zp) * s, the max|w|
    elements untouched, and any value past them pinned to +-max|w| so the scale stays the same."""
    values = ((integers - grid.zero_point).astype(np.float32) * grid.scale).astype(np.float32)
    top = np.broadcast_to(channel_absmax(w, grid.axis), w.shape)
    values = np.where(np.abs(values) > top, np.sign(values) * top, values)
    return np.where(max_elements(w, grid), w, values).astype(np.float32)
