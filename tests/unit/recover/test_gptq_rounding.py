"""GPTQ rounding on a real exported conv net (a full conv, a depthwise conv, a 1x1 conv and a Linear),
quantized by onnxruntime's quantize_static under the cpu target's config: the int8 model's output
error on held-out inputs falls, the quantized graph stores exactly the chosen integers on
onnxruntime's own scales, and weights already on their grid, or kept in float, are left alone.
Then the steps after it: bias correction measures against the fp32 weights GPTQ or AdaRound
replaced, so each pair is at least as good as either step alone."""

from __future__ import annotations

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
from qconvert.recover.base import in_run_order
from qconvert.recover.weights import fake_quantize, quantize_to_grid, weight_axis, weight_grid
from qconvert.types import QuantizeConfig


def _qc(reduce_range: bool = False, per_channel: bool = True) -> QuantizeConfig:
    from qconvert.targets import TARGETS

    qc = TARGETS.get("cpu").bind().quantize_config(8, "static", "minmax")
    return replace(qc, reduce_range=reduce_range, per_channel=per_channel, format="qdq")


def _net(tmp: Path) -> onnx.ModelProto:
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(4, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1, groups=16),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 8, 1),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 12 * 12, 10),
    ).eval()
    path = tmp / "net.onnx"
    return export_small(net, (1, 4, 12, 12), path)


def _images(n: int, seed: int) -> np.ndarray:
    """Smooth random images (neighbouring pixels and channels correlated, as in photographs): the
    inputs whose correlations GPTQ uses."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4, 12, 12))
    for axis in (2, 3):
        x = (x + np.roll(x, 1, axis) + np.roll(x, 2, axis)) / 3
    x = x + 0.8 * x.mean(axis=1, keepdims=True) + 0.3
    return x.astype(np.float32)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _quantized(
    model: onnx.ModelProto, tmp: Path, qc: QuantizeConfig, data: Dataset, tag: str
) -> onnx.ModelProto:
    src, dest = tmp / f"{tag}.onnx", tmp / f"{tag}-q.onnx"
    onnx.save_model(model, str(src))
    quantize_static_int8(src, dest, qc, data)
    return onnx.load(str(dest))


def _error(model: onnx.ModelProto, reference: np.ndarray, x: np.ndarray) -> float:
    return float(np.mean((_run(model, x) - reference) ** 2) / np.mean(reference**2))


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.mark.parametrize(("reduce_range", "per_channel"), [(False, True), (True, True), (False, False)])
def test_gptq_beats_nearest_and_stores_its_integers(
    tmp_path: Path, reduce_range: bool, per_channel: bool
) -> None:
    qc = _qc(reduce_range, per_channel)
    fp32 = _net(tmp_path)
    calib, held = Dataset("calib", {"x": _images(48, 1)}), _images(64, 2)
    seen: list[tuple[int, int]] = []
    inp = RecoveryInput(qc, calib, tmp_path, progress=lambda d, t: seen.append((d, t)))
    result = RECOVERY.get("gptq")(fp32, None, inp)
    assert result.changed and seen[-1] == (4, 4), (result.notes, seen)
    assert result.details["output_error_vs_nearest"] < 0.8

    reference = _run(fp32, held)
    nearest_q = _quantized(fp32, tmp_path, qc, calib, "nearest")
    rounded_q = _quantized(result.model, tmp_path, qc, calib, "gptq")
    assert _error(rounded_q, reference, held) < 0.8 * _error(nearest_q, reference, held)

    # the quantized graph holds exactly the chosen integers, on onnxruntime's own scales
    stored, before, after = _weights(rounded_q), _weights(fp32), _weights(result.model)
    flipped = 0
    for node in fp32.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        name, axis = node.input[1], weight_axis(fp32, node, qc)
        grid = weight_grid(before[name], qc, axis)
        np.testing.assert_array_equal(weight_grid(after[name], qc, axis).scale, grid.scale)
        integers = quantize_to_grid(after[name], grid)
        quantized = next(
            k for k in stored if k.startswith(name) and k != name and stored[k].shape == integers.shape
        )
        np.testing.assert_array_equal(stored[quantized].astype(np.int64), integers)
        flipped += int(np.sum(integers != quantize_to_grid(before[name], grid)))
    assert flipped > 0


def test_weights_on_their_grid_and_float_nodes_are_left_alone(tmp_path: Path) -> None:
    qc = _qc()
    fp32 = _net(tmp_path)
    inits = {t.name: t for t in fp32.graph.initializer}
    for node in fp32.graph.node:  # every weight onto its own grid: nothing left to round
        if node.op_type in ("Conv", "Gemm"):
            w = numpy_helper.to_array(inits[node.input[1]])
            grid = weight_grid(w, qc, weight_axis(fp32, node, qc))
            on_grid = (quantize_to_grid(w, grid) * grid.scale).astype(np.float32)
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(on_grid, node.input[1]))
    calib = Dataset("calib", {"x": _images(16, 1)})
    result = RECOVERY.get("gptq")(fp32, None, RecoveryInput(qc, calib, tmp_path))
    assert not result.changed and "nothing changed" in result.notes[-1]
    assert result.model.SerializeToString() == fp32.SerializeToString()

    fresh = _net(tmp_path)
    convs = [n.name for n in fresh.graph.node if n.op_type == "Conv"]
    kept = replace(qc, nodes_to_exclude=(convs[1],))
    result = RECOVERY.get("gptq")(fresh, None, RecoveryInput(kept, calib, tmp_path))
    depthwise = next(n for n in fresh.graph.node if n.name == convs[1]).input[1]
    assert result.changed
    np.testing.assert_array_equal(_weights(result.model)[depthwise], _weights(fresh)[depthwise])


def _weights_quantized(model: onnx.ModelProto, qc: QuantizeConfig) -> onnx.ModelProto:
    """`model` with every Conv/Gemm weight as onnxruntime stores it and float activations: the
    weights' own error, without the activation rounding that is the same for every variant."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    for node in out.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            w = numpy_helper.to_array(inits[node.input[1]])
            stored = fake_quantize(w, qc, weight_axis(out, node, qc))
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(stored, node.input[1]))
    return out


@pytest.mark.parametrize("rounding", ["gptq", "adaround"])
def test_bias_correction_after_rounding_sees_the_rounding_error(tmp_path: Path, rounding: str) -> None:
    """Bias correction named first still runs after the rounding step (pipeline order), and measures
    the rounded weights' error against the fp32 weights they replaced (on-grid weights are not
    error-free): the pair's weight error is below the rounding step's alone, and for GPTQ below
    bias correction's alone too. reduce_range (7-bit weights) makes the rounding error large."""
    qc = _qc(reduce_range=True)
    fp32 = _net(tmp_path)
    calib, held = Dataset("calib", {"x": _images(48, 1)}), _images(64, 2)
    reference = _run(fp32, held)
    steps = {
        "gptq": RECOVERY.get("gptq"),
        "adaround": AdaRound(iterations=150, samples=48, batch=8, refresh_every=1),
        "bias_correction": RECOVERY.get("bias_correction"),
    }
    ordered = in_run_order([steps["bias_correction"], steps[rounding]])
    assert [s.name for s in ordered] == [rounding, "bias_correction"]

    def error(names: list[str]) -> float:
        inp = RecoveryInput(qc, calib, tmp_path)  # a fresh cache per run, as in a run of the stages
        model = fp32
        for step in in_run_order([steps[n] for n in names]):
            result = step(model, None, inp)
            model = result.model
        if names == ["bias_correction", rounding]:
            assert result.changed and result.details["layers"] == 4  # every rounded layer corrected
        return _error(_weights_quantized(model, qc), reference, held)

    alone, both = error([rounding]), error(["bias_correction", rounding])
    assert both < 0.8 * alone, (alone, both)
    if rounding == "gptq":
        assert both <= error(["bias_correction"]), both
