"""`qconvert benchmark`: real sessions, real timings, real child processes for peak memory.

Measured figures vary from run to run, so the tests check what must hold of any measurement
(p50 <= p90, throughput = batch / p50, memory above the baseline, sizes equal to the files) and
the slower-than flag on a model that is slower by construction (the same graph padded with 400
Neg nodes), in both directions.
"""

from __future__ import annotations

import itertools
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import QUICKSTART_OUT, cli, save_npz
from onnx import helper

from qconvert.artifacts import onnx_size
from qconvert.benchmark import benchmark_models, slower_flag
from qconvert.settings import BenchmarkConfig

PADDING = 400  # Neg nodes appended to the padded model (an even number: the outputs are unchanged)


def qconvert(*args: str) -> tuple[int, str]:
    return cli(*args)


@pytest.fixture(scope="module")
def out_dir(quickstart: tuple[subprocess.CompletedProcess[str], Path]) -> Path:
    proc, cwd = quickstart
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return cwd / QUICKSTART_OUT


@pytest.fixture(scope="module")
def padded(out_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """reference.onnx with PADDING Neg nodes after its output: same results, more work per run."""
    model = onnx.load(str(out_dir / "reference.onnx"))
    out = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [f"{o}_unpadded" if o == out else o for o in node.output]
    names = [f"{out}_unpadded", *(f"{out}_neg{i}" for i in range(1, PADDING)), out]
    model.graph.node.extend(helper.make_node("Neg", [a], [b]) for a, b in itertools.pairwise(names))
    path = tmp_path_factory.mktemp("padded") / "padded.onnx"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def read(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def check_figures(result: dict[str, Any], batch: int) -> None:
    """What any honest measurement satisfies."""
    for m in result["models"]:
        lat = m["latency"]
        assert 0 < lat["p50_ms"] <= lat["p90_ms"], m
        assert lat["runs"] == result["repeats"]
        assert m["throughput_samples_per_s"] == pytest.approx(batch / (lat["p50_ms"] / 1000), rel=1e-9)
        assert m["size_bytes"] == onnx_size(Path(m["path"]))
        assert m["peak_memory_bytes"] > 0, m
        assert m["peak_rss_bytes"] == result["memory_baseline_rss_bytes"] + m["peak_memory_bytes"]
        assert m["batch"] == batch
    first, second = result["models"][:2]
    assert (result["slower"] is not None) == (first["latency"]["p50_ms"] > second["latency"]["p50_ms"])


# --- an OUT_DIR alone: model.onnx against reference.onnx ------------------------------------


@pytest.mark.slow
def test_out_dir_compares_the_quantized_model_with_its_fp32_reference(out_dir: Path, tmp_path: Path) -> None:
    report = tmp_path / "bench.json"

    code, text = qconvert("benchmark", str(out_dir), "--repeats", "50", "--json", str(report))

    assert code == 0, text
    result = read(report)
    labels = [m["label"] for m in result["models"]]
    assert labels == [str(out_dir / "model.onnx"), str(out_dir / "reference.onnx")]
    for label in labels:
        assert label in text
    assert [m["precision"] for m in result["models"]] == ["int8 (Q/DQ)", "fp32"]
    check_figures(result, batch=1)
    assert result["inputs"] == "random" and result["input_shapes"] == {"input": [1, 1, 8, 8]}
    # the output says how each figure was measured, and which inputs were used
    assert "inputs: random inputs (seed 0" in text
    assert "peak memory: peak RSS" in text and "minus that of a baseline child" in text
    assert "interleaved" in text
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        assert "TensorrtExecutionProvider is not installed here" in text
        assert {m["provider"] for m in result["models"]} == {"CPUExecutionProvider"}
    if result["slower"]:
        assert "slower: the quantized model is slower than fp32 on CPUExecutionProvider" in text
    else:
        assert "is not slower than" in text


@pytest.mark.slow
def test_data_and_batch(out_dir: Path, tmp_path: Path) -> None:
    data = save_npz(tmp_path / "inputs.npz", input=(3, 1, 8, 8))
    report = tmp_path / "bench.json"

    code, text = qconvert(
        "benchmark",
        str(out_dir / "model.onnx"),
        "--data",
        str(data),
        "--batch",
        "4",
        "--repeats",
        "20",
        "--threads",
        "1",
        "--json",
        str(report),
    )

    assert code == 0, text
    result = read(report)
    assert result["inputs"] == "data" and result["input_shapes"] == {"input": [4, 1, 8, 8]}
    assert result["threads"] == 1
    assert "the first 3 sample(s) of --data" in text
    assert "--data has 3 sample(s), fewer than --batch 4: samples are repeated" in text
    (model,) = result["models"]  # a file alone is measured alone
    assert model["latency"]["p50_ms"] <= model["latency"]["p90_ms"]
    assert model["throughput_samples_per_s"] == pytest.approx(4000 / model["latency"]["p50_ms"], rel=1e-9)
    assert model["peak_memory_bytes"] > 0
    assert result["slower"] is None


# --- the slower-than flag, on a model that is slower by construction -------------------------


@pytest.mark.slow
def test_a_slower_model_is_flagged_and_a_faster_one_is_not(out_dir: Path, padded: Path) -> None:
    reference = out_dir / "reference.onnx"
    # the padding changes nothing but the work: same outputs
    feeds = {"input": np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)}
    same = [ort.InferenceSession(str(p)).run(None, feeds)[0] for p in (reference, padded)]
    np.testing.assert_array_equal(*same)

    code, text = qconvert("benchmark", str(padded), "--vs", str(reference), "--repeats", "30")
    assert code == 0, text
    assert f"slower: {padded} is slower than {reference} on CPUExecutionProvider" in text

    slow, fast = benchmark_models(BenchmarkConfig(padded, vs=reference, repeats=30, memory=False)).models
    assert slow.latency.p50_ms > fast.latency.p50_ms
    flag = slower_flag(slow, fast)
    assert flag is not None and f"{slow.latency.p50_ms / fast.latency.p50_ms:.2f}x" in flag
    assert slower_flag(fast, slow) is None

    code, text = qconvert("benchmark", str(reference), "--vs", str(padded), "--repeats", "30")
    assert code == 0, text
    assert "slower:" not in text
    assert f"{reference} is not slower than {padded}" in text


# --- bad input: exit 2, a message, no traceback ---------------------------------------------


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["nowhere/model.onnx"], ["MODEL nowhere/model.onnx: no such file or folder"]),
        (["{out}", "--vs", "missing.onnx"], ["--vs missing.onnx: no such file or folder"]),
        (["{tmp}"], ["no qconvert.json here"]),
        (["{tmp}/notes.txt"], ["not an .onnx file"]),
        (["{out}/model.onnx", "--batch", "0"], ["--batch"]),
        (["{out}/model.onnx", "--data", "{tmp}/none.npz"], ["--data", "none.npz: no such file"]),
    ],
)
@pytest.mark.slow
def test_bad_input_exits_2_without_a_traceback(
    args: list[str], needles: list[str], out_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    code, text = qconvert("benchmark", *(a.format(out=out_dir, tmp=tmp_path) for a in args))
    assert code == 2, text
    for needle in needles:
        assert needle.format(tmp=tmp_path) in text, text


@pytest.mark.slow
def test_an_existing_json_file_is_kept_without_force(out_dir: Path, tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    report.write_text("keep me")

    code, text = qconvert("benchmark", str(out_dir / "model.onnx"), "--json", str(report), "--repeats", "5")
    assert code == 2, text
    assert "--json" in text and "Pass --force" in text
    assert report.read_text() == "keep me"

    code, text = qconvert(
        "benchmark", str(out_dir / "model.onnx"), "--json", str(report), "--repeats", "5", "--force"
    )
    assert code == 0, text
    assert read(report)["models"][0]["latency"]["runs"] == 5
