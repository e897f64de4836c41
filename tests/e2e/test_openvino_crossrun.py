"""A second, independent runtime: the int8 artifacts for `cpu` and `openvino` load and run in
OpenVINO's own runtime (the `openvino` package, not onnxruntime's OpenVINO provider) and agree with
the onnxruntime run that validated them, on the built-in held-out digits.

Which onnxruntime run that is differs by target: the `cpu` artifact was validated on the CPU
provider's own int8 kernels (its target hardware is this CPU), the `openvino` artifact on the graph's
exact Q/DQ arithmetic (the OpenVINO provider is not in this onnxruntime). Measured on the 2-core
AVX2 (no VNNI) development machine, OpenVINO 2026.4 against onnxruntime 1.32: top-1 agreement 100%
for both; cosine mean/worst 1.000000/0.99995 (cpu) and 0.99997/0.99875 (openvino).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qconvert.calibrate import Dataset
from qconvert.pipeline import RunResult, export
from qconvert.quantize import QUANTIZERS
from qconvert.settings import RunConfig
from qconvert.sources import zoo_root
from qconvert.targets import TARGETS

ov = pytest.importorskip("openvino")

# Thresholds, with margin under what was measured (100% agreement, cosine worst >= 0.9987).
# OpenVINO's CPU plugin runs float layers in bf16 by default on CPUs with AMX/AVX512_BF16; the
# cross-run compares fp32 with fp32, so the hint is pinned on every CPU.
F32 = {"INFERENCE_PRECISION_HINT": "f32"}
MIN_TOP1_AGREEMENT = 0.99  # 600 samples: up to 6 changed predictions
MIN_COSINE_MEAN = 0.9995
MIN_COSINE_WORST = 0.99
MAX_ACCURACY_GAP = 0.005  # 3 of 600 samples
INT8 = {"u8", "i8"}
TARGETS_RUN = ("cpu", "openvino")
# The cpu target may keep its QOperator form where that measures faster. OpenVINO 2026.4 cannot load
# that form (it has no com.microsoft QGemm, and its QLinearConv import rejects per-channel weight
# scales), so the cross-run pins the Q/DQ form, the one both runtimes read.
PINNED = {"cpu": (("format", "qdq"),)}


@pytest.fixture(scope="module")
def heldout() -> dict[str, np.ndarray]:
    data = np.load(zoo_root() / "calibration" / "digits_heldout.npz")
    return {"input": data["input"], "labels": data["labels"]}


@pytest.fixture(scope="module")
def core() -> object:
    return ov.Core()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RunResult]:
    """`qconvert export --bits 8 --target cpu|openvino` on the built-in model."""
    out = tmp_path_factory.mktemp("crossrun")
    runs = {
        name: export(
            RunConfig(target=name, target_options=PINNED.get(name, ()), out_dir=out / name, latency_repeats=5)
        )
        for name in TARGETS_RUN
    }
    assert all(runs.values())
    return runs


def run_openvino(core: object, model: Path, x: np.ndarray) -> tuple[np.ndarray, Counter[tuple[str, str]]]:
    """Logits from OpenVINO's CPU plugin, and (layer type, runtime precision) counts of the compiled model."""
    compiled = core.compile_model(str(model), "CPU", F32)  # type: ignore[attr-defined]
    assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    logits = np.concatenate([compiled(x[i : i + 64])[0] for i in range(0, len(x), 64)])
    layers: Counter[tuple[str, str]] = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layers[(info["layerType"].astype(str), info["runtimePrecision"].astype(str))] += 1
    return logits, layers


def run_onnxruntime(model: Path, x: np.ndarray, exact_qdq: bool) -> np.ndarray:
    options = ort.SessionOptions()
    if exact_qdq:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    cosine = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {
        "top1": float(np.mean(a.argmax(1) == b.argmax(1))),
        "cosine_mean": float(cosine.mean()),
        "cosine_worst": float(cosine.min()),
    }


def compute_layers(layers: Counter[tuple[str, str]]) -> dict[tuple[str, str], int]:
    return {k: v for k, v in layers.items() if k[0] in ("Convolution", "FullyConnected")}


@pytest.mark.parametrize("name", TARGETS_RUN)
def test_int8_artifact_agrees_across_runtimes(
    name: str, artifacts: dict[str, RunResult], core: object, heldout: dict[str, np.ndarray]
) -> None:
    result = artifacts[name]
    model, x = result.out_dir / "model.onnx", heldout["input"]
    ov_logits, _ = run_openvino(core, model, x)
    # the onnxruntime run the pipeline validated with
    assert result.report["validation_exact_qdq"] is (name == "openvino")
    ort_logits = run_onnxruntime(model, x, exact_qdq=result.report["validation_exact_qdq"])

    measured = agreement(ov_logits, ort_logits)
    assert measured["top1"] >= MIN_TOP1_AGREEMENT, measured
    assert measured["cosine_mean"] >= MIN_COSINE_MEAN, measured
    assert measured["cosine_worst"] >= MIN_COSINE_WORST, measured
    ov_accuracy = float(np.mean(ov_logits.argmax(1) == heldout["labels"]))
    assert abs(ov_accuracy - result.report["accuracy"]["model"]) <= MAX_ACCURACY_GAP
    assert not np.array_equal(ov_logits, run_onnxruntime(result.out_dir / "reference.onnx", x, False))


@pytest.mark.parametrize("name", TARGETS_RUN)
def test_openvino_runs_the_artifact_in_int8(
    name: str, artifacts: dict[str, RunResult], core: object, heldout: dict[str, np.ndarray]
) -> None:
    """Every convolution and fully connected layer of both artifacts runs in int8 in OpenVINO."""
    result = artifacts[name]
    _, layers = run_openvino(core, result.out_dir / "model.onnx", heldout["input"][:1])
    compute = compute_layers(layers)
    assert sum(compute.values()) == 5  # the digits CNN: three Convs, two Linear layers
    assert {precision for _, precision in compute} <= INT8, compute


def test_openvino_runs_unsigned_asymmetric_weights_in_float(
    artifacts: dict[str, RunResult], core: object, heldout: dict[str, np.ndarray], tmp_path: Path
) -> None:
    """The other side of the `openvino` weight rule: the same model with u8 asymmetric per-tensor
    weights (the QNN layout) loses int8 convolutions in OpenVINO."""
    result = artifacts["openvino"]
    data = np.load(zoo_root() / "calibration" / "digits_calib.npz")
    qnn = TARGETS.get("qnn")
    qc = qnn.bind().quantize_config(8, "static", "minmax")
    dest = QUANTIZERS.get("static")(
        result.out_dir / "reference.onnx",
        tmp_path / "u8_weights.onnx",
        qc,
        Dataset("calib", {"input": data["input"]}),
    )
    assert onnx.load(str(dest)).graph.node  # a real quantized graph
    _, layers = run_openvino(core, dest, heldout["input"][:1])
    convolutions = {p for (t, p) in compute_layers(layers) if t == "Convolution"}
    assert convolutions and not convolutions & INT8, layers


def test_fp32_reference_agrees_exactly(
    artifacts: dict[str, RunResult], core: object, heldout: dict[str, np.ndarray]
) -> None:
    """The fp32 export reads the same in both runtimes, so the int8 differences above are int8's."""
    result = artifacts["openvino"]
    reference, x = result.out_dir / "reference.onnx", heldout["input"]
    measured = agreement(run_openvino(core, reference, x)[0], run_onnxruntime(reference, x, exact_qdq=False))
    assert measured["top1"] == 1.0
    assert measured["cosine_worst"] > 0.99999
