"""16-bit modes: bf16 (cuda, tensorrt) with its CPU stand-in, and the cpu target's fp16 and A16W8.

The bf16 graph cannot run on this machine (onnxruntime's CPU provider has no bf16 MatMul, Gemm or
Conv), so its figures come from `emulate_bf16`; the tests check that stand-in against numpy's
bfloat16 arithmetic, and the bf16 graph against what the CUDA provider has kernels for.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _lowbit_models import block, mlp
from conftest import cli, inside_but_undecided
from onnx import TensorProto, helper, numpy_helper

from qconvert.prepare import prepared_from_onnx
from qconvert.quantize import QUANTIZERS
from qconvert.quantize.bf16 import bf16_nodes_without_kernel, emulate_bf16, ops_without_bf16_kernel
from qconvert.quantize.float16 import emulate_fp16
from qconvert.targets import TARGETS
from qconvert.tolerance import Tolerance
from qconvert.validation import evaluate


def exact_session(path: Path) -> ort.InferenceSession:
    """The CPU provider with graph optimizations off: the stand-in's Casts run as written."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def bf16(values: np.ndarray) -> np.ndarray:
    """Round to bfloat16 (nearest even) and back to float32."""
    return np.asarray(values, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


@pytest.fixture(scope="module")
def block_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, np.ndarray]]:
    folder = tmp_path_factory.mktemp("block16")
    path, _, _ = block().write(folder, "block")
    return path, prepared_from_onnx(path, folder / "prepared.onnx"), block().heldout


def test_bf16_graph_of_a_transformer_block(block_files: tuple[Path, Path, dict[str, np.ndarray]]) -> None:
    """bf16 weights (exactly the rounded fp32 ones), fp32 at the edges, fp32 where CUDA has no bf16
    kernel, and within the 16-bit tolerance on held-out data through the stand-in."""
    source, prepared, heldout = block_files
    qc = TARGETS.get("cuda").bind().quantize_config(16, "bf16", "minmax")
    path = QUANTIZERS.get("bf16")(prepared, prepared.with_name("bf16.onnx"), qc, None)
    model, fp32 = onnx.load(str(path)), onnx.load(str(prepared))
    originals = {t.name: numpy_helper.to_array(t) for t in fp32.graph.initializer}
    halves = [t for t in model.graph.initializer if t.data_type == TensorProto.BFLOAT16]
    assert len(halves) >= 6  # projections, MLP, head, norms, embedding table
    for t in halves:
        np.testing.assert_array_equal(numpy_helper.to_array(t).astype(np.float32), bf16(originals[t.name]))
    assert not any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.INT64  # token ids untouched
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    producer = {o: n for n in model.graph.node for o in n.output}
    last = producer[model.graph.output[0].name]
    assert last.op_type == "Cast" and last.attribute[0].i == TensorProto.FLOAT  # the Cast at the edge
    assert "ReduceMean" in ops_without_bf16_kernel(fp32)  # no CUDA bf16 kernel at opset 18 ...
    assert bf16_nodes_without_kernel(model) == []  # ... so it computes in fp32
    assert TARGETS.get("cuda").graph_violations(model, qc) == []
    emulated = emulate_bf16(path, prepared.with_name("bf16_emulated.onnx"))
    feeds = {"ids": heldout["ids"]}
    reference = ort.InferenceSession(str(source)).run(None, feeds)[0]
    candidate = exact_session(emulated).run(None, feeds)[0]
    result = evaluate(["logits"], [reference], [candidate], Tolerance.for_bits(16), heldout["labels"])
    assert result or inside_but_undecided(result.as_json()), result.as_json()
    assert not np.array_equal(candidate, reference)  # the stand-in does round


def test_bf16_stand_in_is_bfloat16_arithmetic_and_keeps_fp32_range(tmp_path: Path) -> None:
    """A MatMul whose products overflow fp16: the bf16 stand-in gives numpy's bfloat16 result (inputs,
    weights and output rounded to bf16, products summed in fp32), the fp16 stand-in gives Inf."""
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((16, 8)) * 300).astype(np.float32)
    x = (rng.standard_normal((4, 16)) * 300).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
        [numpy_helper.from_array(weight, "w")],
    )
    src = tmp_path / "mm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(src))
    cuda = TARGETS.get("cuda")
    brain = QUANTIZERS.get("bf16")(
        src, tmp_path / "bf16.onnx", cuda.bind().quantize_config(16, "bf16", "minmax"), None
    )
    half = QUANTIZERS.get("fp16")(
        src, tmp_path / "fp16.onnx", cuda.bind().quantize_config(16, "fp16", "minmax"), None
    )
    got = exact_session(emulate_bf16(brain, tmp_path / "bf16_em.onnx")).run(None, {"x": x})[0]
    want = bf16(bf16(x) @ bf16(weight))
    np.testing.assert_allclose(got, want, rtol=2**-8)  # one bf16 step at most (fp32 summation order)
    assert np.isfinite(got).all() and np.abs(got).max() > 65504
    fp16_out = exact_session(emulate_fp16(half, tmp_path / "fp16_em.onnx")).run(None, {"x": x})[0]
    assert not np.isfinite(fp16_out).all()


def test_bf16_export_of_a_convnet_end_to_end(tmp_path: Path) -> None:
    """The built-in digits CNN on cuda: at opset 18 Conv and MaxPool have no CUDA bf16 kernel and stay
    fp32 (the notes say so, and which opset would change it); the verdict comes from the stand-in."""
    out = tmp_path / "out"
    code, text = cli(
        "export", "--bits", "16", "--mode", "bf16", "--target", "cuda", "--latency-batch", "1", "-o", str(out)
    )
    # 600 held-out digits cannot show top1_agreement>=0.995 at 95% (that takes 765): INCONCLUSIVE, exit 1
    assert code == 1 and "INCONCLUSIVE" in text, text
    assert "for want of a CUDA bf16 kernel at opset 18: Conv, MaxPool" in text and "--opset 22" in text
    assert "fp32 stand-in that rounds each tensor to bfloat16" in text
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "bf16" and inside_but_undecided(report["validation"])
    assert report["validation_exact_qdq"]  # the stand-in ran as written, optimizations off
    model = onnx.load(str(out / "model.onnx"))
    assert any(t.data_type == TensorProto.BFLOAT16 for t in model.graph.initializer)
    assert bf16_nodes_without_kernel(model) == []


def test_tensorrt_bf16_runs_with_trt_bf16_enable() -> None:
    trt = TARGETS.get("tensorrt")
    qc = trt.bind().quantize_config(16, "bf16", "minmax")
    assert (qc.mode, qc.format) == ("bf16", "bf16")
    options = trt.bind().providers([], qc)[0].options
    assert (options["trt_bf16_enable"], options["trt_int8_enable"], options["trt_fp16_enable"]) == (
        "True",
        "False",
        "False",
    )
    assert (
        trt.bind()
        .providers([], trt.bind().quantize_config(8, "static", "minmax"))[0]
        .options["trt_int8_enable"]
        == "True"
    )
    model = helper.make_model(helper.make_graph([], "empty", [], []))
    assert trt.provider_violations(model, trt.bind().providers([], qc)) == []
    int8_too = dataclasses.replace(
        trt.bind().providers([], qc)[0], options={**options, "trt_int8_enable": "True"}
    )
    assert any(
        "trt_int8_enable is on with bf16" in p.reason for p in trt.provider_violations(model, [int8_too])
    )


@pytest.fixture(scope="module")
def mlp_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return mlp().write(tmp_path_factory.mktemp("mlp16"), "mlp")


def test_cpu_a16w8_writes_uint16_activations_and_int8_weights(
    mlp_files: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    source, calibration, heldout = mlp_files
    out = tmp_path / "a16w8"
    code, text = cli(
        "export", str(source), "--bits", "16", "--mode", "static", "--target", "cpu",
        "--calibration", str(calibration), "--data", str(heldout), "-o", str(out),
    )  # fmt: skip
    assert code in (0, 1), text  # 1: INCONCLUSIVE, held-out data short of what 16-bit bounds take
    model = onnx.load(str(out / "model.onnx"))
    init = {t.name: t for t in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq and all(n.domain == "com.microsoft" for n in qdq)  # 16-bit Q/DQ below opset 21 ONNX
    zero_points = {init[n.input[2]].data_type for n in qdq if len(n.input) > 2 and n.input[2] in init}
    assert zero_points == {TensorProto.UINT16, TensorProto.INT8, TensorProto.INT32}  # acts, weights, biases
    weights = [n for n in qdq if n.input[0] in init and init[n.input[2]].data_type == TensorProto.INT8]
    assert len(weights) == 3 and all(len(init[n.input[1]].dims) == 1 for n in weights)  # per channel
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] or inside_but_undecided(report["validation"]), report["validation"]["checks"]
    assert report["validation"]["outputs"]["logits"]["top1_agreement"] == 1.0
    assert "a16w8" in text  # the table's column


def test_cpu_16_bits_defaults_to_fp16(mlp_files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    source, _, heldout = mlp_files
    out = tmp_path / "fp16"
    code, text = cli(
        "export", str(source), "--bits", "16", "--target", "cpu", "--data", str(heldout), "-o", str(out)
    )
    assert code in (0, 1), text  # 1: INCONCLUSIVE, held-out data short of what 16-bit bounds take
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] or inside_but_undecided(report["validation"]), report["validation"]["checks"]
    manifest = json.loads((out / "qconvert.json").read_text())
    assert manifest["quantization"]["mode"] == "fp16" and manifest["settings"]["mode"] is None  # as given
    assert manifest["validated_on"]["provider"] == "CPUExecutionProvider"


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("--bits", "16", "--mode", "bf16", "--target", "cpu"), ("--mode bf16 is not supported by --target cpu", "no bf16 MatMul")),
        (("--bits", "16", "--mode", "bf16", "--target", "coreml"), ("--mode bf16", "takes no bfloat16")),
        (("--bits", "16", "--target", "openvino"), ("--bits 16 is not supported by --target openvino", "bf16 on CPUs")),
        (("--bits", "16", "--mode", "static", "--target", "cpu", "--target-option", "format=qoperator"), ("no 16-bit QOperator",)),
    ],
)  # fmt: skip
def test_16_bit_modes_a_target_cannot_run_are_refused(
    args: tuple[str, ...], needles: tuple[str, ...], tmp_path: Path
) -> None:
    code, text = cli("export", *args, "-o", str(tmp_path / "out"))
    assert code == 2, text
    for needle in needles:
        assert needle in text, text
    assert not (tmp_path / "out").exists()
