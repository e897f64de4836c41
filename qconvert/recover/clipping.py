"""Weight clipping by MSE: each output channel's clip chosen to minimise its quantization error.

onnxruntime derives each weight channel's scale from that channel's max|w| (per channel; the whole
tensor's per tensor), so one large weight stretches the grid for all the others. Clamping the fp32
weights of a channel to [-c, c] before quantization gives the quantizer a finer grid; the clipped
weights lose (|w| - c), the others round more finely. Per channel the step picks the c (a share of
max|w| on a grid of candidates) minimising

    || w - fake_quantize(clamp(w, -c, c)) ||^2,

with `fake_quantize` the weight exactly as onnxruntime will store it under the run's QuantizeConfig
(recover.weights), and clamps the fp32 weights: a pre step, data-free. A channel keeps its weights
unless a clip lowers its error by more than MIN_GAIN (relative), so a weight with nothing to gain
is left bit for bit as it was.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import ClassVar

import numpy as np
import onnx
from onnx import numpy_helper

from qconvert.recover.base import ROUNDING, Recovery, RecoveryInput, StepResult, keep_reference
from qconvert.recover.weights import fake_quantize, weight_axis, weight_input
from qconvert.types import QuantizeConfig

log = logging.getLogger(__name__)

# candidate clips as shares of each channel's max|w| (1.0, no clip, is always the baseline)
RATIOS = tuple(float(r) for r in np.round(np.linspace(0.3, 0.995, 140), 4))
MIN_GAIN = 1e-6
WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _channel_errors(w: np.ndarray, qc: QuantizeConfig, axis: int | None, ratio: float) -> np.ndarray:
    """(clamped w, per-channel squared error vs w) for one clip ratio of each channel's max|w|."""
    moved = np.moveaxis(w, axis, 0) if axis is not None else w.reshape(1, -1)
    flat = moved.reshape(moved.shape[0], -1)
    limit = (np.abs(flat).max(axis=1, keepdims=True) * np.float32(ratio)).astype(np.float32)
    clamped = np.clip(flat, -limit, limit)
    back = clamped.reshape(moved.shape)
    back = np.moveaxis(back, 0, axis) if axis is not None else back.reshape(w.shape)
    stored = fake_quantize(np.ascontiguousarray(back), qc, axis)
    stored_moved = np.moveaxis(stored, axis, 0) if axis is not None else stored.reshape(1, -1)
    diff = stored_moved.reshape(flat.shape).astype(np.float64) - flat
    return np.sum(diff * diff, axis=1)


def clip_weight(
    w: np.ndarray, qc: QuantizeConfig, axis: int | None, ratios: tuple[float, ...] = RATIOS
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(clipped weight, chosen ratio per channel (1.0: untouched), error before, error after)."""
    w = np.asarray(w, dtype=np.float32)
    per_channel = bool(qc.per_channel) and axis is not None
    axis = axis if per_channel else None
    best = _channel_errors(w, qc, axis, 1.0)
    before = best.copy()
    chosen = np.ones_like(best)
    for ratio in ratios:
        errors = _channel_errors(w, qc, axis, ratio)
        better = errors < best * (1 - MIN_GAIN)
        best = np.where(better, errors, best)
        chosen = np.where(better, ratio, chosen)
    moved = np.moveaxis(w, axis, 0) if axis is not None else w.reshape(1, -1)
    flat = moved.reshape(moved.shape[0], -1)
    limit = (np.abs(flat).max(axis=1, keepdims=True) * chosen[:, None].astype(np.float32)).astype(np.float32)
    # channels left alone keep their values exactly (no clip at max|w| * 1.0 rounding)
    clipped = np.where(chosen[:, None] < 1.0, np.clip(flat, -limit, limit), flat).reshape(moved.shape)
    out = np.moveaxis(clipped, 0, axis) if axis is not None else clipped.reshape(w.shape)
    return np.ascontiguousarray(out, dtype=np.float32), chosen, before, best


class ClipWeights(Recovery):
    name: ClassVar[str] = "clip_weights"
    phase: ClassVar[str] = "pre"
    needs_calibration: ClassVar[bool] = False
    formats: ClassVar[frozenset[str]] = frozenset({"qdq", "qoperator"})
    summary: ClassVar[str] = (
        "weight clipping by MSE: each output channel's fp32 weights clamped where that lowers the "
        "channel's quantization error as onnxruntime stores it"
    )
    order: ClassVar[int] = ROUNDING

    def why_not(self, qc: QuantizeConfig) -> str | None:
        if qc.mode not in ("static", "dynamic"):
            return f"clip_weights applies to static or dynamic integer quantization, not {qc.mode}"
        return super().why_not(qc)

    def run(self, fp32: onnx.ModelProto, quantized: onnx.ModelProto | None, inp: RecoveryInput) -> StepResult:
        model = onnx.ModelProto()
        model.CopyFrom(fp32)
        layers = [n for n in model.graph.node if n.op_type in WEIGHT_OPS]
        weights = {n.name or n.output[0]: (n, weight_input(model, n)) for n in layers}
        uses = Counter(i for n in model.graph.node for i in n.input)
        inits = {t.name: t for t in model.graph.initializer}
        details: dict[str, dict[str, float]] = {}
        skipped_shared = []
        total = len(weights)
        for done, (key, (node, name)) in enumerate(weights.items(), 1):
            if inp.progress is not None:
                inp.progress(done, total)
            if name is None:
                continue
            if uses[name] > 1:  # one tensor quantized for several nodes: leave it
                skipped_shared.append(name)
                continue
            w = numpy_helper.to_array(inits[name])
            if w.dtype != np.float32 or w.size == 0:
                continue
            clipped, chosen, before, after = clip_weight(w, inp.qc, weight_axis(model, node, inp.qc))
            if np.all(chosen == 1.0):
                continue
            keep_reference(inp, name, w)
            inits[name].CopyFrom(numpy_helper.from_array(clipped, name))
            details[key] = {
                "channels_clipped": int(np.sum(chosen < 1.0)),
                "channels": int(chosen.size),
                "weight_error_before": float(before.sum()),
                "weight_error_after": float(after.sum()),
                "min_ratio": float(chosen.min()),
            }
        notes = []
        if skipped_shared:
            notes.append(f"clip_weights: {len(skipped_shared)} weight(s) shared by several nodes left alone")
        if not details:
            notes.append(
                "clip_weights: no weight channel's quantization error falls by clipping; nothing changed"
            )
            return StepResult(model, False, tuple(notes), {"layers": {}})
        gain = sum(d["weight_error_before"] - d["weight_error_after"] for d in details.values())
        base = sum(d["weight_error_before"] for d in details.values())
        notes.append(
            f"clip_weights: {sum(d['channels_clipped'] for d in details.values())} channel(s) in "
            f"{len(details)} layer(s) clipped; their weight quantization error -{100 * gain / base:.1f}%"
        )
        log.info("%s", notes[-1])
        return StepResult(model, True, tuple(notes), {"layers": details})


STEP = ClipWeights()  # registered (lazily) in qconvert/recover/__init__.py as RECOVERY
