"""Per-layer sensitivity and `--auto` fallback, on real models.

The planted model is an MLP trained here on the built-in digits calibration set, then given an
activation outlier: fc2's busiest output channel is scaled 1000x and fc3 reads that channel 1000x
smaller. The fp32 function is unchanged, but the per-tensor int8 quantization of fc2's output
flattens every other channel to a step or two, so plain int8 fails. The layers that own that tensor
are fc2 (which writes it) and fc3 (which reads it).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import cli, write_model

from qconvert.calibrate import Dataset, ModelInput, load_dataset
from qconvert.fallback import default_budget
from qconvert.prepare import prepared_from_onnx
from qconvert.quantize import QUANTIZERS
from qconvert.sources import zoo_root
from qconvert.targets import TARGETS
from qconvert.validation import compare
from qconvert.validation.sensitivity import analyze

CALIB = zoo_root() / "calibration" / "digits_calib.npz"
HELDOUT = zoo_root() / "calibration" / "digits_heldout.npz"

PLANTED = """
import numpy as np
import torch
from torch import nn


class OutlierMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 48)
        self.fc2 = nn.Linear(48, 48)
        self.fc3 = nn.Linear(48, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, input):
        x = torch.relu(self.fc1(torch.flatten(input, 1)))
        x = torch.relu(self.fc2(x))
        return self.head(torch.relu(self.fc3(x)))


def build():
    torch.manual_seed(0)
    data = np.load({calib!r})
    x, y = torch.from_numpy(data["input"]), torch.from_numpy(data["labels"])
    model = OutlierMLP()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add contention on a busy machine
    try:
        for _ in range(150):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        hidden = torch.relu(model.fc2(torch.relu(model.fc1(torch.flatten(x, 1)))))
        k = int(hidden.mean(0).argmax())
        model.fc2.weight[k] *= 1000.0
        model.fc2.bias[k] *= 1000.0
        model.fc3.weight[:, k] /= 1000.0
    return model.eval()


def example_inputs():
    return (torch.zeros(1, 1, 8, 8),)
"""


def qconvert(*args: str) -> tuple[int, str]:
    return cli(*args)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def gemm_for(model_path: Path, weight: str) -> str:
    """The name of the Gemm node whose weight is the torch parameter `weight` (e.g. fc2.weight)."""
    model = onnx.load(str(model_path))
    return next(n.name for n in model.graph.node if n.op_type == "Gemm" and n.input[1] == weight)


def heldout_accuracy(model: Path) -> float:
    """Top-1 accuracy on the built-in held-out digits, computed here with Q/DQ run as written."""
    data = np.load(HELDOUT)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    (scores,) = session.run(None, {"input": data["input"]})
    return float((scores.argmax(axis=1) == data["labels"]).mean())


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("planted")
    return f"{write_model(folder, PLANTED.format(calib=str(CALIB)))}:build"


def export_planted(source: str, out: Path, *extra: str) -> tuple[int, str]:
    return qconvert(
        "export",
        source,
        "--target",
        "cpu",
        "--target-option",
        "format=qdq",
        "--calibration",
        str(CALIB),
        "--data",
        str(HELDOUT),
        "-o",
        str(out),
        *extra,
    )


@pytest.fixture(scope="module")
def plain_run(planted: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, Path]:
    out = tmp_path_factory.mktemp("plain") / "out"
    code, text = export_planted(planted, out)
    return code, text, out


@pytest.fixture(scope="module")
def auto_run(planted: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, Path]:
    out = tmp_path_factory.mktemp("auto") / "out"
    # no time for the recovery ladder: this run is about the float fallback. (Its last rung, mixed
    # precision, would raise fc3 itself, in a format its measured latency cost decides.)
    code, text = export_planted(planted, out, "--auto", "--auto-seconds", "0")
    return code, text, out


def test_planted_outlier_fails_and_the_ranking_names_its_layers(plain_run: tuple[int, str, Path]) -> None:
    code, text, out = plain_run
    assert code == 1, text
    report = read_json(out / "report.json")
    assert report["passed"] is False
    fc2, fc3 = gemm_for(out / "reference.onnx", "fc2.weight"), gemm_for(out / "reference.onnx", "fc3.weight")
    sens = report["sensitivity"]
    assert sens["available"] is True
    ranking = sens["ranking"]
    assert {r["node"] for r in ranking} == {
        gemm_for(out / "reference.onnx", f"{m}.weight") for m in ("fc1", "fc2", "fc3", "head")
    }
    # the two layers around the outlier tensor are the two worst, far below the others
    assert {r["node"] for r in ranking[:2]} == {fc2, fc3}
    worst_other = min(r["isolated_model_output_sqnr_db"] for r in ranking[2:])
    assert all(r["isolated_model_output_sqnr_db"] < worst_other - 20 for r in ranking[:2])
    # fc2's own output keeps a high SQNR (the outlier carries the tensor's energy); fc3's does not
    by_node = {r["node"]: r for r in ranking}
    assert by_node[fc2]["isolated_sqnr_db"] > 30
    assert by_node[fc3]["isolated_sqnr_db"] < 10
    assert "fallback" not in report
    # the failure message names the worst layers and offers --auto
    assert (
        f"worst layers (only that node quantized, SQNR at the model's outputs): {ranking[0]['node']}" in text
    )
    assert "rerun with --auto" in text
    assert "per-layer sensitivity, worst first" in text


def test_auto_keeps_the_blamed_layer_in_float_and_passes(
    auto_run: tuple[int, str, Path], plain_run: tuple[int, str, Path]
) -> None:
    code, text, out = auto_run
    assert code == 0, text
    report = read_json(out / "report.json")
    fallback = report["fallback"]
    assert fallback["passed"] is True and report["passed"] is True
    fc2, fc3 = gemm_for(out / "reference.onnx", "fc2.weight"), gemm_for(out / "reference.onnx", "fc3.weight")
    kept = fallback["kept_float"]
    assert 1 <= len(kept) <= fallback["budget"] and set(kept) <= {fc2, fc3}
    assert fallback["budget"] == default_budget(len(report["sensitivity"]["ranking"]))
    # model.onnx is that graph: the kept nodes read float inputs and float weights
    model = onnx.load(str(out / "model.onnx"))
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    for node in model.graph.node:
        if node.name in kept:
            assert not set(node.input) & dequantized, node
        elif node.op_type == "Gemm":
            assert node.input[1] in dequantized, node  # every other Gemm stays int8
    assert json.loads((out / "qconvert.json").read_text())["quantization"]["nodes_to_exclude"] == kept
    # measured here, independently of the report: accuracy back within 1 point of fp32
    fp32_acc, int8_acc = heldout_accuracy(out / "reference.onnx"), heldout_accuracy(out / "model.onnx")
    assert int8_acc >= fp32_acc - 0.01, (fp32_acc, int8_acc)
    _, _, plain_out = plain_run
    assert heldout_accuracy(plain_out / "model.onnx") < fp32_acc - 0.3  # the all-int8 graph
    # the cost against the all-int8 graph, measured
    size, latency = fallback["size"], fallback["latency"]
    assert size["model_bytes"] == (out / "model.onnx").stat().st_size
    assert size["all_int8_bytes"] < size["model_bytes"] < report["size"]["fp32_bytes"]
    assert latency["all_int8"]["runs"] == latency["model"]["runs"] > 0
    assert math.isclose(latency["ratio_p50"], latency["model"]["p50_ms"] / latency["all_int8"]["p50_ms"])
    assert f"--auto: {len(kept)} node(s) kept in float to meet the tolerance ({', '.join(kept)})" in text
    assert "PASSED" in text


def test_auto_with_no_budget_fails_and_says_the_budget_was_spent(planted: str, tmp_path: Path) -> None:
    code, text = export_planted(
        planted, tmp_path / "out", "--auto", "--auto-budget", "0", "--auto-seconds", "0"
    )
    assert code == 1, text
    report = read_json(tmp_path / "out" / "report.json")
    assert report["fallback"]["passed"] is False and report["fallback"]["steps"] == []
    assert "--auto failed: the fallback budget is 0 nodes" in text
    assert "FAILED" in text


def test_auto_budget_must_not_be_negative(planted: str, tmp_path: Path) -> None:
    code, text = export_planted(planted, tmp_path / "out", "--auto", "--auto-budget", "-1")
    assert code == 2, text


def test_default_budget() -> None:
    assert [default_budget(n) for n in (0, 1, 4, 5, 40, 41, 400)] == [0, 1, 1, 2, 10, 10, 10]


def test_sensitivity_on_the_digits_model(tmp_path: Path) -> None:
    """One entry per quantized compute node; the last layer's cumulative SQNR is the model's own."""
    from qconvert.onnx_export import onnx_from_torch
    from qconvert.sources import load_source

    loaded = load_source(None, ())
    exported = onnx_from_torch(loaded, 18, tmp_path)
    prepared = prepared_from_onnx(exported.path, tmp_path / "prepared.onnx", external_data=False)
    inputs = [ModelInput("input", (None, 1, 8, 8), "float32")]
    calibration = load_dataset(CALIB, inputs, flag="--calibration")
    heldout = load_dataset(HELDOUT, inputs, flag="--data")
    target = TARGETS.get("tensorrt")
    qc = target.bind().quantize_config(8, "static", "minmax")

    def quantize(exclude: tuple[str, ...], dest: Path) -> Path:
        return QUANTIZERS.get("static")(prepared, dest, replace(qc, nodes_to_exclude=exclude), calibration)

    quantized = quantize((), tmp_path / "int8.onnx")
    sens = analyze(prepared, quantized, heldout, quantize, tmp_path / "sens", isolated=8, samples=64)

    q_model = onnx.load(str(quantized))
    compute = [n.name for n in q_model.graph.node if n.op_type in ("Conv", "Gemm")]
    relus = [n.name for n in q_model.graph.node if n.op_type == "Relu"]
    assert len(compute) == 5 and len(relus) == 4  # tensorrt: symmetric, so the Relus stay
    assert sorted(s.node for s in sens.layers) == sorted(compute + relus)
    assert sens.samples == 64 and sens.unmapped == ()
    for layer in sens.layers:
        assert math.isfinite(layer.cumulative_db) and 15 < layer.cumulative_db < 80, layer
        if layer.op_type == "Relu":  # never quantized on its own: no isolated figure
            assert layer.isolated_db is None
        else:
            assert layer.isolated_db is not None and math.isfinite(layer.isolated_db), layer
    # ranked: isolated figures first, worst model-output SQNR first
    measured = [s.isolated_model_output_db for s in sens.layers if s.isolated_model_output_db is not None]
    assert measured == sorted(measured) and len(measured) == len(compute)
    assert all(s.isolated_db is None for s in sens.layers[len(compute) :])
    # the last layer writes the model's output: its cumulative SQNR is the whole model's, computed
    # here with metrics.compare on the same 64 samples; alone it loses no more than with the rest
    last = next(s for s in sens.layers if s.tensor == "logits")
    feeds = {"input": heldout.feeds["input"][:64]}
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    outs = [
        ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        for p in (prepared, quantized)
    ]
    assert math.isclose(last.cumulative_db, compare(outs[0], outs[1])["sqnr_db"], abs_tol=1e-6)
    assert last.isolated_db is not None and last.cumulative_db <= last.isolated_db
    assert last.isolated_db == last.isolated_model_output_db  # its output is the model's output


def test_sensitivity_is_not_available_for_dynamic_mode(tmp_path: Path) -> None:
    code, text = qconvert(
        "export", "--target", "cpu", "--mode", "dynamic", "--auto", "-o", str(tmp_path / "o")
    )
    assert code == 0, text
    report = read_json(tmp_path / "o" / "report.json")
    assert report["sensitivity"]["available"] is False
    assert report["fallback"] == {"available": False, "reason": report["sensitivity"]["reason"]}
    assert "per-layer sensitivity is not available: dynamic mode" in text
    assert "--auto cannot keep layers in float either" in text


def test_sensitivity_skips_nodes_with_integer_outputs(tmp_path: Path) -> None:
    """A Shape (integer output) fed by a dequantized tensor has no SQNR: it is left out, not a crash."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Shape", ["r"], ["s"], name="shape"),
        helper.make_node("Reshape", ["r", "s"], ["r2"], name="reshape"),
        helper.make_node("MatMul", ["r2", "w2"], ["y"], name="mm2"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    src = tmp_path / "fp32.onnx"
    onnx.save(model, src)
    prepared = prepared_from_onnx(src, tmp_path / "prepared.onnx", external_data=False)
    data = Dataset("test", {"x": rng.standard_normal((64, 8)).astype(np.float32)})
    qc = TARGETS.get("tensorrt").bind().quantize_config(8, "static", "minmax")

    def quantize(exclude: tuple[str, ...], dest: Path) -> Path:
        return QUANTIZERS.get("static")(prepared, dest, replace(qc, nodes_to_exclude=exclude), data)

    quantized = quantize((), tmp_path / "int8.onnx")
    assert any(n.op_type == "Shape" for n in onnx.load(str(quantized)).graph.node)
    sens = analyze(prepared, quantized, data, quantize, tmp_path / "sens", isolated=4, samples=32)
    names = {s.node for s in sens.layers}
    assert {"mm1", "mm2"} <= names and "shape" not in names
    assert all(math.isfinite(s.cumulative_db) for s in sens.layers)
