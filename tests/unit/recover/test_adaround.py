"""AdaRound on a real exported two-conv net, quantized by onnxruntime's quantize_static under the cpu
target's config: learned rounding beats nearest on the output error, the quantized graph holds
exactly the learned integers, and the time budget is kept."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _models import export_small
from onnx import numpy_helper

from qconvert.calibrate import Dataset
from qconvert.quantize.static import quantize_static_int8
from qconvert.recover import RECOVERY, RecoveryInput
from qconvert.recover.adaround import AdaRound
from qconvert.recover.weights import quantize_to_grid, weight_axis, weight_grid
from qconvert.types import QuantizeConfig


def _qc(reduce_range: bool = False, per_channel: bool = True) -> QuantizeConfig:
    from qconvert.targets import TARGETS

    t = TARGETS.get("cpu")
    qc = t.bind().quantize_config(8, "static", "minmax")
    return replace(qc, reduce_range=reduce_range, per_channel=per_channel, format="qdq")


def _net(tmp: Path) -> onnx.ModelProto:
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(4, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 3, padding=1)
    ).eval()
    path = tmp / "net.onnx"
    return export_small(net, (1, 4, 12, 12), path)


def _images(n: int, seed: int) -> np.ndarray:
    """Smooth random images (neighbouring pixels and channels correlated, as in photographs)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4, 12, 12))
    for axis in (2, 3):
        x = (x + np.roll(x, 1, axis) + np.roll(x, 2, axis)) / 3
    x = x + 0.8 * x.mean(axis=1, keepdims=True)
    return x.astype(np.float32)


def _quantize(
    model: onnx.ModelProto, tmp: Path, qc: QuantizeConfig, data: Dataset, tag: str
) -> onnx.ModelProto:
    src, dest = tmp / f"{tag}.onnx", tmp / f"{tag}-q.onnx"
    onnx.save_model(model, str(src))
    quantize_static_int8(src, dest, qc, data)
    return onnx.load(str(dest))


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize(("reduce_range", "per_channel"), [(True, True), (False, False)])
def test_adaround_beats_nearest_and_stores_the_learned_integers(
    tmp_path: Path, reduce_range: bool, per_channel: bool
) -> None:
    """cpu's config with reduce_range (7-bit weights, as on CPUs without VNNI), and per-tensor
    weights: there weight rounding is a large share of the layer's output error."""
    qc = _qc(reduce_range, per_channel)
    fp32 = _net(tmp_path)
    calib, held = Dataset("calib", {"x": _images(64, 1)}), _images(64, 2)
    inp = RecoveryInput(qc, calib, tmp_path)
    seen: list[tuple[int, int]] = []
    step = AdaRound(iterations=200, samples=64, batch=8, refresh_every=1)
    result = step(fp32, None, replace(inp, progress=lambda d, t: seen.append((d, t))))
    assert result.changed and seen[-1] == (2, 2)
    layers = result.details["layers"].values()
    # the share of the output error that weight rounding causes (on top of what the quantized
    # inputs cause with fp32 weights), summed over the layers, falls by more than a third; no layer
    # gets worse than nearest on its calibration inputs
    rounding = {
        kind: sum(layer[f"output_error_{kind}"] - layer["output_error_float_weight"] for layer in layers)
        for kind in ("nearest", "learned")
    }
    assert rounding["learned"] < 0.67 * rounding["nearest"], rounding
    assert all(layer["output_error_learned"] <= layer["output_error_nearest"] for layer in layers)
    assert sum(layer["flipped"] for layer in layers) > 0

    reference = _run(fp32, held)

    def error(model: onnx.ModelProto) -> float:
        return float(np.mean((_run(model, held) - reference) ** 2) / np.mean(reference**2))

    nearest_q = _quantize(fp32, tmp_path, qc, calib, "nearest")
    learned_q = _quantize(result.model, tmp_path, qc, calib, "learned")
    assert error(learned_q) < 0.95 * error(nearest_q), (error(nearest_q), error(learned_q))

    # the quantized graph holds exactly the learned integers, on onnxruntime's own scale
    stored = {t.name: numpy_helper.to_array(t) for t in learned_q.graph.initializer}
    originals = {t.name: numpy_helper.to_array(t) for t in fp32.graph.initializer}
    learned_w = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    for node in fp32.graph.node:
        if node.op_type != "Conv":
            continue
        name, axis = node.input[1], weight_axis(fp32, node, qc)
        grid_before = weight_grid(originals[name], qc, axis)
        grid_after = weight_grid(learned_w[name], qc, axis)
        np.testing.assert_array_equal(grid_after.scale, grid_before.scale)
        integers = quantize_to_grid(learned_w[name], grid_before)
        quantized_name = next(
            k for k in stored if k.startswith(name) and stored[k].shape == integers.shape and k != name
        )
        np.testing.assert_array_equal(stored[quantized_name].astype(np.int64), integers)
        assert np.any(integers != quantize_to_grid(originals[name], grid_before))  # not nearest


def test_budget_stops_early_and_keeps_nearest(tmp_path: Path) -> None:
    fp32 = _net(tmp_path)
    calib = Dataset("calib", {"x": _images(32, 1)})
    step = AdaRound(budget_seconds=1.0, iterations=10**7, samples=32, refresh_every=1)
    began = time.perf_counter()
    result = step(fp32, None, RecoveryInput(_qc(), calib, tmp_path))
    assert time.perf_counter() - began < 1.0 + 5.0  # one candidate quantization past the budget at most
    assert any("time budget" in n for n in result.notes)
    second = [n for n in fp32.graph.node if n.op_type == "Conv"][1].input[1]
    before = next(t for t in fp32.graph.initializer if t.name == second)
    after = next(t for t in result.model.graph.initializer if t.name == second)
    assert before.SerializeToString() == after.SerializeToString()


def test_registered_needs_calibration(tmp_path: Path) -> None:
    from qconvert.errors import CalibrationError

    step = RECOVERY.get("adaround")
    assert step.phase == "pre" and step.budget_seconds == 300.0
    with pytest.raises(CalibrationError, match="--calibration"):
        step(_net(tmp_path), None, RecoveryInput(_qc(), None, tmp_path))
