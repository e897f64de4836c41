"""Streaming calibration against onnxruntime's own calibrators, on real exported models.

minmax must give onnxruntime's ranges exactly; entropy and percentile run onnxruntime's threshold
rules on a re-binned running histogram, so their ranges must be close to onnxruntime's and must
not depend on how the data was split into batches. The calibrator's state must not grow with the
number of samples."""

from __future__ import annotations

import functools
import json
import warnings
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort
import pytest
from _models import INPUT_NAME, write_cnn_mlp
from conftest import flat, write_model
from onnxruntime.quantization import CalibrationMethod, QuantFormat, create_calibrator, quantize_static
from typer.testing import CliRunner

from qconvert.calibrate import Dataset, ort_reader, streaming
from qconvert.calibrate.streaming import (
    ONNXRUNTIME_METHODS,
    ORT_METHODS,
    CalibrationSettings,
    RunningHistogram,
    StreamingCalibrator,
    calibrate_streaming,
    replaced_ranges,
    same_values_aliases,
)
from qconvert.cli import app
from qconvert.prepare import prepared_from_onnx
from qconvert.quantize._common import quant_type
from qconvert.quantize.implicit import quantize_implicit_int8
from qconvert.quantize.static import quantize_static_int8, static_op_types
from qconvert.types import QuantizeConfig

MLP_FEATURES = 12


@functools.cache
def _mlp_onnx_bytes() -> bytes:
    """Linear -> LayerNorm -> GELU -> Linear -> Softmax: signed activations, a bounded output."""
    import torch

    torch.manual_seed(3)
    model = torch.nn.Sequential(
        torch.nn.Linear(MLP_FEATURES, 24),
        torch.nn.LayerNorm(24),
        torch.nn.GELU(),
        torch.nn.Linear(24, 6),
        torch.nn.Softmax(dim=-1),
    ).eval()
    example = torch.zeros(2, MLP_FEATURES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            None,
            dynamo=True,
            opset_version=18,
            input_names=["features"],
            output_names=["probs"],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
            verbose=False,
        )
    return program.model_proto.SerializeToString()


def _heavy_tailed(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Student-t samples: rare large values, so a percentile or entropy cut actually cuts."""
    return np.random.default_rng(seed).standard_t(3, shape).astype(np.float32)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Dataset]]:
    """name -> (prepared fp32 model, calibration data of 40 samples)."""
    work = tmp_path_factory.mktemp("streaming")
    cnn = prepared_from_onnx(write_cnn_mlp(work / "cnn.onnx"), work / "cnn_prepared.onnx")
    (work / "mlp.onnx").write_bytes(_mlp_onnx_bytes())
    mlp = prepared_from_onnx(work / "mlp.onnx", work / "mlp_prepared.onnx")
    return {
        "cnn": (cnn, Dataset("cnn", {INPUT_NAME: _heavy_tailed((40, 1, 8, 8), 0)})),
        "mlp": (mlp, Dataset("mlp", {"features": _heavy_tailed((40, MLP_FEATURES), 1)})),
    }


def _ort_ranges(model: Path, data: Dataset, method: str, tmp: Path, **options: Any) -> Any:
    """onnxruntime's own calibrator on the same tensors, all data in one batch."""
    calibrator = create_calibrator(
        model,
        list(static_op_types()),
        augmented_model_path=str(tmp / "augmented.onnx"),
        calibrate_method=getattr(CalibrationMethod, ORT_METHODS[method]),
        extra_options=options,
    )
    calibrator.collect_data(ort_reader(data, batch_size=len(data)))
    return calibrator.compute_data()


def _ours(
    model: Path, data: Dataset, method: str, batch: int = 7, on_batch: Any = None, **options: Any
) -> Any:
    settings = CalibrationSettings(method=method, op_types=static_op_types(), batch_size=batch, **options)
    return calibrate_streaming(model, data, settings, on_batch)


def _pair(td: Any) -> tuple[float, float]:
    return float(np.ravel(td.lowest)[0]), float(np.ravel(td.highest)[0])


# --- minmax: exactly onnxruntime's ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["cnn", "mlp"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_minmax_ranges_equal_onnxruntime_exactly(
    models: dict[str, tuple[Path, Dataset]], name: str, symmetric: bool, tmp_path: Path
) -> None:
    model, data = models[name]
    theirs = _ort_ranges(model, data, "minmax", tmp_path, symmetric=symmetric)
    ours = _ours(model, data, "minmax", symmetric=symmetric)

    assert set(ours) == set(theirs) and len(ours.data) >= 5
    for tensor in theirs:
        for a, b in zip(ours[tensor].range_value, theirs[tensor].range_value, strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b, err_msg=tensor)


# --- entropy and percentile: close to onnxruntime's -----------------------------------------------


@pytest.mark.parametrize("name", ["cnn", "mlp"])
@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("entropy", {}),
        ("entropy", {"num_bins": 256}),  # enough bins for the KL search to choose among windows
        ("percentile", {}),
        ("percentile", {"symmetric": False, "percentile": 99.0}),
    ],
)
def test_histogram_ranges_close_to_onnxruntime(
    models: dict[str, tuple[Path, Dataset]], name: str, method: str, options: dict[str, Any], tmp_path: Path
) -> None:
    model, data = models[name]
    theirs = _ort_ranges(model, data, method, tmp_path, **options)
    ours = _ours(model, data, method, **options)

    assert set(ours) == set(theirs)
    full = _ours(model, data, "minmax")
    cut = 0
    for tensor in theirs:
        lo, hi = _pair(theirs[tensor])
        our_lo, our_hi = _pair(ours[tensor])
        # within 2% of onnxruntime's range width
        assert abs(our_lo - lo) <= 0.02 * (hi - lo) and abs(our_hi - hi) <= 0.02 * (hi - lo), tensor
        cut += (lo, hi) != _pair(full[tensor])
    if method == "percentile" and options:  # a 99% cut must cut: the rule is not minmax in disguise
        assert cut > 0


def test_quantized_models_are_the_same_as_onnxruntimes(
    models: dict[str, tuple[Path, Dataset]], tmp_path: Path
) -> None:
    """End to end: qconvert's static int8 (streaming ranges through onnxruntime's quantizer) gives
    the same outputs as onnxruntime's quantize_static, and keeps close to fp32."""
    model, data = models["cnn"]
    held = _heavy_tailed((32, 1, 8, 8), 9)
    fp32 = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: held})[
        0
    ]
    for method in ONNXRUNTIME_METHODS:  # mse is qconvert's own (tests/unit/calibrate/test_mse.py)
        qc = QuantizeConfig(bits=8, mode="static", calibration_method=method)
        ours = quantize_static_int8(model, tmp_path / f"ours-{method}.onnx", qc, data)
        theirs = tmp_path / f"ort-{method}.onnx"
        quantize_static(
            str(model),
            str(theirs),
            ort_reader(data, batch_size=8),
            quant_format=QuantFormat.QDQ,
            per_channel=qc.per_channel,
            activation_type=quant_type(qc.activation_type),
            weight_type=quant_type(qc.weight_type),
            calibrate_method=getattr(CalibrationMethod, ORT_METHODS[method]),
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True, "QuantizeBias": True},
        )
        outs = [
            ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: held})[0]
            for p in (ours, theirs)
        ]
        np.testing.assert_allclose(outs[0], outs[1], atol=1e-6, err_msg=method)
        cosine = float(np.sum(outs[0] * fp32) / (np.linalg.norm(outs[0]) * np.linalg.norm(fp32)))
        assert cosine > 0.99, (method, cosine)
        assert {n.op_type for n in onnx.load(str(ours)).graph.node} >= {"QuantizeLinear", "DequantizeLinear"}


@pytest.mark.parametrize("method", ["minmax", "percentile"])
@pytest.mark.parametrize("exclude_relu", [False, True])
def test_ranges_the_quantizer_replaces_are_not_measured(
    models: dict[str, tuple[Path, Dataset]],
    method: str,
    exclude_relu: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """onnxruntime's quantizer gives a quantized Relu/Clip's input (its only consumer) the Relu's
    output range, so the calibrator does not measure that input: the quantized model must be the
    same, scale for scale, as with every tensor measured; a Relu excluded from quantization keeps
    its input measured."""
    from qconvert.quantize import static

    model, data = models["cnn"]  # Conv -> Relu -> ... -> Gemm -> Relu -> MatMul
    graph = onnx.load(str(model))
    after_conv = next(
        n for n in graph.graph.node if n.op_type == "Relu" and n.input[0] == graph.graph.node[0].output[0]
    )
    exclude = (after_conv.name,) if exclude_relu else ()
    replaced = replaced_ranges(graph, static_op_types(), (), exclude)
    assert len(replaced) == (1 if exclude_relu else 2)
    assert ((after_conv.input[0], after_conv.output[0]) in replaced) is not exclude_relu
    settings = CalibrationSettings(method=method, op_types=static_op_types(), replaced=replaced)
    calibrator = StreamingCalibrator(model, settings, tmp_path)
    assert not {t for t, _ in replaced} & set(calibrator._measured)

    qc = QuantizeConfig(bits=8, mode="static", calibration_method=method, nodes_to_exclude=exclude)
    ours = onnx.load(str(quantize_static_int8(model, tmp_path / "ours.onnx", qc, data)))
    monkeypatch.setattr(static, "replaced_ranges", lambda *_: ())
    full = onnx.load(str(quantize_static_int8(model, tmp_path / "full.onnx", qc, data)))

    assert [(n.op_type, list(n.input)) for n in ours.graph.node] == [
        (n.op_type, list(n.input)) for n in full.graph.node
    ]
    ours_init = {i.name: onnx.numpy_helper.to_array(i) for i in ours.graph.initializer}
    full_init = {i.name: onnx.numpy_helper.to_array(i) for i in full.graph.initializer}
    assert ours_init.keys() == full_init.keys()
    for name, value in full_init.items():
        np.testing.assert_array_equal(ours_init[name], value, err_msg=name)


def test_implicit_table_has_symmetric_ranges(models: dict[str, tuple[Path, Dataset]], tmp_path: Path) -> None:
    model, data = models["mlp"]
    qc = QuantizeConfig(
        bits=8, mode="implicit", calibration_method="percentile", calibration_table="calib.cache"
    )
    quantize_implicit_int8(model, tmp_path / "model.onnx", qc, data)

    table = json.loads((tmp_path / "calib.json").read_text())
    assert len(table) >= 5 and (tmp_path / "calib.cache").stat().st_size > 0
    theirs = _ort_ranges(model, data, "percentile", tmp_path, symmetric=True)
    assert set(theirs) <= set(table)


def test_rearranged_tensors_are_measured_once(
    models: dict[str, tuple[Path, Dataset]], tmp_path: Path
) -> None:
    """A Reshape/Transpose/... output holds its input's values: onnxruntime's own ranges for the two
    are equal, so measuring the input alone loses nothing."""
    model, data = models["cnn"]  # its flatten is a Reshape
    tensors = set(_ours(model, data, "minmax"))
    aliases = same_values_aliases(onnx.load(str(model)), tensors)
    assert aliases
    for method in ("minmax", "percentile"):
        theirs = _ort_ranges(model, data, method, tmp_path)
        for tensor, source in aliases.items():
            assert _pair(theirs[tensor]) == _pair(theirs[source]), (method, tensor, source)


# --- batches do not matter ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_result_is_the_same_in_one_batch_or_many(
    models: dict[str, tuple[Path, Dataset]], method: str
) -> None:
    model, data = models["mlp"]
    one = _ours(model, data, method, batch=len(data), num_bins=256)
    many = _ours(model, data, method, batch=3, num_bins=256)
    for tensor in one:
        assert _pair(one[tensor]) == _pair(many[tensor]), tensor
        np.testing.assert_array_equal(one[tensor].hist, many[tensor].hist)


@pytest.mark.parametrize("method", ["entropy", "percentile"])
@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_ranges_equal_histograms_fed_whole_tensors(
    models: dict[str, tuple[Path, Dataset]], name: str, method: str, tmp_path: Path
) -> None:
    """The calibrator's ranges and histograms equal those of RunningHistograms fed each batch's
    whole tensors, run here by a plain session with them as outputs, exactly."""
    model, data = models[name]
    settings = CalibrationSettings(method=method, op_types=static_op_types(), batch_size=7)
    ours = calibrate_streaming(model, data, settings)

    calibrator = StreamingCalibrator(model, settings, tmp_path)
    graph = onnx.load(str(model))
    inputs = {i.name for i in graph.graph.input}
    computed = [t for t in calibrator._measured if t not in inputs]
    exposed = onnx.load(str(model))
    exposed.graph.output.extend(
        vi for vi in onnx.shape_inference.infer_shapes(graph).graph.value_info if vi.name in computed
    )
    onnx.save(exposed, str(tmp_path / "exposed.onnx"))
    session = ort.InferenceSession(str(tmp_path / "exposed.onnx"), providers=["CPUExecutionProvider"])
    for batch in data.batches(7):
        values = dict(zip(computed, session.run(computed, batch), strict=True))
        for tensor in calibrator._measured:
            calibrator._histograms[tensor].add(batch[tensor] if tensor in inputs else values[tensor], tensor)
    reference = calibrator.result()

    assert set(ours) == set(reference) and len(set(ours)) >= 5
    for tensor in reference:
        assert _pair(ours[tensor]) == _pair(reference[tensor]), tensor
        np.testing.assert_array_equal(ours[tensor].hist, reference[tensor].hist)


@pytest.mark.parametrize("absolute", [False, True])
def test_running_histogram_widens_exactly(absolute: bool) -> None:
    """Batches of growing range force the grid to widen several times; the counts must equal those
    of the whole set in one go, and re-binned onto numpy's bins they must match np.histogram."""
    rng = np.random.default_rng(5)
    batches = [rng.standard_normal(5000).astype(np.float32) * s for s in (0.01, 0.3, 1.0, 40.0, 2.0)]
    streamed, whole = RunningHistogram(4096, absolute), RunningHistogram(4096, absolute)
    exponents = []
    for b in batches:
        streamed.add(b, "t")
        exponents.append(streamed.exponent)
    everything = np.concatenate(batches)
    whole.add(everything, "t")

    assert len(set(exponents)) >= 3  # it did widen
    np.testing.assert_array_equal(streamed.counts, whole.counts)
    assert streamed.exponent == whole.exponent

    values = np.abs(everything) if absolute else everything
    top = np.abs(everything).max()
    expected, edges = np.histogram(values, 256, **({} if absolute else {"range": (-top, top)}))
    hist, our_edges = streamed.rebinned(256)
    np.testing.assert_array_equal(our_edges, edges.astype(np.float32))
    assert hist.sum() == pytest.approx(len(everything))
    # each bin's count within a few values of numpy's: only counts in boundary fine bins move
    assert np.abs(hist - expected).max() <= 0.01 * expected.max() + 3


@pytest.mark.parametrize("absolute", [False, True])
def test_one_tensor_widening_chunk_by_chunk_counts_exactly(absolute: bool) -> None:
    """Each chunk's extremes are taken as it is counted, so one tensor larger than a chunk whose
    later chunks reach further widens the grid midway; the counts must be those of the final grid
    for every value, computed here directly."""
    rng = np.random.default_rng(7)
    parts = [rng.standard_normal(streaming.CHUNK).astype(np.float32) * s for s in (0.02, 1.0, 30.0)]
    values = np.concatenate([*parts, rng.standard_normal(1000).astype(np.float32)])
    hist = RunningHistogram(2048, absolute)
    hist.add(values.reshape(8, -1), "t")

    assert hist.exponent is not None
    scaled = (np.abs(values) if absolute else values).astype(np.float64) * 2048 / 2.0**hist.exponent
    index = np.floor(scaled).astype(np.int64) + (0 if absolute else 2048)
    np.testing.assert_array_equal(hist.counts, np.bincount(index, minlength=len(hist.counts)))
    assert (hist.lowest, hist.highest) == (values.min(), values.max())
    if absolute:
        assert hist.abs_lowest == np.abs(values).min()


# --- memory and progress --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_state_does_not_grow_with_samples(
    models: dict[str, tuple[Path, Dataset]], method: str, tmp_path: Path
) -> None:
    model = models["cnn"][0]
    calibrator = StreamingCalibrator(
        model, CalibrationSettings(method=method, op_types=static_op_types()), tmp_path
    )
    sizes = []
    for _ in range(6):
        batch = {INPUT_NAME: _heavy_tailed((8, 1, 8, 8), len(sizes))}
        watch = weakref.ref(batch[INPUT_NAME])
        calibrator.add_batch(batch)
        del batch  # numpy arrays hold no cycles: the last reference going frees it
        assert watch() is None  # the batch is not kept
        sizes.append(calibrator.state_nbytes())
    assert sizes[0] > 0 and len(set(sizes)) == 1  # after 8 samples as after 48


def test_progress_is_reported_per_batch(models: dict[str, tuple[Path, Dataset]]) -> None:
    model, data = models["mlp"]
    calls: list[tuple[int, int]] = []
    settings = CalibrationSettings(method="percentile", batch_size=16)
    calibrate_streaming(model, data, settings, on_batch=lambda done, total: calls.append((done, total)))
    assert calls == [(16, 40), (32, 40), (40, 40)]


def test_a_fixed_batch_axis_is_fed_whole_batches(
    models: dict[str, tuple[Path, Dataset]], tmp_path: Path
) -> None:
    from onnxruntime.tools.onnx_model_utils import make_input_shape_fixed

    model, data = models["cnn"]
    fixed = onnx.load(str(model))
    make_input_shape_fixed(fixed.graph, INPUT_NAME, [4, *data.feeds[INPUT_NAME].shape[1:]])
    onnx.save(fixed, str(tmp_path / "fixed.onnx"))
    calls: list[tuple[int, int]] = []
    short = data.subset(slice(0, 10))
    ranges = _ours(tmp_path / "fixed.onnx", short, "minmax", batch=16, on_batch=lambda *a: calls.append(a))
    assert calls == [(4, 8), (8, 8)]  # whole batches of 4; the last 2 samples cannot make one
    expected = _ours(model, short.subset(slice(0, 8)), "minmax")
    assert all(_pair(ranges[t]) == _pair(expected[t]) for t in expected)


# --- errors through the CLI ------------------------------------------------------------------------

OVERFLOWING = """
import torch
from torch import nn


class Overflowing(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.exp(x * 200.0))


def build():
    torch.manual_seed(0)
    return Overflowing()
"""


def test_infinite_activations_are_a_calibration_error(tmp_path: Path) -> None:
    model = write_model(tmp_path / "user", OVERFLOWING)
    np.savez(tmp_path / "calib.npz", x=np.full((10, 4), 3.0, dtype=np.float32))
    result = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"}).invoke(
        app,
        [
            "export",
            f"{model}:build",
            "--input",
            "x:1x4",
            "--calibration",
            str(tmp_path / "calib.npz"),
            "--calibration-method",
            "percentile",
            "-o",
            str(tmp_path / "out"),
        ],
    )
    text = flat(result.output)
    assert result.exit_code == 2, text
    assert "Traceback" not in text
    assert "infinite" in text and "cannot be calibrated" in text
    assert not (tmp_path / "out").exists()
