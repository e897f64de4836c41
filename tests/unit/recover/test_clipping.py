"""clip_weights: per-channel weight clipping by MSE, on real exported torch layers quantized by
onnxruntime's quantize_static under the cpu target's config."""

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
from qconvert.recover.clipping import clip_weight
from qconvert.recover.weights import fake_quantize
from qconvert.targets import TARGETS
from qconvert.types import QuantizeConfig


def _qc(reduce_range: bool = False) -> QuantizeConfig:
    t = TARGETS.get("cpu")
    qc = t.bind().quantize_config(8, "static", "minmax")
    return replace(qc, reduce_range=reduce_range, format="qdq")


def _conv_model(tmp: Path, weight: np.ndarray) -> onnx.ModelProto:
    import torch

    conv = torch.nn.Conv2d(weight.shape[1], weight.shape[0], 3, padding=1).eval()
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(weight))
        conv.bias.zero_()
    path = tmp / "conv.onnx"
    return export_small(conv, (1, weight.shape[1], 8, 8), path)


def _outlier_weight(seed: int = 0) -> np.ndarray:
    """Heavy-tailed (Student-t, 4 degrees of freedom) channels of 576 weights: a few far from the
    bulk stretch each channel's grid."""
    rng = np.random.default_rng(seed)
    return (rng.standard_t(4, (8, 64, 3, 3)) * 0.05).astype(np.float32)


def _output_error(model: onnx.ModelProto, reference: onnx.ModelProto, x: np.ndarray) -> float:
    def run(m: onnx.ModelProto) -> np.ndarray:
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": x}
        )[0]

    ref = run(reference)
    return float(np.mean((run(model) - ref) ** 2) / np.mean(ref**2))


def _quantized(model: onnx.ModelProto, tmp: Path, qc: QuantizeConfig, data: Dataset) -> onnx.ModelProto:
    src, dest = tmp / "cand.onnx", tmp / "q.onnx"
    onnx.save_model(model, str(src))
    quantize_static_int8(src, dest, qc, data)
    return onnx.load(str(dest))


@pytest.mark.parametrize("reduce_range", [False, True])
def test_clipping_lowers_weight_and_output_error(tmp_path: Path, reduce_range: bool) -> None:
    qc = _qc(reduce_range)
    fp32 = _conv_model(tmp_path, _outlier_weight())
    rng = np.random.default_rng(1)
    calib = Dataset("calib", {"x": rng.normal(size=(32, 64, 8, 8)).astype(np.float32)})
    held = rng.normal(size=(32, 64, 8, 8)).astype(np.float32)
    step = RECOVERY.get("clip_weights")
    result = step(fp32, None, RecoveryInput(qc, None, tmp_path))
    assert result.changed and result.details["layers"]
    layer = next(iter(result.details["layers"].values()))
    # at 8 bits the gain is modest (1-2% here): MSE clips only where the far tail is thin
    assert layer["weight_error_after"] < 0.995 * layer["weight_error_before"]
    assert 0.9 < layer["min_ratio"] < 1.0
    plain = _output_error(_quantized(fp32, tmp_path, qc, calib), fp32, held)
    clipped = _output_error(_quantized(result.model, tmp_path, qc, calib), fp32, held)
    assert clipped < 0.997 * plain, (plain, clipped)
    # only the outliers moved: every other weight is unchanged
    before = numpy_helper.to_array(fp32.graph.initializer[0])
    after = numpy_helper.to_array(
        next(t for t in result.model.graph.initializer if t.name == fp32.graph.initializer[0].name)
    )
    moved = before != after
    assert 0 < moved.sum() < 0.02 * moved.size
    assert np.all(np.abs(after[moved]) < np.abs(before[moved]))


def test_clip_weight_search_is_the_best_candidate() -> None:
    """The chosen clip per channel has the smallest error of all candidates (brute force)."""
    qc = _qc()
    w = _outlier_weight(2)
    ratios = (0.3, 0.5, 0.7, 0.9)
    _, chosen, _, after = clip_weight(w, qc, 0, ratios)
    for c in range(w.shape[0]):
        errors = {}
        for r in (1.0, *ratios):
            limit = np.float32(np.abs(w[c]).max() * np.float32(r))
            trial = w.copy()
            trial[c] = np.clip(w[c], -limit, limit)
            stored = fake_quantize(trial, qc, 0)
            errors[r] = float(np.sum((stored[c].astype(np.float64) - w[c]) ** 2))
        assert chosen[c] == min(errors, key=lambda r: (errors[r], -r))
        assert after[c] == pytest.approx(errors[chosen[c]], rel=1e-9)


def test_on_grid_weight_changes_nothing(tmp_path: Path) -> None:
    """A weight already on its grid (every value k * max|w| / 127) has no rounding error: a clip can
    only add error, so the graph is left bit for bit as it was."""
    rng = np.random.default_rng(3)
    steps = rng.integers(-126, 127, (8, 64, 3, 3)).astype(np.float32)
    steps[:, 0, 0, 0] = 127
    w = (steps * np.float32(0.01)).astype(np.float32)
    fp32 = _conv_model(tmp_path, w)
    result = RECOVERY.get("clip_weights")(fp32, None, RecoveryInput(_qc(), None, tmp_path))
    assert not result.changed
    assert "nothing changed" in " ".join(result.notes)
    assert result.model.SerializeToString() == fp32.SerializeToString()


def test_graph_without_weights(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = RECOVERY.get("clip_weights")(model, None, RecoveryInput(_qc(), None, tmp_path))
    assert not result.changed and result.notes
