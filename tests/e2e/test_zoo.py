"""qconvert over a zoo of real architectures (tests/e2e/_zoo.py) and over ONNX files from other
exporters, side by side with plain onnxruntime `quantize_static` on the same fp32 ONNX (qconvert's
own reference.onnx) and the same calibration and held-out inputs.

Each case asserts: the export and quantization succeed (exit 0 or 1: 1 is a FAILED or INCONCLUSIVE
verdict; seeded random-init classifiers rarely meet the default tolerance), the artifact passes
onnx.checker and keeps the model's input/output names, an int8 artifact carries Q/DQ pairs, and
qconvert's agreement with fp32 is no worse than onnxruntime's (`worse_than_onnxruntime`: top-1 and next-token agreement paired,
sample by sample, at 95%; per-pixel agreement within one held-out sample's worth; mean cosine
within 0.002).

The CI part is a few small models at 64x64 with 16 calibration and 16 held-out samples (too few for
any verdict but INCONCLUSIVE or FAILED: the CI part checks conversion and agreement, not verdicts);
the rest is marked `zoo` (deselected by default: `pytest -m zoo` runs it) and is also what
benchmarks/bench_zoo.py runs and tabulates, with 32 calibration samples and as many held-out ones as
qconvert's default tolerance needs to decide a verdict (`heldout_size`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import _zoo

ZOO = (pytest.mark.slow, pytest.mark.zoo)  # the full zoo: `pytest -m zoo`, not in the default run
REPO = Path(__file__).resolve().parents[2]
COSINE_MARGIN = 0.002
TARGETS = (("cpu", 8), ("tensorrt", 8), ("cuda", 16))


def qconvert_export(
    source: str | Path, out: Path, target: str, bits: int, *args: str
) -> tuple[int, dict, str]:
    """THE one place this module invokes qconvert: the CLI in a subprocess (its public interface).
    Returns (exit code, report.json or {}, the CLI's output)."""
    cmd = [sys.executable, "-c", "from qconvert.cli import main; main()", "export", str(source)]
    cmd += ["--target", target, "--bits", str(bits), "--out", str(out), "--force", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=out.parent)
    report = out / "report.json"
    return (
        done.returncode,
        json.loads(report.read_text()) if report.exists() else {},
        done.stdout + done.stderr,
    )


# --- onnxruntime, plain ---------------------------------------------------------------------


def ort_baseline(fp32: Path, dest: Path, target: str, bits: int, calibration: dict[str, np.ndarray]) -> str:
    """Plain onnxruntime on `fp32`: quant_pre_process then quantize_static (QDQ, per-channel; for
    tensorrt symmetric int8, as onnxruntime documents for that provider), or for 16 bits its float16
    converter. Returns "" or why it failed (the artifact is then absent)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if bits == 16:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        try:
            model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
            onnx.save(model, str(dest))
        except Exception as e:
            return f"float16 converter: {type(e).__name__}: {str(e)[:200]}"
        return ""
    pre = dest.with_name(dest.stem + "-pre.onnx")
    here = Path.cwd()
    os.chdir(dest.parent)  # where its symbolic shape inference, when it fails, writes a debug copy
    try:
        quant_pre_process(str(fp32), str(pre))
    except Exception as e:
        return f"quant_pre_process: {type(e).__name__}: {str(e)[:200]}"
    finally:
        os.chdir(here)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            n = len(next(iter(calibration.values())))
            self.feeds = iter([{k: v[i : i + 1] for k, v in calibration.items()} for i in range(n)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    trt = target == "tensorrt"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_static(
                str(pre), str(dest), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QInt8 if trt else QuantType.QUInt8, weight_type=QuantType.QInt8,
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True} if trt else {},
            )  # fmt: skip
        onnx.checker.check_model(str(dest))
        _session(dest)
    except Exception as e:
        dest.unlink(missing_ok=True)
        return f"quantize_static: {type(e).__name__}: {str(e)[:300]}"
    return ""


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The first output of `path` on `feeds`, one sample at a time (batch 1, as exported)."""
    session = _session(path)
    n = len(next(iter(feeds.values())))
    return np.concatenate(
        [session.run(None, {k: v[i : i + 1] for k, v in feeds.items()})[0] for i in range(n)]
    )


def per_sample(reference: np.ndarray, candidate: np.ndarray, compare: str) -> np.ndarray:
    """Each held-out sample's agreement: top1: argmax over the last axis (1 or 0); pixels: the share
    of pixels whose argmax over axis 1 agrees; next_token: argmax at the last position (1 or 0);
    cosine: the sample's cosine."""
    ref, cand = reference.astype(np.float64), candidate.astype(np.float64)
    if compare == "top1":
        return (ref.argmax(-1) == cand.argmax(-1)) * 1.0
    if compare == "pixels":
        return (ref.argmax(1) == cand.argmax(1)).reshape(len(ref), -1).mean(1)
    if compare == "next_token":
        return (ref[:, -1].argmax(-1) == cand[:, -1].argmax(-1)) * 1.0
    a, b = ref.reshape(len(ref), -1), cand.reshape(len(cand), -1)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def agreement(reference: np.ndarray, candidate: np.ndarray, compare: str) -> float:
    """The mean of `per_sample`."""
    return float(per_sample(reference, candidate, compare).mean())


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    noise = np.sum((reference.astype(np.float64) - candidate) ** 2)
    return float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / max(noise, 1e-30)))


# --- one case ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one (model, target) run gave, for the assertions and the benchmark's table."""

    model: str
    target: str
    bits: int
    rc: int
    status: str
    metric: str
    qconvert: float
    ort: float | None
    ort_error: str
    sqnr_db: float
    ort_sqnr_db: float | None
    latency_ratio: float | None
    size_ratio: float | None
    ort_size_ratio: float | None
    output: str
    check: str = ""  # the check that decided qconvert's verdict: "metric measured [low, high] (bound)"
    # top1 / next_token: held-out samples only qconvert's artifact agrees on, and only onnxruntime's
    discordant: tuple[int, int] | None = None
    heldout: int = 0
    seconds: float = 0.0


def run_case(
    source: str | Path,
    name: str,
    inputs: dict[str, tuple[tuple[int, ...], str]],
    compare: str,
    calibration: dict[str, np.ndarray],
    heldout: dict[str, np.ndarray],
    target: str,
    bits: int,
    work: Path,
    extra: tuple[str, ...] = (),
) -> Outcome:
    """Export `source` with qconvert for (target, bits), then plain onnxruntime on its reference.onnx;
    score both against fp32 on `heldout`."""
    work.mkdir(parents=True, exist_ok=True)
    np.savez(work / "calibration.npz", **calibration)
    np.savez(work / "heldout.npz", **heldout)
    shapes = [f"{k}:{'x'.join(map(str, (1, *shape)))}:{dtype}" for k, (shape, dtype) in inputs.items()]
    args = ["--calibration", str(work / "calibration.npz"), "--data", str(work / "heldout.npz")]
    if not str(source).endswith(".onnx"):
        args += [a for s in shapes for a in ("--input", s)]
    out = work / f"{name}-{target}-{bits}"
    rc, report, text = qconvert_export(source, out, target, bits, *args, *extra)
    # exit 1 is FAILED (out of tolerance) or INCONCLUSIVE (too few held-out samples to tell)
    shown = {"passed": "PASSED", "failed": "FAILED", "inconclusive": "INCONCLUSIVE"}
    status = shown.get(report.get("verdict", ""), "FAILED") if rc in (0, 1) else f"ERROR (exit {rc})"
    if rc in (0, 1) and not (out / "model.onnx").exists():
        rc, status = -1, f"ERROR (exit {rc}, no model.onnx written)"
    n_heldout = len(next(iter(heldout.values())))
    if rc not in (0, 1):
        return Outcome(name, target, bits, rc, status, compare, float("nan"), None, "", float("nan"),
                       None, None, None, None, text[-3000:], heldout=n_heldout)  # fmt: skip
    fp32 = out / "reference.onnx"
    reference, mine = run(fp32, heldout), run(out / "model.onnx", heldout)
    baseline = work / f"ort-{target}-{bits}.onnx"
    error = ort_baseline(fp32, baseline, target, bits, calibration)
    theirs = None if error else run(baseline, heldout)
    size = report.get("size", {})
    discordant = None
    if theirs is not None and compare in ("top1", "next_token"):
        mine_ok, theirs_ok = (
            per_sample(reference, mine, compare) > 0,
            per_sample(reference, theirs, compare) > 0,
        )
        discordant = (int(np.sum(mine_ok & ~theirs_ok)), int(np.sum(theirs_ok & ~mine_ok)))
    return Outcome(
        model=name, target=target, bits=bits, rc=rc, status=status, metric=compare,
        qconvert=agreement(reference, mine, compare),
        ort=None if theirs is None else agreement(reference, theirs, compare), ort_error=error,
        sqnr_db=sqnr_db(reference, mine), ort_sqnr_db=None if theirs is None else sqnr_db(reference, theirs),
        latency_ratio=report.get("latency", {}).get("ratio_p50"), size_ratio=size.get("ratio"),
        ort_size_ratio=None if theirs is None else baseline.stat().st_size / max(1, fp32.stat().st_size),
        output=text[-3000:], check=deciding_check(report), heldout=n_heldout, discordant=discordant,
    )  # fmt: skip


def deciding_check(report: dict) -> str:
    """The check that decided the verdict, as "metric measured [low, high] (bound)": the first failed
    one, else the first inconclusive one; on a PASSED verdict the agreement check where there is one
    (the closest to its bound on these models), else the first."""
    checks = report.get("validation", {}).get("checks", [])
    verdict = report.get("verdict", "")
    agreement = [c for c in checks if c.get("metric", "").endswith("agreement")]
    chosen = next(
        (c for c in checks if verdict != "passed" and c.get("verdict") == verdict),
        (agreement or checks or [None])[0],
    )
    if chosen is None:
        return ""
    interval, metric = chosen.get("interval") or {}, chosen["metric"]
    span = f" [{_figure(metric, interval['low'])}, {_figure(metric, interval['high'])}]" if interval else ""
    return f"{metric} {_figure(metric, chosen['measured'])}{span} ({chosen['bound']})"


def _figure(metric: str, value: float) -> str:
    return f"{100 * value:.1f}%" if metric.endswith(("agreement", "accuracy")) else f"{value:.4g}"


def check(outcome: Outcome, out: Path, names: tuple[list[str], list[str]] | None = None) -> None:
    """The assertions every case makes (see the module docstring)."""
    import onnx

    assert outcome.rc in (0, 1), f"{outcome.model} -> {outcome.target}: {outcome.status}\n{outcome.output}"
    model = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(model)
    if names is not None:
        init = {t.name for t in model.graph.initializer}
        got = (
            [i.name for i in model.graph.input if i.name not in init],
            [o.name for o in model.graph.output],
        )
        assert got == names, f"input/output names changed: {names} -> {got}"
    if outcome.bits == 8:
        ops = {n.op_type for n in model.graph.node}
        static = {"QuantizeLinear", "DequantizeLinear"} <= ops or "QLinearConv" in ops
        dynamic = "DynamicQuantizeLinear" in ops  # a transformer's cpu default (recover.defaults)
        assert static or dynamic, sorted(ops)
    if outcome.ort is not None:
        assert not worse_than_onnxruntime(outcome), (
            f"{outcome.model} -> {outcome.target}: qconvert {outcome.metric} {outcome.qconvert:.4f}, "
            f"onnxruntime {outcome.ort:.4f} (samples only one of them agrees on: {outcome.discordant})"
        )


def worse_than_onnxruntime(outcome: Outcome) -> bool:
    """Whether qconvert's agreement is below onnxruntime's on the same inputs. A 0/1 agreement per
    sample (top1, next_token) is compared paired: worse when the 95% Agresti-Min interval of the
    difference (qconvert's validation uses it for the accuracy drop) lies below zero, so the two
    are not told apart by a few flips of near-tied logits at chance level. A mean over many values
    per sample (pixels, cosine) is worse beyond a margin: one held-out sample's worth for pixels,
    COSINE_MARGIN for cosine."""
    from qconvert.validation.intervals import paired_difference

    assert outcome.ort is not None
    if outcome.discordant is not None:
        b, c = outcome.discordant
        return paired_difference(b, c, outcome.heldout, 0.95).high < 0
    margin = COSINE_MARGIN if outcome.metric == "cosine" else 1.0 / max(1, outcome.heldout)
    return outcome.qconvert < outcome.ort - margin


# --- the zoo ----------------------------------------------------------------------------------

CALIBRATION_CI, HELDOUT_CI = 16, 16
CALIBRATION_SLOW = 32
CI_CASES = {("resnet18", "cpu"), ("mobilenet_v2", "tensorrt"), ("bert_tiny", "cpu")}


def _zoo_params() -> list[Any]:
    params = []
    for entry in _zoo.ZOO:
        for target, bits in TARGETS:
            marks = [] if (entry.name, target) in CI_CASES else [pytest.mark.slow, pytest.mark.zoo]
            params.append(pytest.param(entry.name, target, bits, marks=marks, id=f"{entry.name}-{target}"))
    return params


def zoo_case(
    name: str,
    target: str,
    bits: int,
    work: Path,
    fast: bool,
    heldout: int | None = None,
    extra: tuple[str, ...] = (),
) -> tuple[Outcome, Path]:
    """Run one zoo entry through qconvert (with `extra` arguments) and plain onnxruntime (the
    benchmark calls this too), on `heldout` held-out samples where given."""
    entry = _zoo.BY_NAME[name]
    work.mkdir(parents=True, exist_ok=True)
    n_cal, n_val = (CALIBRATION_CI, HELDOUT_CI) if fast else (CALIBRATION_SLOW, heldout_size(entry, bits))
    n_val = heldout or n_val
    calibration, heldout = _zoo.samples(entry, n_cal, seed=1), _zoo.samples(entry, n_val, seed=2)
    source = _zoo.factory_file(entry, work)
    start = time.perf_counter()
    outcome = run_case(
        f"{source}:model", name, entry.inputs, entry.compare, calibration, heldout, target, bits, work, extra
    )
    return replace(outcome, seconds=time.perf_counter() - start), work / f"{name}-{target}-{bits}"


def heldout_size(entry: _zoo.Entry, bits: int) -> int:
    """The held-out samples on which a perfect candidate could pass qconvert's default tolerance for
    `bits` (validation.samples_to_pass at 95%), so a verdict is decided, not INCONCLUSIVE for want of
    data: 125 for a classifier at 8 bits (top-1 agreement >= 97%), 765 at 16 bits (>= 99.5%), 72
    otherwise (no NaN/Inf). Class-score checks apply to [N, C] outputs, the classifiers here."""
    from qconvert.tolerance import Tolerance
    from qconvert.validation import samples_to_pass

    need = samples_to_pass(Tolerance.layered(bits), 0.95, labels=False, class_scores=entry.compare == "top1")
    return need[0] if need else 32


@pytest.mark.parametrize(("name", "target", "bits"), _zoo_params())
def test_zoo(name: str, target: str, bits: int, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    reason = _zoo.available(_zoo.BY_NAME[name])
    if reason:
        pytest.skip(reason)
    fast = request.node.get_closest_marker("zoo") is None
    outcome, out = zoo_case(name, target, bits, tmp_path, fast)
    check(outcome, out, (list(_zoo.BY_NAME[name].inputs), list(_zoo.BY_NAME[name].outputs)))


# --- ONNX files from other exporters ----------------------------------------------------------


def torchscript_opset11(path: Path) -> tuple[list[str], list[str]]:
    """A ResNet-style CNN exported the way older tools wrote ONNX: torch's TorchScript exporter at
    opset 11, dynamic batch and spatial axes, no value_info, TensorFlow-style names."""
    import torch

    torch.manual_seed(0)
    block = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 32, 3, padding=1, groups=32), torch.nn.Conv2d(32, 64, 1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 10),
    )  # fmt: skip
    entry = _zoo.Entry("ts", "", lambda: block, {"x": ((3, 32, 32), "float32")}, ("y",), "top1")
    _zoo._settle_batchnorm(block, entry)
    names = (["serving_default_input.1"], ["StatefulPartitionedCall/logits"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            block, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False, opset_version=11,
            input_names=names[0], output_names=names[1],
            dynamic_axes={names[0][0]: {0: "N", 2: "H", 3: "W"}, names[1][0]: {0: "N"}},
        )  # fmt: skip
    return names


def vendor_graph(path: Path) -> tuple[list[str], list[str]]:
    """An opset-12 graph written with onnx.helper, as a converter from another framework writes it:
    dynamic H and W, a feature map added to its own transpose (H and W must then be equal, which
    onnxruntime's symbolic shape inference cannot prove without merging symbols: it stops with
    "Incomplete symbolic shape inference"), a GlobalAveragePool head; no value_info."""
    import onnx
    import onnx.helper as h
    from onnx import TensorProto, numpy_helper

    rng = np.random.default_rng(0)

    def w(*shape: int) -> onnx.TensorProto:
        scale = (2 / np.prod(shape[1:])) ** 0.5
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32))

    inits = [w(16, 3, 3, 3), w(16, 16, 3, 3), w(10, 16)]
    for t, name in zip(inits, ("conv1/kernel", "conv2/kernel", "dense/kernel"), strict=True):
        t.name = name
    inits.append(numpy_helper.from_array(np.zeros(16, np.float32), "conv1/bias"))
    inits.append(numpy_helper.from_array(rng.standard_normal(10).astype(np.float32) * 0.1, "dense/bias"))
    nodes = [
        h.make_node(
            "Conv", ["image:0", "conv1/kernel", "conv1/bias"], ["c1"], pads=[1, 1, 1, 1], name="conv1/Conv2D"
        ),
        h.make_node("Relu", ["c1"], ["r1"], name="conv1/Relu"),
        h.make_node("Transpose", ["r1"], ["r1t"], perm=[0, 1, 3, 2], name="sym/transpose"),
        h.make_node("Add", ["r1", "r1t"], ["s"], name="sym/add"),
        h.make_node(
            "Conv", ["s", "conv2/kernel"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv2/Conv2D"
        ),
        h.make_node("Relu", ["c2"], ["r2"], name="conv2/Relu"),
        h.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        h.make_node("Flatten", ["p"], ["f"], name="flatten"),
        h.make_node(
            "Gemm", ["f", "dense/kernel", "dense/bias"], ["Identity:0"], transB=1, name="dense/MatMul"
        ),
    ]
    graph = h.make_graph(
        nodes, "tf2onnx", [h.make_tensor_value_info("image:0", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [h.make_tensor_value_info("Identity:0", TensorProto.FLOAT, ["N", 10])], inits,
    )  # fmt: skip
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 12)], producer_name="tf2onnx")
    model.ir_version = 7
    onnx.save(model, str(path))
    return ["image:0"], ["Identity:0"]


FOREIGN = {"torchscript_opset11": torchscript_opset11, "vendor_opset12": vendor_graph}


def foreign_case(
    kind: str, target: str, bits: int, work: Path, fast: bool = True
) -> tuple[Outcome, Path, tuple[list[str], list[str]]]:
    """One foreign file through qconvert and plain onnxruntime: 16 calibration and 16 held-out
    samples, or without `fast` (the benchmark) as many held-out samples as a verdict needs."""
    work.mkdir(parents=True, exist_ok=True)
    names = FOREIGN[kind](work / f"{kind}.onnx")
    entry = _zoo.Entry(kind, "", lambda: None, {names[0][0]: ((3, 32, 32), "float32")}, (), "top1")
    n_val = 16 if fast else heldout_size(entry, bits)
    calibration, heldout = _zoo.samples(entry, 16, seed=1), _zoo.samples(entry, n_val, seed=2)
    outcome = run_case(
        work / f"{kind}.onnx", kind, entry.inputs, "top1", calibration, heldout, target, bits, work
    )
    return outcome, work / f"{kind}-{target}-{bits}", names


@pytest.mark.parametrize("kind", sorted(FOREIGN))
@pytest.mark.parametrize(("target", "bits"), [("cpu", 8), pytest.param("tensorrt", 8, marks=ZOO),
                                              pytest.param("cuda", 16, marks=ZOO)])  # fmt: skip
def test_foreign_onnx(kind: str, target: str, bits: int, tmp_path: Path) -> None:
    """qconvert quantizes files plain onnxruntime cannot: opset 11 (its quantizer writes per-channel
    DequantizeLinear with an `axis` that opset 11 lacks) and a graph its symbolic shape inference
    gives up on; the user's odd input/output names survive."""
    outcome, out, names = foreign_case(kind, target, bits, tmp_path)
    check(outcome, out, names)
    if bits == 8:
        assert outcome.ort is None, (
            f"plain onnxruntime was expected to fail on {kind}, and gave {outcome.ort}"
        )
        expected = "quantize_static" if kind == "torchscript_opset11" else "quant_pre_process"
        assert outcome.ort_error.startswith(expected), outcome.ort_error
        assert ("DequantizeLinear" in outcome.ort_error) == (kind == "torchscript_opset11"), outcome.ort_error
        assert outcome.qconvert >= 0.8, outcome


def test_unconvertible_opset_names_the_node(tmp_path: Path) -> None:
    """A graph onnx's version converter cannot take to opset 13 (opset-8 BatchNormalization with
    spatial=0, which later opsets dropped): exit 2, naming the op, the node and what to try."""
    import onnx
    import onnx.helper as h
    from onnx import TensorProto, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    ones = numpy_helper.from_array(np.ones((4, 8, 8), np.float32), "ones")
    zeros = numpy_helper.from_array(np.zeros((4, 8, 8), np.float32), "zeros")
    graph = h.make_graph(
        [h.make_node("Conv", ["x", "w"], ["c"], name="conv"),
         h.make_node("BatchNormalization", ["c", "ones", "zeros", "zeros", "ones"], ["y"], spatial=0,
                     name="bn/FusedBatchNorm")],
        "old", [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [h.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w, ones, zeros],
    )  # fmt: skip
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 8)])
    model.ir_version = 7
    onnx.save(model, str(tmp_path / "old.onnx"))
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(0).random((8, 3, 8, 8), dtype=np.float32))
    cal = str(tmp_path / "cal.npz")
    rc, _, text = qconvert_export(tmp_path / "old.onnx", tmp_path / "out", "cpu", 8, "--calibration", cal)
    flat = " ".join(text.split())
    assert rc == 2, text
    assert "opset 8" in flat and "BatchNormalization" in flat and "bn/FusedBatchNorm" in flat, text
    assert "--opset" in flat, text


def test_worse_than_onnxruntime_needs_a_paired_difference_or_a_margin() -> None:
    """The zoo's comparison with plain onnxruntime: noise at chance level (efficientnet_b0 on tensorrt
    agreed on 3 of 125 held-out samples against onnxruntime's 6) is not a loss; 12 samples only
    onnxruntime agrees on, and none the other way, is."""

    def outcome(metric: str, mine: float, theirs: float, discordant: tuple[int, int] | None) -> Outcome:
        return Outcome("m", "cpu", 8, 0, "", metric, mine, theirs, "", 0.0, 0.0, None, None, None, "",
                       heldout=125, discordant=discordant)  # fmt: skip

    assert not worse_than_onnxruntime(outcome("top1", 3 / 125, 6 / 125, (2, 5)))
    assert worse_than_onnxruntime(outcome("top1", 100 / 125, 112 / 125, (0, 12)))
    assert not worse_than_onnxruntime(outcome("top1", 112 / 125, 100 / 125, (12, 0)))
    assert not worse_than_onnxruntime(outcome("pixels", 0.80, 0.805, None))  # within 1/125
    assert worse_than_onnxruntime(outcome("pixels", 0.78, 0.80, None))
    assert worse_than_onnxruntime(outcome("cosine", 0.990, 0.995, None))
    assert not worse_than_onnxruntime(outcome("cosine", 0.994, 0.995, None))
