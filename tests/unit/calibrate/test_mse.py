"""mse calibration: the range whose activation grid gives the least squared quantization error.

The search is checked against a brute-force one over the same histogram and candidates (each
candidate's error integrated numerically, bin by bin, with the real fake-quantization), and on a
real exported layer fed long-tailed inputs: mse picks a tighter range than minmax and the quantized
layer's output error falls."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qconvert.calibrate import Dataset
from qconvert.calibrate.streaming import (
    CalibrationSettings,
    RunningHistogram,
    activation_qrange,
    calibrate_streaming,
    mse_candidates,
    mse_errors,
    mse_range,
)
from qconvert.errors import CalibrationError
from qconvert.quantize.static import quantize_static_int8
from qconvert.targets import TARGETS

FEATURES = 16


def _long_tail(n: int, seed: int, tokens: int = 1) -> np.ndarray:
    """Student-t (3 degrees of freedom) values: a bulk near 0 and rare values far out."""
    shape = (n, FEATURES) if tokens == 1 else (n, tokens, FEATURES)
    return np.random.default_rng(seed).standard_t(3, shape).astype(np.float32)


def _histogram(x: np.ndarray, fine_bins: int) -> tuple[np.ndarray, np.ndarray, RunningHistogram]:
    h = RunningHistogram(fine_bins, absolute=False)
    for part in np.array_split(x.ravel(), 3):
        h.add(part, "x")
    hist, edges = h.data_histogram()
    return hist, edges, h


def _brute_force(
    hist: np.ndarray, edges: np.ndarray, scales: np.ndarray, zps: np.ndarray, qmin: int, qmax: int
) -> np.ndarray:
    """Each candidate's error: every bin's count spread over `points` evenly spaced values, each
    fake-quantized as onnxruntime does (round half to even, clip to [qmin, qmax])."""
    points = 1024
    offsets = (np.arange(points) + 0.5) / points
    values = (edges[:-1, None] + np.diff(edges)[:, None] * offsets[None, :]).ravel()
    weights = np.repeat(hist / points, points)
    out = np.zeros((len(scales), len(zps)))
    for k, s in enumerate(scales):
        for z, zp in enumerate(zps):
            q = np.clip(np.round(values / s) + zp, qmin, qmax)
            out[k, z] = np.sum(weights * ((q - zp) * s - values) ** 2)
    return out


@pytest.mark.parametrize(
    ("activation_type", "symmetric"), [("uint8", False), ("int8", True), ("uint8", True), ("int8", False)]
)
def test_search_equals_brute_force(activation_type: str, symmetric: bool) -> None:
    x = _long_tail(2000, 0)
    if activation_type == "uint8" and not symmetric:
        x = np.maximum(x, -0.7)  # a short left side, as after a leaky activation
    hist, edges, h = _histogram(x, 64)
    qmin, qmax = activation_qrange(activation_type, symmetric)
    count = 48
    scales, zps = mse_candidates(float(h.lowest), float(h.highest), qmin, qmax, symmetric, count)
    if not symmetric:
        zps = zps[:: 8 if activation_type == "uint8" else 4]  # keep the brute force short
    brute = _brute_force(hist, edges, scales, zps, qmin, qmax)
    fast = mse_errors(hist, edges, scales, zps, qmin, qmax)
    np.testing.assert_allclose(fast, brute, rtol=2e-3)
    k, z = np.unravel_index(int(np.argmin(brute)), brute.shape)
    assert np.unravel_index(int(np.argmin(fast)), fast.shape) == (k, z)
    if symmetric:  # the whole search, through mse_range, lands on the same grid
        lo, hi = mse_range(hist, edges, h.lowest, h.highest, qmin, qmax, True, count)
        assert hi == pytest.approx(scales[k] * (qmax - qmin) / 2, rel=1e-6) and lo == -hi
    # the optimum is a real cut, not minmax's grid
    assert k < count - 1


def _cpu_qc(method: str) -> object:
    t = TARGETS.get("cpu")
    qc = t.bind().quantize_config(8, "static", method)
    return replace(qc, reduce_range=False, format="qdq")


def _export_layer(path: Path) -> Path:
    import torch

    torch.manual_seed(0)
    layer = torch.nn.Linear(FEATURES, 8).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            layer,
            (torch.zeros(2, 3, FEATURES),),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "n", 1: "t"}, "y": {0: "n", 1: "t"}},
            opset_version=17,
        )
    return path


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_long_tail_tighter_range_and_lower_output_error(tmp_path: Path) -> None:
    src = _export_layer(tmp_path / "fp32.onnx")
    # 512 x 64 tokens x 16 features: enough values that the far tail is a tiny share of them
    calib, held = Dataset("calib", {"x": _long_tail(512, 1, 64)}), _long_tail(256, 2, 64)

    def ranges(method: str) -> tuple[float, float]:
        settings = CalibrationSettings(method=method, activation_type="uint8")
        data = calibrate_streaming(src, calib, settings)
        lo, hi = data["x"].range_value
        return float(np.ravel(lo)[0]), float(np.ravel(hi)[0])

    minmax, mse = ranges("minmax"), ranges("mse")
    assert minmax[0] < mse[0] < 0 < mse[1] < minmax[1]
    assert mse[1] - mse[0] < 0.8 * (minmax[1] - minmax[0])

    reference = _run(src, held)
    errors = {}
    for method in ("minmax", "mse"):
        dest = tmp_path / f"{method}.onnx"
        quantize_static_int8(src, dest, _cpu_qc(method), calib)  # type: ignore[arg-type]
        errors[method] = float(np.mean((_run(dest, held) - reference) ** 2))
        quantized = onnx.load(str(dest))
        assert any(n.op_type == "QuantizeLinear" for n in quantized.graph.node)
    assert errors["mse"] < 0.9 * errors["minmax"], errors


def test_mse_leaves_a_short_tailed_range_nearly_whole(tmp_path: Path) -> None:
    """Uniform values have no tail to cut: the range stays within a few grid steps of minmax's."""
    x = np.random.default_rng(3).uniform(-1, 1, (4000,)).astype(np.float32)
    hist, edges, h = _histogram(x, 4096)
    lo, hi = mse_range(hist, edges, h.lowest, h.highest, -127, 127, True)
    top = max(-float(h.lowest), float(h.highest))
    assert 0.97 * top <= hi <= top and lo == -hi


def test_all_zero_tensor_and_bad_type() -> None:
    hist, edges, h = _histogram(np.zeros((10, FEATURES), np.float32), 64)
    assert mse_range(hist, edges, h.lowest, h.highest, 0, 255, False) == (0.0, 0.0)
    with pytest.raises(CalibrationError, match="integer activation types"):
        CalibrationSettings(method="mse", activation_type="float16")


def test_strided_counts_do_not_depend_on_batching(tmp_path: Path) -> None:
    """Each sample's values are strided in the graph (1024 per sample, 256 counted), so batches of
    5 or 32 give the same histograms and ranges; min and max still see every value."""
    src = _export_layer(tmp_path / "fp32.onnx")
    x = _long_tail(64, 4, 64)
    calib = Dataset("calib", {"x": x})
    found = []
    for batch in (5, 32):
        settings = CalibrationSettings(method="mse", batch_size=batch, mse_values_per_sample=256)
        data = calibrate_streaming(src, calib, settings)
        found.append({k: (v.range_value, v.hist) for k, v in data.items()})
    assert found[0].keys() == found[1].keys() and {"x", "y"} <= found[0].keys()
    for name in found[0]:
        np.testing.assert_array_equal(found[0][name][1], found[1][name][1])
        assert np.array_equal(found[0][name][0], found[1][name][0])
    assert float(found[0]["x"][1].sum()) == 64 * 256  # strided: a quarter of each sample counted
    lo, hi = found[0]["x"][0]
    assert float(x.min()) <= float(np.ravel(lo)[0]) < 0 < float(np.ravel(hi)[0]) <= float(x.max())


def test_pixel_values_with_saturated_maximum() -> None:
    """Image inputs ((pixel - 127) / 128) put a large count exactly on the maximum 1.0, a power of
    two and so a fine bin's left edge: that count must stay in the histogram, and the range must
    keep the top (clipping the bright pixels would cost far more than any rounding it saves)."""
    rng = np.random.default_rng(5)
    pixels = np.clip(rng.normal(150, 70, 200_000), 0, 255).round()
    x = ((pixels - 127) / 128).astype(np.float32)
    hist, edges, h = _histogram(x, 4096)
    assert hist.sum() == x.size and np.all(np.diff(edges) > 0)
    lo, hi = mse_range(hist, edges, h.lowest, h.highest, 0, 255, False)
    assert hi >= 0.99 and lo <= -0.99

    def empirical(lo: float, hi: float) -> float:
        scale = (hi - lo) / 255
        zp = np.round(-lo / scale)
        q = np.clip(np.round(x / scale) + zp, 0, 255)
        return float(np.mean(((q - zp) * scale - x) ** 2))

    assert empirical(float(lo), float(hi)) <= empirical(float(h.lowest), float(h.highest)) * 1.0001
