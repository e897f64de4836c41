"""Streaming calibration: activation ranges folded in batch by batch, in memory that does not grow
with the number of samples.

onnxruntime's calibrators keep every intermediate output of every sample and compute the ranges at
the end, so entropy and percentile calibration of a transformer can need hundreds of GB
(onnxruntime issues #10503, #11020). Here each batch is run, folded into per-tensor running
statistics and dropped:

- minmax: a running minimum and maximum, taken in the graph by ReduceMin/ReduceMax like
  onnxruntime does, so the ranges are exactly onnxruntime's.
- entropy, percentile, mse: a running histogram of x (or of |x| where onnxruntime histograms |x|) on a
  grid anchored at 0 whose bin width is a power of two. When a batch exceeds the grid, the width
  doubles and neighbouring bins are summed; because scaling by a power of two is exact in floating
  point, the counts depend only on the data, never on how it was split into batches. At the end
  the fine histogram is re-binned onto the histogram onnxruntime would have built over all the
  data at once (its range and bin count), and onnxruntime's threshold rules are applied to it
  (KL-divergence search for entropy, cumulative percentile).
- mse: the same exact histogram, over the bins the data occupies; the range is the grid (scale and
  zero point of the activation type and symmetry being quantized to) whose expected squared
  quantization error over the histogram (clipping and rounding, values spread evenly within each
  bin) is smallest (see `mse_range`).

Counting every value of every calibrated tensor is the histogram methods' cost (~1.7 ns a value
with numpy, one core): after each batch has run, its tensors are counted by one thread per core
(`calibrate_streaming`), not by one thread while the other cores wait.

onnxruntime's fourth method, Distribution, is left out on purpose: it computes the mean and
standard deviation of each histogram, which only float8 quantization reads
(`compute_scale_zp_float8`); for int8 its range is the symmetric histogram range, i.e. symmetric
minmax. qconvert quantizes to integer types only.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qconvert.calibrate.readers import Dataset
from qconvert.errors import CalibrationError

log = logging.getLogger(__name__)

# qconvert's method name -> onnxruntime's CalibrationMethod member
# (mse is qconvert's own: it hands onnxruntime finished ranges, which it reads as it reads minmax's)
ORT_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile", "mse": "MinMax"}
ONNXRUNTIME_METHODS = ("minmax", "entropy", "percentile")  # the methods onnxruntime itself has
DEFAULT_BATCH = 16
# onnxruntime's defaults (create_calibrator): histogram bins per method, and whether the range is
# made symmetric (percentile then histograms |x|)
# (mse searches the fine histogram itself: 256 gives 4096 fine bins on each side of 0)
DEFAULT_NUM_BINS = {"entropy": 128, "percentile": 2048, "mse": 256}
DEFAULT_SYMMETRIC = {"minmax": False, "entropy": False, "percentile": True, "mse": False}
DEFAULT_NUM_QUANTIZED_BINS = 128
DEFAULT_PERCENTILE = 99.999
# Fine bins per output bin, at least: the fine grid spans up to twice the data's range, so it holds
# FINE_OVERSAMPLING * num_bins bins on each side of 0 (rounded up to a power of two).
FINE_OVERSAMPLING = 16
# The grid's half-width is 2**exponent; below this exponent a tensor is treated as all zeros (the
# scale factor F / 2**exponent must stay a finite float32).
MIN_EXPONENT = -100
# values binned at a time: large enough that the counting threads overlap (np.add.at on a 64K-value
# chunk gains nothing from a second thread; on Lite1, quiet 2-core machine, percentile went from
# 1.63x to 1.50x minmax wall); the temporaries are 12 MB a thread
CHUNK = 1 << 20
# mse: scales tried, evenly spaced up to minmax's scale (and every zero point for 8-bit grids)
DEFAULT_MSE_CANDIDATES = 128
MSE_MAX_ZERO_POINTS = 1024
# mse: values of one sample's tensor counted (evenly strided); counting every value costs 2.5x
# minmax's time on a CNN, while an error estimate needs far fewer values than a far-tail percentile
DEFAULT_MSE_VALUES_PER_SAMPLE = 1 << 13
# mse: the search runs on at most this many bins (neighbouring fine bins summed, counts exact)
MSE_SEARCH_BINS = 1024
# activation type -> (full range, symmetric range) of onnxruntime's integer types
ACTIVATION_QRANGES = {
    "uint8": ((0, 255), (0, 255)),
    "int8": ((-128, 127), (-127, 127)),
    "uint16": ((0, 65535), (0, 65535)),
    "int16": ((-32768, 32767), (-32767, 32767)),
}


@dataclass(frozen=True)
class CalibrationSettings:
    """How to calibrate. None means onnxruntime's default for the method."""

    method: str = "minmax"
    symmetric: bool | None = None
    num_bins: int | None = None
    num_quantized_bins: int = DEFAULT_NUM_QUANTIZED_BINS
    percentile: float = DEFAULT_PERCENTILE
    op_types: tuple[str, ...] | None = None  # tensors feeding or fed by these ops; None: every float tensor
    batch_size: int = DEFAULT_BATCH
    # mse only: the activation grid the range is chosen for (QuantizeConfig.activation_type and
    # activation_symmetric; the range then also follows `symmetric` when that is set)
    activation_type: str = "uint8"
    activation_symmetric: bool = False
    mse_candidates: int = DEFAULT_MSE_CANDIDATES
    # mse: values of each sample counted per tensor, evenly strided (0: all); min and max see all
    mse_values_per_sample: int = DEFAULT_MSE_VALUES_PER_SAMPLE
    # (tensor, source): tensors not measured, given the source's range instead, because the
    # quantizer replaces their range by the source's anyway (`replaced_ranges`)
    replaced: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.method not in ORT_METHODS:
            raise CalibrationError(
                f"calibration method {self.method!r} is not supported; valid: {', '.join(ORT_METHODS)}."
            )
        if not 0 <= self.percentile <= 100:
            raise CalibrationError(f"calibration percentile must be in [0, 100], got {self.percentile}.")
        if self.batch_size < 1:
            raise CalibrationError(f"calibration batch size must be at least 1, got {self.batch_size}.")
        if self.method == "entropy" and self.bins < self.num_quantized_bins:
            raise CalibrationError(
                f"entropy calibration needs at least as many histogram bins ({self.bins}) as quantized "
                f"bins ({self.num_quantized_bins})."
            )
        if self.method == "mse" and self.activation_type not in ACTIVATION_QRANGES:
            raise CalibrationError(
                f"mse calibration chooses ranges for integer activation types "
                f"({', '.join(ACTIVATION_QRANGES)}), not {self.activation_type!r}; use "
                "--calibration-method minmax for it."
            )
        if self.mse_candidates < 1:
            raise CalibrationError(
                f"mse calibration needs at least 1 candidate scale, got {self.mse_candidates}."
            )

    @property
    def is_symmetric(self) -> bool:
        return DEFAULT_SYMMETRIC[self.method] if self.symmetric is None else self.symmetric

    @property
    def bins(self) -> int:
        return self.num_bins or DEFAULT_NUM_BINS.get(self.method, 0)

    @property
    def grid_symmetric(self) -> bool:
        """mse: whether the grid searched is symmetric (onnxruntime's ActivationSymmetric, or a
        symmetric range asked for explicitly)."""
        return self.activation_symmetric or bool(self.symmetric)

    @property
    def absolute(self) -> bool:
        """onnxruntime histograms |x| for symmetric percentile, x otherwise."""
        return self.method == "percentile" and self.is_symmetric


# --- running statistics ---------------------------------------------------------------------------


def _exponent_above(value: float) -> int:
    """The smallest e with 2**e > value (value >= 0), at least MIN_EXPONENT."""
    if value <= 0:
        return MIN_EXPONENT
    _, e = np.frexp(value)  # value = m * 2**e, 0.5 <= m < 1, so value < 2**e <= 2 * value
    return max(int(e), MIN_EXPONENT)


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


class RunningHistogram:
    """Counts of x (or |x|) on bins of width 2**exponent / F anchored at 0, plus min, max and min |x|.

    Signed: 2F bins cover [-2**e, 2**e); absolute: F bins cover [0, 2**e). The array never changes
    size; a wider batch doubles the bin width (as often as needed) and sums neighbouring bins."""

    def __init__(self, fine_bins: int, absolute: bool) -> None:
        self.fine_bins = fine_bins  # F, a power of two
        self._log2_fine = fine_bins.bit_length() - 1
        self.absolute = absolute
        self.counts = np.zeros(fine_bins if absolute else 2 * fine_bins, dtype=np.int64)
        self.exponent: int | None = None
        self.lowest = np.float32(np.inf)
        self.highest = np.float32(-np.inf)
        self.abs_lowest = np.float32(np.inf)

    @property
    def nbytes(self) -> int:
        return int(self.counts.nbytes)

    def add(
        self, x: np.ndarray, name: str, per_sample: int = 0, extremes: tuple[Any, Any] | None = None
    ) -> None:
        """Fold in `x`. per_sample > 0: count only every k-th value of each sample (axis 0), k the
        smallest that leaves at most `per_sample` values of it, so the counts still do not depend on
        how samples are batched; the minimum and maximum always see every value (`extremes`: the
        batch's own (min, max) when `x` holds only some of its values)."""
        flat = np.asarray(x, dtype=np.float32).ravel()
        if flat.size == 0:
            return
        if per_sample > 0 and x.ndim > 1 and flat.size > per_sample * len(x):
            rows = flat.reshape(len(x), -1)
            stride = -(-rows.shape[1] // per_sample)
            flat = np.ascontiguousarray(rows[:, ::stride]).ravel()
        if extremes is not None:
            self._extend(np.float32(extremes[0]), np.float32(extremes[1]), name)
        try:
            self._count(flat, name, own_extremes=extremes is None)
        except IndexError as e:  # NaN becomes an index far out of the grid
            raise CalibrationError(
                f"tensor '{name}' has NaN values on the calibration data; its range cannot be calibrated."
            ) from e

    def _extend(self, lo: np.float32, hi: np.float32, name: str) -> None:
        """Take in values spanning [lo, hi]: the extremes, and a wider grid where they need one."""
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise CalibrationError(
                f"tensor '{name}' has infinite or only NaN values on the calibration data; its range cannot "
                "be calibrated. Check the model and the data for overflow."
            )
        self.lowest, self.highest = min(self.lowest, lo), max(self.highest, hi)
        exponent = _exponent_above(max(abs(float(lo)), abs(float(hi))))
        if self.exponent is None:
            self.exponent = exponent
        elif exponent > self.exponent:
            self._widen(exponent)

    def _count(self, flat: np.ndarray, name: str, own_extremes: bool) -> None:
        """Add the bin counts of `flat`, a chunk at a time so the temporaries stay small (several
        times faster than whole-array passes on large activations). own_extremes: each chunk's
        minimum and maximum are taken here, from the chunk while it is in cache, and the grid widened
        before the chunk is counted; widening is exact, so the counts are those of one grid for all."""
        size = min(CHUNK, flat.size)
        scaled, index = np.empty(size, dtype=np.float32), np.empty(size, dtype=np.intp)
        for start in range(0, flat.size, CHUNK):
            chunk = flat[start : start + CHUNK]
            if own_extremes:
                lo, hi = np.fmin.reduce(chunk), np.fmax.reduce(chunk)
                if not (self.lowest <= lo and hi <= self.highest):  # (NaN: not within either)
                    self._extend(lo, hi, name)
            assert self.exponent is not None
            scale = np.float32(np.ldexp(1.0, self._log2_fine - self.exponent))
            t, i = scaled[: chunk.size], index[: chunk.size]
            if self.absolute:
                np.abs(chunk, out=t)
                self.abs_lowest = min(self.abs_lowest, np.fmin.reduce(t))
                t *= scale  # exact (a power of two), and < F because |x| < 2**exponent
                np.copyto(i, t, casting="unsafe")  # truncation is floor here
            else:
                np.multiply(chunk, scale, out=t)
                np.floor(t, out=t)
                np.copyto(i, t, casting="unsafe")
                i += self.fine_bins
            # in place: bincount would take another pass for the indices' extremes, and a fresh
            # array to add (~20% of the time here)
            np.add.at(self.counts, i, 1)

    def _widen(self, exponent: int) -> None:
        assert self.exponent is not None
        group = min(1 << (exponent - self.exponent), self.fine_bins)
        merged = self.counts.reshape(-1, group).sum(axis=1)
        self.counts = np.zeros_like(self.counts)
        if self.absolute:
            self.counts[: len(merged)] = merged
        else:
            half = len(merged) // 2
            self.counts[self.fine_bins - half : self.fine_bins + half] = merged
        self.exponent = exponent

    def fine_edges(self) -> np.ndarray:
        assert self.exponent is not None
        width = np.ldexp(1.0, self.exponent) / self.fine_bins
        first = 0 if self.absolute else -self.fine_bins
        return (np.arange(len(self.counts) + 1, dtype=np.float64) + first) * width

    def rebinned(self, num_bins: int) -> tuple[np.ndarray, np.ndarray]:
        """(counts, edges): this data on onnxruntime's bins for the whole set at once.

        onnxruntime bins |x| over [min |x|, max |x|] and x over [-max |x|, max |x|], num_bins bins.
        Counts within a fine bin are taken as spread evenly over the part of it the data covers."""
        if self.absolute:
            lo, hi = self.abs_lowest, max(abs(self.lowest), abs(self.highest))
            data_lo, data_hi = float(self.abs_lowest), float(hi)
        else:
            hi = max(abs(self.lowest), abs(self.highest))
            lo = -hi
            data_lo, data_hi = float(self.lowest), float(self.highest)
        if lo == hi:  # numpy's rule for an empty range
            lo, hi = lo - np.float32(0.5), hi + np.float32(0.5)
        edges = np.linspace(lo, hi, num_bins + 1, dtype=np.float32)
        return _spread(self.counts, self.fine_edges(), data_lo, data_hi, edges), edges

    def data_histogram(self, max_bins: int = MSE_SEARCH_BINS) -> tuple[np.ndarray, np.ndarray]:
        """(counts, edges): the exact fine counts over the bins the data occupies (signed; groups
        of neighbouring bins summed to at most `max_bins`), the outer edges moved in to the data's
        own ends so no count is spread beyond them."""
        fine = self.fine_edges()
        occupied = np.flatnonzero(self.counts)
        first, last = int(occupied[0]), int(occupied[-1]) + 1
        edges = fine[first : last + 1].copy()
        edges[0] = max(edges[0], float(self.lowest))
        if float(self.highest) > edges[-2]:  # (a maximum on a bin's left edge keeps that bin's width)
            edges[-1] = min(edges[-1], float(self.highest))
        counts = self.counts[first:last].astype(np.float64)
        group = -(-len(counts) // max_bins)
        if group > 1:  # sum neighbouring bins: exact counts on a coarser grid
            pad = -len(counts) % group
            counts = np.concatenate((counts, np.zeros(pad))).reshape(-1, group).sum(axis=1)
            width = (fine[1] - fine[0]) * group
            grouped = fine[first] + width * np.arange(len(counts) + 1, dtype=np.float64)
            grouped[0] = edges[0]  # the data's ends (within the end groups)
            if edges[-1] > grouped[-2]:
                grouped[-1] = edges[-1]
            edges = grouped
        if edges[-1] <= edges[0]:  # a single value
            edges = np.array([float(self.lowest), float(self.highest)])
        return counts, edges


def _spread(counts: np.ndarray, fine: np.ndarray, lo: float, hi: float, edges: np.ndarray) -> np.ndarray:
    """Counts on `fine` bins, all within [lo, hi], re-binned onto `edges` by linear interpolation of
    the cumulative count."""
    total = float(counts.sum())
    if hi <= lo:
        out = np.zeros(len(edges) - 1)
        out[min(max(int(np.searchsorted(edges, lo, side="right")) - 1, 0), len(out) - 1)] = total
        return out
    first = max(int(np.searchsorted(fine, lo, side="right")) - 1, 0)
    last = min(int(np.searchsorted(fine, hi, side="right")), len(counts))
    x = fine[first : last + 1].copy()
    x[0], x[-1] = lo, hi  # the data's own ends, so no count is spread beyond them
    cumulative = np.concatenate(([0.0], np.cumsum(counts[first:last], dtype=np.float64)))
    keep = np.concatenate(([True], np.diff(x) > 0))  # drop zero-width steps (lo or hi on an edge)
    x, cumulative = x[keep], np.maximum.accumulate(cumulative[keep])
    cumulative[-1] = total
    return np.diff(np.interp(edges.astype(np.float64), x, cumulative))


# --- threshold rules (onnxruntime's, on a histogram) ---------------------------------------------


def percentile_range(
    hist: np.ndarray,
    edges: np.ndarray,
    lowest: np.float32,
    highest: np.float32,
    percentile: float,
    symmetric: bool,
) -> tuple[np.float32, np.float32]:
    """The range that cuts (100 - percentile)% of the values (all on the right if symmetric, else
    half on each side), as the left edge of the bin where the cumulative share crosses the cut."""
    cdf = np.cumsum(hist / hist.sum())
    last = len(edges) - 1
    if symmetric:
        right = edges[min(int(np.searchsorted(cdf, percentile / 100.0)), last)]
        lo, hi = -right, right
    else:
        cut = (100.0 - percentile) / 200.0
        lo = edges[min(int(np.searchsorted(cdf, cut)), last)]
        hi = edges[min(int(np.searchsorted(cdf, 1.0 - cut)), last)]
    return np.float32(max(lo, lowest)), np.float32(min(hi, highest))


def entropy_range(
    hist: np.ndarray,
    edges: np.ndarray,
    lowest: np.float32,
    highest: np.float32,
    num_quantized_bins: int,
) -> tuple[np.float32, np.float32]:
    """The symmetric window around the histogram's centre whose values, squeezed into
    `num_quantized_bins` levels, lose the least information (KL divergence), TensorRT's rule."""
    n = len(hist)
    zero = n // 2
    half_q = num_quantized_bins // 2
    best: tuple[np.floating[Any], np.floating[Any]] | None = None
    best_div = np.inf
    for i in range(half_q, zero + 1):  # the first of equal minima wins, as in onnxruntime
        start, end = zero - i, min(zero + i + 1, n)
        div = _kl_of_window(hist, start, end, num_quantized_bins)
        if best is None or div < best_div:
            best, best_div = (edges[start], edges[end]), div
    assert best is not None
    return np.float32(max(best[0], lowest)), np.float32(min(best[1], highest))


def _kl_of_window(hist: np.ndarray, start: int, end: int, num_quantized_bins: int) -> float:
    """KL(p || q): p is the window with the outliers folded into its end bins; q is the window merged
    into `num_quantized_bins` levels and expanded back over p's non-empty bins."""
    window = hist[start:end].astype(np.float64)
    p = window.copy()
    p[0] += hist[:start].sum()
    p[-1] += hist[end:].sum()
    merged_per_level = len(window) // num_quantized_bins
    used = merged_per_level * num_quantized_bins
    levels = window[:used].reshape(num_quantized_bins, merged_per_level).sum(axis=1)
    levels[-1] += window[used:].sum()
    nonzero = (p[:used] != 0).reshape(num_quantized_bins, merged_per_level)
    per_level = nonzero.sum(axis=1)
    value = np.divide(levels, per_level, out=np.zeros_like(levels), where=per_level > 0)
    q = np.zeros_like(p)
    q[:used] = np.repeat(value, merged_per_level)
    p_smooth, q_smooth = _smoothed(p), _smoothed(q)
    if p_smooth is None or q_smooth is None:
        return float("inf")
    p_norm, q_norm = p_smooth / p_smooth.sum(), q_smooth / q_smooth.sum()
    return float(np.sum(p_norm * np.log(p_norm / q_norm)))


def _smoothed(p: np.ndarray, eps: float = 0.0001) -> np.ndarray | None:
    """Empty bins get eps, taken evenly from the others, so the KL divergence stays finite."""
    zeros = p == 0
    n_zeros = int(zeros.sum())
    if n_zeros == len(p):
        return None
    taken = eps * n_zeros / (len(p) - n_zeros)
    out = np.where(zeros, eps, p - taken)
    return out if np.all(out > 0) else None


# --- mse: the activation grid with the least expected squared error, on a histogram ---------------


def activation_qrange(activation_type: str, symmetric: bool) -> tuple[int, int]:
    """onnxruntime's integer range for an activation type (activations are never reduce_range)."""
    full, sym = ACTIVATION_QRANGES[activation_type]
    return sym if symmetric else full


def mse_candidates(
    lowest: float, highest: float, qmin: int, qmax: int, symmetric: bool, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """(scales, zero points) searched: `count` scales evenly spaced up to the scale onnxruntime
    derives from [lowest, highest] (minmax's, the last one), each with every zero point of the type
    (at most MSE_MAX_ZERO_POINTS of them, evenly spread, minmax's among them); a symmetric grid has
    only the middle zero point."""
    rmin, rmax = min(float(lowest), 0.0), max(float(highest), 0.0)
    if symmetric:
        rmin, rmax = -max(-rmin, rmax), max(-rmin, rmax)
    top = (rmax - rmin) / (qmax - qmin)
    scales = top * np.arange(1, count + 1, dtype=np.float64) / count
    if symmetric:
        zero_points = np.round(np.array([(qmin + qmax) / 2.0]))
    elif qmax - qmin + 1 <= MSE_MAX_ZERO_POINTS:
        zero_points = np.arange(qmin, qmax + 1, dtype=np.float64)
    else:
        spread = np.round(np.linspace(qmin, qmax, MSE_MAX_ZERO_POINTS))
        minmax_zp = np.round(qmin - rmin / top) if top > 0 else float(qmin)
        zero_points = np.unique(np.append(spread, minmax_zp))
    return scales, zero_points


class _Density:
    """A histogram read as a piecewise-uniform density: its cumulative count, first and second
    moment at any points, and the integral of a rounding error against it."""

    def __init__(self, hist: np.ndarray, edges: np.ndarray) -> None:
        self.edges = e = np.asarray(edges, dtype=np.float64)
        width = np.diff(e)
        hist = np.asarray(hist, dtype=np.float64)
        self.density = np.divide(hist, width, out=np.zeros_like(hist), where=width > 0)
        a, b = e[:-1], e[1:]
        # per-bin moments from the counts (a zero-width bin is a point mass at its edge)
        self.c0 = np.concatenate(([0.0], np.cumsum(hist)))
        self.c1 = np.concatenate(([0.0], np.cumsum(hist * (a + b) / 2)))
        self.c2 = np.concatenate(([0.0], np.cumsum(hist * (a * a + a * b + b * b) / 3)))

    def _bin(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each point's bin and the point clamped into that bin."""
        j = np.clip(np.searchsorted(self.edges, x, side="right") - 1, 0, len(self.density) - 1)
        return j, np.clip(x, self.edges[j], self.edges[j + 1])

    def moments(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(count, sum of t, sum of t^2) of the values t below each x."""
        j, t = self._bin(x)
        lo, d = self.edges[j], self.density[j]
        t2, lo2 = t * t, lo * lo
        past = x >= self.edges[-1]  # everything is below: the totals (a point mass at the end too)
        return (
            np.where(past, self.c0[-1], self.c0[j] + d * (t - lo)),
            np.where(past, self.c1[-1], self.c1[j] + d * (t2 - lo2) / 2),
            np.where(past, self.c2[-1], self.c2[j] + d * (t2 * t - lo2 * lo) / 3),
        )

    def rounding_prefix(self, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each scale (row): the rounding error's antiderivative at the edges, and the
        integral of the rounding error against the density up to each edge."""
        at_edges = _rounding_antiderivative(self.edges[None, :], scales[:, None])
        steps = self.density * np.diff(at_edges, axis=1)
        prefix = np.concatenate((np.zeros((len(scales), 1)), np.cumsum(steps, axis=1)), axis=1)
        return at_edges, prefix

    def rounding(
        self, x: np.ndarray, scales: np.ndarray, prefix: tuple[np.ndarray, np.ndarray]
    ) -> np.ndarray:
        """For each row k of x: the integral over the values t below x of (t - s_k round(t / s_k))^2."""
        at_edges, cumulative = prefix
        j, t = self._bin(x)
        inside = _rounding_antiderivative(t, scales[:, None]) - np.take_along_axis(at_edges, j, axis=1)
        return np.take_along_axis(cumulative, j, axis=1) + self.density[j] * inside


def _rounding_antiderivative(x: np.ndarray, s: np.ndarray) -> np.ndarray:
    """The integral from 0 to x of (t - s round(t / s))^2 dt: k s^3 / 12 + r^3 / 3, x = k s + r."""
    k = np.round(x / s)
    r = x - k * s
    return k * (s * s * s / 12) + r * r * r / 3


def mse_errors(
    hist: np.ndarray, edges: np.ndarray, scales: np.ndarray, zero_points: np.ndarray, qmin: int, qmax: int
) -> np.ndarray:
    """(len(scales), len(zero_points)): the histogram's total squared error on each grid
    (q - zp) * s, q in [qmin, qmax]: values beyond the ends clip to them, the others round to
    the nearest grid point; values are spread evenly within their bin."""
    density = _Density(hist, edges)
    s = scales[:, None]
    low, high = s * (qmin - zero_points[None, :]), s * (qmax - zero_points[None, :])
    n_low, m1_low, m2_low = density.moments(low)
    n_high, m1_high, m2_high = density.moments(high)
    total_n, total_m1, total_m2 = density.c0[-1], density.c1[-1], density.c2[-1]
    below = m2_low - 2 * low * m1_low + low**2 * n_low
    above = (total_m2 - m2_high) - 2 * high * (total_m1 - m1_high) + high**2 * (total_n - n_high)
    prefix = density.rounding_prefix(scales)
    inside = density.rounding(high, scales, prefix) - density.rounding(low, scales, prefix)
    return np.maximum(below, 0.0) + np.maximum(inside, 0.0) + np.maximum(above, 0.0)


def mse_range(
    hist: np.ndarray,
    edges: np.ndarray,
    lowest: np.float32,
    highest: np.float32,
    qmin: int,
    qmax: int,
    symmetric: bool,
    count: int = DEFAULT_MSE_CANDIDATES,
) -> tuple[np.float32, np.float32]:
    """The range whose grid, as onnxruntime derives it, gives the histogram the least squared
    quantization error among `mse_candidates` (the first of equal minima: the smallest scale).

    The range is the chosen grid's own ends, [s (qmin - zp), s (qmax - zp)], from which onnxruntime
    computes that scale and zero point back (symmetric: [-t, t] with t the grid's half-width)."""
    scales, zero_points = mse_candidates(float(lowest), float(highest), qmin, qmax, symmetric, count)
    if scales[-1] <= 0 or lowest == highest:  # a single value: minmax's range
        return np.float32(min(float(lowest), 0.0)), np.float32(max(float(highest), 0.0))
    errors = mse_errors(hist, edges, scales, zero_points, qmin, qmax)
    k, z = np.unravel_index(int(np.argmin(errors)), errors.shape)
    s, zp = scales[k], zero_points[z]
    if symmetric:
        top = s * (qmax - qmin) / 2
        return np.float32(-top), np.float32(top)
    return np.float32(s * (qmin - zp)), np.float32(s * (qmax - zp))


# --- the calibrator ---------------------------------------------------------------------------------


# Activations onnxruntime's quantizers treat as part of the node before them: quantized only where
# their input already is, folded into that node where the Q/DQ range can do the clipping
# (QDQRemovableActivation), and their input given their output's range (adjust_tensor_ranges).
# Calibration, per-layer sensitivity and the float fallback all follow this one set.
FOLDED_ACTIVATIONS = frozenset({"Clip", "Relu"})

# Ops whose first output holds exactly the values of their first input, only rearranged: its
# range and histogram are the input's, so they are measured once.
SAME_VALUES_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity"})


def same_values_aliases(model: Any, calibrated: set[str]) -> dict[str, str]:
    """tensor -> the calibrated tensor it rearranges (through any chain of SAME_VALUES_OPS)."""
    alias: dict[str, str] = {}
    for node in model.graph.node:  # topological order: a chain resolves to its first tensor
        if node.op_type in SAME_VALUES_OPS and node.domain in ("", "ai.onnx") and node.input and node.output:
            source, out = node.input[0], node.output[0]
            if source in calibrated and out in calibrated:
                alias[out] = alias.get(source, source)
    return alias


def replaced_ranges(
    model: Any,
    op_types: Sequence[str],
    nodes_to_quantize: Sequence[str] = (),
    nodes_to_exclude: Sequence[str] = (),
) -> tuple[tuple[str, str], ...]:
    """(input, output) of each Clip/Relu whose input range onnxruntime's quantizers replace by its
    output's (`BaseQuantizer.adjust_tensor_ranges`: the node is quantized and is its input's only
    consumer). Measuring those inputs is wasted work: on EfficientNet-Lite1 they are the Conv outputs
    before each ReLU6, ~47% of all calibrated values."""
    consumers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    include, exclude = set(nodes_to_quantize), set(nodes_to_exclude)
    return tuple(
        (node.input[0], node.output[0])
        for node in model.graph.node
        if node.op_type in FOLDED_ACTIVATIONS
        and node.op_type in op_types
        and (not include or node.name in include)
        and node.name not in exclude
        and node.input
        and node.output
        and consumers.get(node.input[0]) == 1
    )


def _min_name(tensor: str) -> str:
    return f"{tensor}::qconvert_min"


def _max_name(tensor: str) -> str:
    return f"{tensor}::qconvert_max"


class StreamingCalibrator:
    """Runs the model on one batch at a time and folds each batch into per-tensor statistics.

    Its state (`state_nbytes`) is fixed when it is built: it does not depend on how many samples
    are fed."""

    def __init__(
        self, model_path: Path, settings: CalibrationSettings, workdir: Path, external_data: bool = False
    ) -> None:
        import onnx
        import onnxruntime as ort
        from onnxruntime.quantization.calibrate import CalibraterBase

        self.settings = settings
        base = CalibraterBase(
            Path(model_path), op_types_to_calibrate=list(settings.op_types) if settings.op_types else None
        )
        model = base.model  # shape-inferred, as onnxruntime's calibrators see it
        selected, _ = base.select_tensors_to_calibrate(model)
        self.tensors = sorted(selected)
        self._alias = same_values_aliases(model, selected)
        for tensor, source in settings.replaced:
            if tensor in selected and source in selected:
                self._alias[tensor] = self._alias.get(source, source)
        self._measured = [t for t in self.tensors if t not in self._alias]
        graph_inputs = {i.name for i in model.graph.input}
        self._fed = [t for t in self._measured if t in graph_inputs]  # read from the feeds, not the session
        if settings.method == "minmax":
            self._ranges: dict[str, list[np.ndarray]] = {}
            self._outputs = self._add_reductions(model)
        else:
            fine = _next_pow2(FINE_OVERSAMPLING * settings.bins)
            self._histograms = {t: RunningHistogram(fine, settings.absolute) for t in self._measured}
            # entropy and percentile count every value (onnxruntime's rules); mse a per-sample share
            self._per_sample = settings.mse_values_per_sample if settings.method == "mse" else 0
            if settings.method == "mse":  # min/max in the graph, and only the strided values out
                self._reductions = self._add_reductions(model)
                self._outputs = self._reductions + self._add_samples(model, self._per_sample)
            else:
                self._outputs = self._expose_tensors(model, graph_inputs)
        path = workdir / "streaming_calibration.onnx"
        onnx.save(model, str(path), save_as_external_data=external_data)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # as onnxruntime
        # A memory pattern pre-plans one block per run and keeps adding blocks over the first runs
        # (~2.5x the activations of a batch on a transformer); without it, peak memory stays at one
        # batch and runs are no slower.
        options.enable_mem_pattern = False
        # onnxruntime's threads wait for work without spinning: between runs the histograms are
        # counted on every core (`calibrate_streaming`), which spinning threads would slow down (and
        # on a busy machine they take time from every other process as well)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._input_names = [i.name for i in self._session.get_inputs()]
        fixed = [i.shape[0] for i in self._session.get_inputs() if i.shape and isinstance(i.shape[0], int)]
        self.fixed_batch: int | None = fixed[0] if fixed and fixed[0] > 0 else None
        log.info(
            "streaming %s calibration of %d tensors (%d measured, the others rearrange them)",
            settings.method,
            len(self.tensors),
            len(self._measured),
        )

    def _add_reductions(self, model: Any) -> list[str]:
        """ReduceMin/ReduceMax over every element of each measured tensor, as graph outputs, each
        placed right after the node that makes the tensor (it is still in cache there: ~10% faster
        than reducing at the end of the graph)."""
        from onnx import helper

        types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.value_info}
        types.update({vi.name: vi.type.tensor_type.elem_type for vi in model.graph.input})
        types.update({vi.name: vi.type.tensor_type.elem_type for vi in model.graph.output})
        reductions: dict[str, list[Any]] = {}
        outputs = []
        for tensor in self._measured:
            for op, name in (("ReduceMin", _min_name(tensor)), ("ReduceMax", _max_name(tensor))):
                node = helper.make_node(op, [tensor], [name], keepdims=1, name=name)
                reductions.setdefault(tensor, []).append(node)
                model.graph.output.append(helper.make_tensor_value_info(name, types[tensor], None))
                outputs.append(name)
        ordered = [n for i in model.graph.input for n in reductions.pop(i.name, [])]
        for node in model.graph.node:
            ordered.append(node)
            ordered += [n for out in node.output for n in reductions.pop(out, [])]
        ordered += [n for rest in reductions.values() for n in rest]
        del model.graph.node[:]
        model.graph.node.extend(ordered)
        return outputs

    def _add_samples(self, model: Any, per_sample: int) -> list[str]:
        """Per measured tensor, a graph output holding every k-th value of each sample (Reshape to
        (N, -1), Slice with step k; k from the inferred shape, the smallest leaving at most
        `per_sample` values), placed right after the node that makes the tensor. A tensor whose
        per-sample size is unknown is output whole and strided after the run."""
        from onnx import TensorProto, helper, numpy_helper

        shapes = {
            vi.name: vi.type.tensor_type.shape
            for vi in [*model.graph.value_info, *model.graph.input, *model.graph.output]
        }
        added: dict[str, list[Any]] = {}
        outputs = []
        for tensor in self._measured:
            shape = shapes.get(tensor)
            dims = [d.dim_value if d.HasField("dim_value") else 0 for d in shape.dim[1:]] if shape else []
            size = int(np.prod(dims)) if dims and all(dims) else 0
            if size == 0:
                name = tensor
            else:
                stride = -(-size // per_sample)
                name = f"{tensor}::qconvert_sample"
                consts = {
                    "shape": np.array([0, -1], np.int64),
                    "starts": np.array([0], np.int64),
                    "ends": np.array([size], np.int64),
                    "axes": np.array([1], np.int64),
                    "steps": np.array([stride], np.int64),
                }
                for key, value in consts.items():
                    model.graph.initializer.append(numpy_helper.from_array(value, f"{name}::{key}"))
                flat = f"{name}::flat"
                added[tensor] = [
                    helper.make_node("Reshape", [tensor, f"{name}::shape"], [flat], name=flat),
                    helper.make_node(
                        "Slice",
                        [flat, *(f"{name}::{k}" for k in ("starts", "ends", "axes", "steps"))],
                        [name],
                    ),
                ]
                model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
            if name == tensor and tensor not in {o.name for o in model.graph.output}:
                model.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
            outputs.append(name)
        ordered = [n for i in model.graph.input for n in added.pop(i.name, [])]
        for node in model.graph.node:
            ordered.append(node)
            ordered += [n for out in node.output for n in added.pop(out, [])]
        del model.graph.node[:]
        model.graph.node.extend(ordered)
        return outputs

    def _expose_tensors(self, model: Any, graph_inputs: set[str]) -> list[str]:
        """Make every calibrated tensor the graph computes a graph output."""
        value_infos = {vi.name: vi for vi in model.graph.value_info}
        existing = {o.name for o in model.graph.output}
        outputs = [t for t in self._measured if t not in graph_inputs]
        for tensor in outputs:
            if tensor not in existing:
                model.graph.output.append(value_infos[tensor])
        return outputs

    def add_batch(self, feeds: Mapping[str, np.ndarray], pool: Executor | None = None) -> None:
        """Run one batch and fold it in; nothing of the batch is kept. `pool`: the threads that
        count the histograms, one tensor each at a time (None: this thread)."""
        try:
            values = self._session.run(self._outputs, {n: feeds[n] for n in self._input_names})
        except Exception as e:
            raise CalibrationError(
                f"running the model on a calibration batch failed: {type(e).__name__}: {e}"
            ) from e
        if self.settings.method == "minmax":
            self._fold_ranges(values)
            return
        jobs: list[tuple[str, np.ndarray, tuple[Any, Any] | None]] = []
        if self.settings.method == "mse":
            extremes, samples = values[: len(self._reductions)], values[len(self._reductions) :]
            for i, tensor in enumerate(self._measured):
                span = (extremes[2 * i].reshape(()), extremes[2 * i + 1].reshape(()))
                jobs.append((tensor, samples[i], span))
        else:
            jobs += [(tensor, feeds[tensor], None) for tensor in self._fed]
            jobs += [(tensor, value, None) for tensor, value in zip(self._outputs, values, strict=True)]
        jobs.sort(key=lambda job: -job[1].size)  # the largest first, so the threads finish together

        def count(job: tuple[str, np.ndarray, tuple[Any, Any] | None]) -> None:
            tensor, value, span = job
            self._histograms[tensor].add(value, tensor, self._per_sample, span)

        for _ in map(count, jobs) if pool is None else pool.map(count, jobs):
            pass  # (raises the first job's error)

    def _fold_ranges(self, values: Sequence[np.ndarray]) -> None:
        for i, tensor in enumerate(self._measured):
            lo, hi = values[2 * i].reshape(1), values[2 * i + 1].reshape(1)
            old = self._ranges.get(tensor)
            self._ranges[tensor] = [lo, hi] if old is None else [np.fmin(old[0], lo), np.fmax(old[1], hi)]

    def state_nbytes(self) -> int:
        """Bytes of running statistics held: the same whatever the number of samples fed."""
        if self.settings.method == "minmax":
            return sum(a.nbytes for pair in self._ranges.values() for a in pair)
        return sum(h.nbytes for h in self._histograms.values())

    def result(self) -> Any:
        """onnxruntime's TensorsData for the ranges, ready for its quantizers."""
        from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

        method = getattr(CalibrationMethod, ORT_METHODS[self.settings.method])
        if self.settings.method == "minmax":
            if not self._ranges:
                raise CalibrationError("calibration saw no batches: the calibration data is empty.")
            measured = {t: self._minmax_range(*self._ranges[t]) for t in self._measured}
        else:
            measured = {t: self._histogram_range(self._histograms[t]) for t in self._measured}
        data = {t: TensorData(**measured[self._alias.get(t, t)]) for t in self.tensors}
        return TensorsData(method, data)

    def _minmax_range(self, lo: np.ndarray, hi: np.ndarray) -> dict[str, np.ndarray]:
        if self.settings.is_symmetric:
            top = np.fmax(np.abs(lo), np.abs(hi))
            return {"lowest": -top, "highest": top}
        return {"lowest": lo, "highest": hi}

    def _histogram_range(self, h: RunningHistogram) -> dict[str, np.ndarray]:
        if h.exponent is None:  # the tensor never held a value: onnxruntime's range for it is [0, 0]
            zero = np.array(0, dtype=np.float32)
            return {"lowest": zero, "highest": zero}
        s = self.settings
        if s.method == "mse":
            hist, edges = h.data_histogram()
            qmin, qmax = activation_qrange(s.activation_type, s.grid_symmetric)
            lo, hi = mse_range(
                hist, edges, h.lowest, h.highest, qmin, qmax, s.grid_symmetric, s.mse_candidates
            )
            edges32 = edges.astype(np.float32)
            return {"lowest": np.array(lo), "highest": np.array(hi), "hist": hist, "hist_edges": edges32}
        hist, edges = h.rebinned(s.bins)
        if s.method == "percentile":
            lo, hi = percentile_range(hist, edges, h.lowest, h.highest, s.percentile, s.is_symmetric)
        else:
            lo, hi = entropy_range(hist, edges, h.lowest, h.highest, s.num_quantized_bins)
        return {"lowest": np.array(lo), "highest": np.array(hi), "hist": hist, "hist_edges": edges}


def ranges_only(tensors_data: Any) -> Any:
    """The same TensorsData with only each tensor's range (no histograms): what the int8
    quantizers and TensorRT's table read, and small to write."""
    from onnxruntime.quantization.calibrate import TensorData, TensorsData

    return TensorsData(
        tensors_data.calibration_method,
        {k: TensorData(lowest=v.lowest, highest=v.highest) for k, v in tensors_data.items()},
    )


def calibrate_streaming(
    model_path: Path,
    data: Dataset,
    settings: CalibrationSettings,
    on_batch: Callable[[int, int], None] | None = None,
    external_data: bool = False,
) -> Any:
    """Ranges of `model_path`'s tensors over `data`, as onnxruntime's TensorsData.

    `on_batch(samples_done, samples_total)` is called after each batch."""
    if len(data) == 0:
        raise CalibrationError("calibration needs data: the calibration set holds no samples.")
    with tempfile.TemporaryDirectory(prefix="qconvert-calib-") as tmp:
        calibrator = StreamingCalibrator(Path(model_path), settings, Path(tmp), external_data)
        size = calibrator.fixed_batch or settings.batch_size
        used = _usable_samples(len(data), calibrator.fixed_batch)
        usable = data if used == len(data) else data.subset(slice(0, used))
        done = 0
        # the histograms are counted by one thread per core (numpy's loops release the GIL), each
        # tensor by one of them; onnxruntime's threads are idle meanwhile
        with ThreadPoolExecutor(_cores(), thread_name_prefix="qconvert-calibration") as pool:
            for batch in usable.batches(size):
                calibrator.add_batch(batch, pool)
                done += len(next(iter(batch.values())))
                if on_batch is not None:
                    on_batch(done, used)
        return calibrator.result()


def _cores() -> int:
    """The cores this process may run on."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


def _usable_samples(count: int, fixed_batch: int | None) -> int:
    """All samples, or for a model with a fixed batch size the whole batches of them."""
    if fixed_batch is None or count % fixed_batch == 0:
        return count
    used = count - count % fixed_batch
    if used == 0:
        raise CalibrationError(
            f"the model takes batches of exactly {fixed_batch} samples (its batch axis is fixed) and the "
            f"calibration data has {count}. Give at least {fixed_batch} samples, or export the model with a "
            "dynamic batch axis."
        )
    log.warning(
        "the model's batch axis is fixed to %d: calibrating on %d of %d samples", fixed_batch, used, count
    )
    return used
