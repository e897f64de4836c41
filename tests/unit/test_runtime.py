"""The runtime side of an artifact: implicit TensorRT int8, load_session, `qconvert run`,
target options on the command line, and the op-coverage check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import flat
from typer.testing import CliRunner

import qconvert
from qconvert.cli import app
from qconvert.pipeline import export
from qconvert.runtime import manifest_providers, read_manifest
from qconvert.settings import RunConfig
from qconvert.targets import TARGETS

ROOT = Path(__file__).resolve().parents[2]
HELDOUT = ROOT / "calibration" / "digits_heldout.npz"
runner = CliRunner(env={"COLUMNS": "200"})  # wide: table rows stay on one line each


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result.exit_code, flat(result.output)


@pytest.fixture(scope="module")
def implicit_run(tmp_path_factory: pytest.TempPathFactory) -> qconvert.RunResult:
    out = tmp_path_factory.mktemp("implicit") / "trt-implicit"
    return export(RunConfig(target="tensorrt", target_options=(("quantization", "implicit"),), out_dir=out))


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory: pytest.TempPathFactory) -> qconvert.RunResult:
    return export(RunConfig(target="cpu", out_dir=tmp_path_factory.mktemp("cpu") / "cpu-int8"))


@pytest.mark.slow
def test_implicit_tensorrt_is_an_fp32_graph_with_a_calibration_table(
    implicit_run: qconvert.RunResult,
) -> None:
    out = implicit_run.out_dir
    model = onnx.load(str(out / "model.onnx"))
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    table = out / "trt_cache" / "calibration.flatbuffers"
    assert table.is_file() and table.stat().st_size > 0
    ranges = json.loads((out / "trt_cache" / "calibration.json").read_text())
    graph_tensors = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    assert ranges and set(ranges) <= graph_tensors  # ranges are keyed by real tensor names
    trt = implicit_run.manifest["providers"][0]
    assert trt["name"] == "TensorrtExecutionProvider"
    assert trt["options"]["trt_int8_enable"] == "True"
    assert trt["options"]["trt_int8_calibration_table_name"] == "calibration.flatbuffers"
    assert trt["options"]["trt_engine_cache_path"] == "trt_cache"  # where the provider looks for the table
    assert "trt_cache/calibration.flatbuffers" in implicit_run.manifest["files"]
    # validated on an explicit Q/DQ stand-in, and the report says so
    assert implicit_run.passed
    assert any("implicit int8" in note for note in implicit_run.report["notes"])
    assert implicit_run.report["mode"] == "implicit"


def test_bad_target_options_are_refused_on_the_command_line(tmp_path: Path) -> None:
    code, text = cli(
        "export", "--target", "tensorrt", "--target-option", "quantization=magic", "-o", str(tmp_path / "o")
    )
    assert code == 2 and "quantization=magic" in text and "explicit, implicit" in text
    code, text = cli("export", "--target", "cpu", "--target-option", "nope=1", "-o", str(tmp_path / "o"))
    assert code == 2 and "no such option" in text
    code, text = cli(
        "export", "--target", "tensorrt", "--target-option", "noequals", "-o", str(tmp_path / "o")
    )
    assert code == 2 and "NAME=VALUE" in text
    code, text = cli(
        "export", "--target", "tensorrt", "--target-option", "profile_batch=8,1,64", "-o", str(tmp_path / "o")
    )
    assert code == 2 and "min <= opt <= max" in text
    assert not (tmp_path / "o").exists()


def test_tensorrt_profile_options_reach_the_provider() -> None:
    from qconvert.calibrate import ModelInput

    ids = ModelInput("ids", (None, None), "int64")
    trt = (
        TARGETS.get("tensorrt")
        .bind({"profile_batch": "1,4,16", "profile_other": "8,64,256"})
        .providers([ids])[0]
    )
    assert trt.options["trt_profile_min_shapes"] == "ids:1x8"
    assert trt.options["trt_profile_opt_shapes"] == "ids:4x64"
    assert trt.options["trt_profile_max_shapes"] == "ids:16x256"


@pytest.mark.slow
def test_load_session_uses_the_manifest_and_resolves_paths(implicit_run: qconvert.RunResult) -> None:
    out = implicit_run.out_dir
    providers = manifest_providers(out, read_manifest(out))
    assert [p.name for p in providers] == [p["name"] for p in implicit_run.manifest["providers"]]
    assert Path(providers[0].options["trt_engine_cache_path"]) == (out / "trt_cache").resolve()
    session = qconvert.load_session(out)
    # no TensorRT or CUDA here: the session falls back to the CPU provider, the last in the list
    assert session.get_providers()[0] == "CPUExecutionProvider"
    x = np.load(HELDOUT)["input"][:5]
    assert session.run(None, {"input": x})[0].shape == (5, 10)


def test_load_session_on_a_folder_without_manifest(tmp_path: Path) -> None:
    with pytest.raises(qconvert.SourceError, match=r"no qconvert\.json"):
        qconvert.load_session(tmp_path)


@pytest.mark.slow
def test_run_command_writes_outputs_and_keeps_existing_files(
    cpu_run: qconvert.RunResult, tmp_path: Path
) -> None:
    target = tmp_path / "outs.npz"
    code, text = cli("run", str(cpu_run.out_dir), "--data", str(HELDOUT), "-o", str(target))
    assert code == 0, text
    logits = np.load(target)["logits"]
    labels = np.load(HELDOUT)["labels"]
    assert logits.shape == (600, 10)
    accuracy = float((logits.argmax(1) == labels).mean())
    assert accuracy == pytest.approx(cpu_run.report["accuracy"]["model"], abs=1e-9)
    before = target.read_bytes()
    code, text = cli("run", str(cpu_run.out_dir), "--data", str(HELDOUT), "-o", str(target))
    assert code == 2 and "--force" in text and target.read_bytes() == before
    code, text = cli("run", str(cpu_run.out_dir), "--data", str(HELDOUT), "-o", str(HELDOUT), "--force")
    assert code == 2 and "input file" in text


def test_float_nodes_lists_ops_the_provider_cannot_run_in_int8() -> None:
    from onnx import TensorProto, helper

    # x -> Q -> DQ -> Erf (no int8 kernel anywhere) -> y ; Relu after DQ is int8-capable
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])
    inits = [
        helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
        helper.make_tensor("zp", TensorProto.INT8, [], [0]),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"], name="dq"),
        helper.make_node("Erf", ["dq"], ["y"], name="erf"),
        helper.make_node("Relu", ["dq"], ["z"], name="relu"),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y, z], inits))
    assert TARGETS.get("tensorrt").float_nodes(model) == ["erf (Erf)"]
    assert TARGETS.get("cpu").float_nodes(model) == ["erf (Erf)"]


def test_qnn_fixes_the_batch_axis_and_refuses_other_dynamic_axes(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    from qconvert.calibrate import ModelInput

    qnn = TARGETS.get("qnn")
    w = numpy_helper.from_array(np.ones((4, 3), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [w],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    note = qnn.bind({"batch": "2"}).finalize(path, [ModelInput("x", (None, 4), "float32")])
    assert note and "fixed to 2" in note
    fixed = onnx.load(str(path))
    assert [d.dim_value for d in fixed.graph.input[0].type.tensor_type.shape.dim] == [2, 4]
    assert [d.dim_value for d in fixed.graph.output[0].type.tensor_type.shape.dim] == [2, 3]
    with pytest.raises(qconvert.ConfigError, match="dynamic axes besides the batch"):
        qnn.bind().finalize(path, [ModelInput("x", (None, None), "float32")])
    with pytest.raises(qconvert.ConfigError, match="positive whole number"):
        qnn.bind({"batch": "0"})


@pytest.mark.slow
def test_latency_batch_larger_than_the_heldout_set(tmp_path: Path) -> None:
    code, text = cli("export", "--target", "cpu", "--latency-batch", "700", "-o", str(tmp_path / "o"))
    assert code == 0, text
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    manifest = json.loads((tmp_path / "o" / "qconvert.json").read_text())
    assert report["latency"]["batch"] == 700  # 600 held-out samples, repeated in order to fill it
    assert report["latency"]["fp32"]["p50_ms"] > 0 and report["latency"]["model"]["p50_ms"] > 0
    assert "--latency-batch 700" in manifest["command"]
    assert "latency p50 (batch 700" in text
