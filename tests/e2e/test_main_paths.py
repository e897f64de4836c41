"""End to end: the Quickstart command through the installed console script, and the other main
paths through the CLI in-process. Everything measured here is measured for real, so accuracy and
error figures are checked against tolerances, never against exact numbers."""

from __future__ import annotations

import hashlib
import json
import re
import stat
import subprocess
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import QUICKSTART_OUT, TINY_CNN, cli, flat, leftovers, write_model

from qconvert.sources import zoo_root

ZOO = zoo_root()
ARTIFACTS = {"model.onnx", "reference.onnx", "qconvert.json", "report.json", "report.html"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def op_types(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def heldout_accuracy(model: Path, optimize: bool = True) -> float:
    """Top-1 accuracy of an ONNX model on the built-in held-out digits, computed here directly.

    `optimize=False` runs every Q/DQ node as written (no fusion into this CPU's int8 kernels)."""
    data = np.load(ZOO / "calibration" / "digits_heldout.npz")
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": data["input"]})
    return float((logits.argmax(axis=1) == data["labels"]).mean())


def qconvert(*args: str) -> tuple[int, str]:
    return cli(*args)


# --- the Quickstart: qconvert export --bits 8 --target tensorrt ---------------------------


@pytest.fixture(scope="module")
def quickstart_dir(quickstart: tuple[subprocess.CompletedProcess[str], Path]) -> Path:
    proc, cwd = quickstart
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return cwd / QUICKSTART_OUT


@pytest.fixture(scope="module")
def manifest(quickstart_dir: Path) -> dict[str, Any]:
    return read_json(quickstart_dir / "qconvert.json")


@pytest.fixture(scope="module")
def report(quickstart_dir: Path) -> dict[str, Any]:
    return read_json(quickstart_dir / "report.json")


@pytest.mark.slow
def test_quickstart_exits_0_with_a_passed_line(
    quickstart: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    proc, _ = quickstart
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"PASSED \| \d+\.\d s \| qconvert export --bits 8 --target tensorrt", last), last
    assert "artifacts: qconvert-out/digits_cnn-tensorrt-int8" in proc.stdout
    # where TensorRT is absent the verdict says what it really ran on
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        assert "TensorrtExecutionProvider is not installed here" in flat(proc.stderr)


def test_quickstart_writes_the_artifact_folder(
    quickstart: tuple[subprocess.CompletedProcess[str], Path], quickstart_dir: Path
) -> None:
    _, cwd = quickstart
    assert {p.name for p in quickstart_dir.iterdir()} == ARTIFACTS
    assert [p.name for p in (cwd / "qconvert-out").iterdir()] == ["digits_cnn-tensorrt-int8"]
    assert leftovers(cwd / "qconvert-out") == []
    for name in ("model.onnx", "reference.onnx"):
        onnx.checker.check_model(str(quickstart_dir / name), full_check=True)
    # the folder is as readable as any folder the user makes (not the temporary folder's 0700)
    assert stat.S_IMODE(quickstart_dir.stat().st_mode) == stat.S_IMODE(quickstart_dir.parent.stat().st_mode)


def test_quickstart_model_is_tensorrt_qdq(quickstart_dir: Path) -> None:
    ops = op_types(quickstart_dir / "model.onnx")
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= ops
    assert not ops & {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "QLinearConv", "QGemm"}
    model = onnx.load(str(quickstart_dir / "model.onnx"))
    zero_points = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":  # activations: symmetric signed int8
            zp = zero_points[node.input[2]]
            assert zp.dtype == np.int8 and not zp.any(), node.name


def test_manifest_records_the_source_and_its_hash(manifest: dict[str, Any]) -> None:
    source = manifest["source"]
    assert source["kind"] == "builtin"
    assert source["origin"] == "built-in model digits_cnn"
    recorded = {Path(f["path"]).name: f["sha256"] for f in source["files"]}
    assert recorded == {
        "digits_cnn.py": sha256(ZOO / "models" / "digits_cnn.py"),
        "digits_cnn.pt": sha256(ZOO / "models" / "digits_cnn.pt"),
    }
    assert source["inputs"] == [{"name": "input", "dims": [None, 1, 8, 8], "dtype": "float32"}]
    assert source["outputs"] == ["logits"]


def test_manifest_records_every_setting(manifest: dict[str, Any]) -> None:
    settings = manifest["settings"]
    assert settings["bits"] == 8
    assert settings["target"] == "tensorrt"
    assert settings["mode"] is None  # as given: the target's default, which `quantization` records
    assert manifest["quantization"]["mode"] == "static"
    assert settings["opset"] == 18
    assert settings["out_dir"] == str(QUICKSTART_OUT)
    assert manifest["command"] == (
        "qconvert export --bits 8 --target tensorrt --opset 18 -o qconvert-out/digits_cnn-tensorrt-int8"
    )
    assert manifest["export"] == {"exporter": "dynamo", "fallback_reason": None, "opset": 18}
    quant = manifest["quantization"]
    assert (quant["activation_type"], quant["weight_type"]) == ("int8", "int8")
    assert quant["activation_symmetric"] and quant["weight_symmetric"] and quant["per_channel"]
    assert manifest["data"]["calibration"]["samples"] == 200
    assert manifest["data"]["validation"]["samples"] == 600


def test_manifest_lists_providers_in_priority_order(manifest: dict[str, Any]) -> None:
    providers = manifest["providers"]
    assert [p["name"] for p in providers] == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    trt = providers[0]["options"]
    assert trt["trt_int8_enable"] == "True"
    assert trt["trt_fp16_enable"] == "True"
    assert trt["trt_engine_cache_enable"] == "True"
    assert trt["trt_timing_cache_enable"] == "True"
    assert trt["trt_engine_cache_path"] == trt["trt_timing_cache_path"]
    # a Q/DQ graph must never be given a calibration table
    assert not any("calibration_table" in key for key in trt)
    # the dynamic batch axis gets an optimisation profile
    assert trt["trt_profile_min_shapes"] == "input:1x1x8x8"
    assert trt["trt_profile_max_shapes"].startswith("input:")


def test_manifest_records_versions_and_validation(manifest: dict[str, Any], quickstart_dir: Path) -> None:
    versions = manifest["versions"]
    for package in ("torch", "onnx", "onnxruntime", "numpy"):
        assert versions[package] == metadata.version(package)
    assert versions["qconvert"] == manifest["qconvert"] == "0.1.0"
    assert manifest["validation"] == {"passed": True, "verdict": "passed", "confidence": 0.95, "failures": []}
    assert manifest["tolerance"] == [
        "cosine>=0.99",
        "top1_agreement>=0.97",
        "accuracy_drop<=0.01",
        "nonfinite<=0",
    ]
    assert manifest["files"] == {
        name: sha256(quickstart_dir / name)
        for name in ("model.onnx", "reference.onnx", "report.json", "report.html")
    }


def test_report_int8_accuracy_is_within_one_point_of_fp32(
    report: dict[str, Any], quickstart_dir: Path
) -> None:
    accuracy = report["accuracy"]
    assert accuracy["samples"] == 600
    assert accuracy["reference"] > 0.95  # the trained digits model really classifies
    assert accuracy["fp32_onnx"] == pytest.approx(accuracy["reference"], abs=1 / 600)
    assert accuracy["model"] >= accuracy["reference"] - 0.01
    assert accuracy["drop"] == pytest.approx(accuracy["reference"] - accuracy["model"])
    # the figures are what the files on disk really score
    assert heldout_accuracy(quickstart_dir / "reference.onnx") == pytest.approx(
        accuracy["fp32_onnx"], abs=1e-9
    )
    if report["validation_exact_qdq"]:
        assert heldout_accuracy(quickstart_dir / "model.onnx", optimize=False) == pytest.approx(
            accuracy["model"]
        )


def test_report_says_what_this_cpus_own_int8_kernels_score(
    report: dict[str, Any], quickstart_dir: Path
) -> None:
    """Without TensorRT, the verdict is exact Q/DQ arithmetic; the same graph on this CPU's fused
    int8 kernels (which may saturate without VNNI) is measured and reported beside it."""
    if not report["validation_exact_qdq"]:
        pytest.skip("validated on the target's own provider")
    on_cpu = report["on_cpu_kernels"]
    assert on_cpu is not None and on_cpu["samples"] == 600
    measured_here = heldout_accuracy(quickstart_dir / "model.onnx", optimize=True)
    assert on_cpu["accuracy"]["candidate"] == pytest.approx(measured_here)


def test_report_fidelity_size_and_latency(report: dict[str, Any], quickstart_dir: Path) -> None:
    assert report["passed"] is True
    logits = report["validation"]["outputs"]["logits"]
    assert logits["cosine"] >= 0.99
    assert logits["top1_agreement"] >= 0.97
    size = report["size"]
    assert size["ratio"] < 0.5
    assert size["model_bytes"] == (quickstart_dir / "model.onnx").stat().st_size
    assert size["fp32_bytes"] == (quickstart_dir / "reference.onnx").stat().st_size
    latency = report["latency"]
    for which in ("fp32", "model"):
        assert latency[which]["p50_ms"] > 0
    assert latency["ratio_p50"] > 0


# --- an impossible tolerance ---------------------------------------------------------------


@pytest.mark.slow
def test_impossible_tolerance_fails_with_exit_1_and_says_what_would_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "strict"

    code, text = qconvert("export", "--target", "tensorrt", "--tolerance", "cosine>=1.0", "-o", str(out))

    assert code == 1, text
    assert "FAILED |" in text
    # cosine>=1 never holds on a whole interval short of 1: FAILED, with the tolerance its lower end shows
    match = re.search(
        r"logits: cosine = ([0-9.]+) \(95% interval \[([0-9.]+), ([0-9.]+)\], 600 samples\), needs "
        r"cosine>=1 \(would pass with --tolerance 'cosine>=([0-9.]+)'\)",
        text,
    )
    assert match, text
    shown, low, would_pass = float(match[1]), float(match[2]), float(match[4])
    # the artifacts are still written, and record the failure
    manifest = read_json(out / "qconvert.json")
    assert manifest["validation"]["passed"] is False
    (failure,) = manifest["validation"]["failures"]
    assert failure.startswith("logits: cosine") and failure.endswith("FAILED")
    check = next(c for c in read_json(out / "report.json")["validation"]["checks"] if not c["passed"])
    assert (check["metric"], check["bound"]) == ("cosine", "cosine>=1")
    assert 0.99 < check["measured"] < 1.0
    assert shown == pytest.approx(check["measured"], rel=1e-5)
    assert check["verdict"] == "failed" and check["interval"]["high"] < 1.0
    assert low == pytest.approx(check["interval"]["low"], rel=1e-3)
    # the suggested tolerance really would pass: the whole interval lies above it
    assert would_pass <= check["interval"]["low"] < check["measured"]
    assert check["needed"] == f"cosine>={match[4]}"


# --- cpu, dynamic int8 ---------------------------------------------------------------------


@pytest.mark.slow
def test_cpu_dynamic_int8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    code, text = qconvert("export", "--target", "cpu", "--mode", "dynamic")

    assert code == 0, text
    assert "PASSED |" in text
    out = tmp_path / "qconvert-out" / "digits_cnn-cpu-int8-dynamic"
    assert {p.name for p in out.iterdir()} == ARTIFACTS
    ops = op_types(out / "model.onnx")
    # activations are quantized at run time; convolutions and the linear layers run on integers
    assert {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"} <= ops
    assert "QuantizeLinear" not in ops
    report = read_json(out / "report.json")
    assert report["mode"] == "dynamic"
    assert report["accuracy"]["model"] >= report["accuracy"]["reference"] - 0.01
    manifest = read_json(out / "qconvert.json")
    assert manifest["data"]["calibration"] is None  # dynamic int8 calibrates nothing
    assert [p["name"] for p in manifest["providers"]] == ["CPUExecutionProvider"]
    assert manifest["target"]["facts"]["reduce_range"] == (not manifest["target"]["facts"]["vnni"])


# --- a user model with --calibration only --------------------------------------------------


@pytest.mark.slow
def test_user_model_with_calibration_only_validates_on_a_held_out_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_npz: Callable[..., Path]
) -> None:
    monkeypatch.chdir(tmp_path)
    model = write_model(tmp_path / "user", TINY_CNN)
    calib = make_npz("calib.npz", image=(50, 3, 8, 8))
    out = tmp_path / "user-out"

    # a randomly initialised classifier's top-1 can flip on near-ties, so only fidelity is bounded
    code, text = qconvert(
        "export",
        f"{model}:build",
        "--calibration",
        str(calib),
        "--tolerance",
        "top1_agreement>=0.8",
        "-o",
        str(out),
    )

    # 50 calibration samples cannot spare the 72 held-out ones any PASSED verdict takes (the always-on
    # nonfinite check) and keep 64 to calibrate on: 20% are set aside, and the run says up front that
    # the verdict will be INCONCLUSIVE, then is
    assert code == 1, text
    note = (
        "no --data given: 10 of the 50 calibration samples were set aside for validation and not used "
        "for calibration"
    )
    assert note in text
    too_few = (
        "10 held-out samples are too few to pass at all: nonfinite<=0 needs at least 72 at 95% confidence "
        "even if every sample agrees, so the verdict can be INCONCLUSIVE at best; the 50 calibration samples cannot "
        "spare that many (64 or more stay for calibration): pass --data with enough held-out samples"
    )
    assert too_few in text and "INCONCLUSIVE |" in text
    report = read_json(out / "report.json")
    assert note in report["notes"] and too_few in report["notes"]
    assert report["verdict"] == "inconclusive" and report["validation"]["data_limited"]
    assert report["validation"]["samples"] == 10
    assert report["accuracy"] is None  # no labels in the data
    manifest = read_json(out / "qconvert.json")
    assert manifest["data"]["calibration"]["samples"] == 40
    assert manifest["data"]["validation"]["samples"] == 10
    assert "held-out 10 samples" in manifest["data"]["validation"]["origin"]
    assert manifest["source"]["kind"] == "factory"
    assert manifest["source"]["files"] == [{"path": str(model), "sha256": sha256(model)}]
    assert manifest["export"]["exporter"] == "dynamo"
