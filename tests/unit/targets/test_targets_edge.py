"""The edge targets (openvino, arm64, qnn) as contracts, on real graphs and real pipeline runs.

A tiny CNN + MLP (Conv, Gemm, MatMul) is exported with the dynamo exporter, prepared, and quantized
once per target style with the target's own rules. The assertions read the quantized ONNX itself
(zero-point types and values, scale shapes, Q/DQ domains, opsets), and `graph_violations` must
agree with what the graph shows, in both directions. Then each target runs the whole pipeline on
the built-in digits model and must pass the default tolerance.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from _models import INPUT_NAME, images, write_cnn_mlp
from onnx import TensorProto, helper, numpy_helper

from qconvert.calibrate import Dataset, ModelInput
from qconvert.errors import ConfigError
from qconvert.pipeline import RunResult, export
from qconvert.prepare import prepared_from_onnx
from qconvert.quantize import QUANTIZERS
from qconvert.runtime import make_session, manifest_providers
from qconvert.settings import RunConfig
from qconvert.targets import TARGETS, Provider, Target, graph_violations
from qconvert.types import QuantizeConfig

IMAGE_INPUT = ModelInput(INPUT_NAME, (None, 1, 8, 8), "float32")
WEIGHT_INPUT = {"Conv": 1, "Gemm": 1, "MatMul": 1}
OPENVINO, XNNPACK, QNN, CPU = (
    "OpenVINOExecutionProvider",
    "XnnpackExecutionProvider",
    "QNNExecutionProvider",
    "CPUExecutionProvider",
)


# --- fixtures: one export, one quantization per target style ----------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("edge")


@pytest.fixture(scope="module")
def prepared(workdir: Path) -> Path:
    return prepared_from_onnx(write_cnn_mlp(workdir / "fp32.onnx"), workdir / "prepared.onnx")


@pytest.fixture(scope="module")
def calibration() -> Dataset:
    return Dataset("test images", {INPUT_NAME: images(40)})


def _qc(target: str, mode: str = "static", **opts: str) -> QuantizeConfig:
    t = TARGETS.get(target)
    return t.bind(opts).quantize_config(8, t.resolve_mode(8, mode), "minmax")


def _quantize(prepared: Path, name: str, qc: QuantizeConfig, calibration: Dataset | None) -> Path:
    dest = prepared.with_name(f"{name}.onnx")
    QUANTIZERS.get(qc.mode)(prepared, dest, qc, calibration)
    if name.startswith(("qnn", "st_")):  # as the pipeline does: QNN gets static shapes
        TARGETS.get("qnn").bind().finalize(dest, _graph_inputs(dest))
    return dest


def _graph_inputs(path: Path) -> list[ModelInput]:
    inputs = onnx.load(str(path)).graph.input
    return [
        ModelInput(
            i.name,
            tuple(d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim),
            "float32",
        )
        for i in inputs
    ]


@pytest.fixture(scope="module")
def graphs(prepared: Path, calibration: Dataset) -> dict[str, Path]:
    """name -> quantized model file, each made with that target's own rules."""
    styles = {
        "openvino": _qc("openvino"),
        "arm64": _qc("arm64"),
        "arm64-dynamic": _qc("arm64", "dynamic"),
        "qnn": _qc("qnn"),
        "qnn-a16": _qc("qnn", activation="uint16"),
    }
    return {
        name: _quantize(prepared, name, qc, None if qc.mode == "dynamic" else calibration)
        for name, qc in styles.items()
    }


def _load(graphs: dict[str, Path], name: str) -> onnx.ModelProto:
    return onnx.load(str(graphs[name]))


# --- graph reading --------------------------------------------------------------------------------


@dataclasses.dataclass
class QdqNode:
    node: onnx.NodeProto
    zero_point: np.ndarray
    zp_type: int
    scale: np.ndarray
    weight: np.ndarray | None  # the quantized initializer, for weight/bias dequantizers


def _qdq(model: onnx.ModelProto) -> list[QdqNode]:
    init = {t.name: t for t in model.graph.initializer}
    found = []
    for n in model.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        assert len(n.input) == 3, f"{n.name} has no explicit zero point"
        zp = init[n.input[2]]
        weight = init.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        found.append(
            QdqNode(
                n,
                numpy_helper.to_array(zp),
                zp.data_type,
                numpy_helper.to_array(init[n.input[1]]),
                None if weight is None else numpy_helper.to_array(weight),
            )
        )
    return found


def _activations(model: onnx.ModelProto) -> list[QdqNode]:
    return [q for q in _qdq(model) if q.weight is None]


def _weights(model: onnx.ModelProto) -> list[tuple[str, QdqNode]]:
    """(consumer op type, the dequantizer feeding its weight input), for every weight-carrying node."""
    by_output = {q.node.output[0]: q for q in _qdq(model) if q.weight is not None}
    return [
        (n.op_type, by_output[n.input[WEIGHT_INPUT[n.op_type]]])
        for n in model.graph.node
        if n.op_type in WEIGHT_INPUT
        and len(n.input) > WEIGHT_INPUT[n.op_type]
        and n.input[WEIGHT_INPUT[n.op_type]] in by_output
    ]


def _biases(model: onnx.ModelProto) -> list[QdqNode]:
    return [q for q in _qdq(model) if q.weight is not None and q.zp_type == TensorProto.INT32]


def _opset(model: onnx.ModelProto, domain: str = "") -> int:
    return next(
        o.version
        for o in model.opset_import
        if o.domain in ((domain, "ai.onnx") if not domain else (domain,))
    )


def _close_to_fp32(prepared: Path, quantized: Path) -> float:
    """Cosine between the fp32 model and the quantized graph run exactly as written."""
    data = Dataset("held-out", {INPUT_NAME: images(64, seed=7)})
    fp32 = make_session(prepared).run(data)[0]
    q = make_session(quantized, optimize=False).run(data)[0]
    return float(np.mean(np.sum(fp32 * q, 1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(q, axis=1))))


# --- openvino: u8 asymmetric activations, s8 symmetric per-channel weights ----------------------


def test_openvino_graph_follows_its_rules(graphs: dict[str, Path], prepared: Path) -> None:
    model = _load(graphs, "openvino")
    assert all(q.node.domain in ("", "ai.onnx") for q in _qdq(model))
    acts = _activations(model)
    assert acts and all(q.zp_type == TensorProto.UINT8 for q in acts)
    assert any(q.zero_point.any() for q in acts)  # asymmetric: the signed input range has zp != 0
    weights = _weights(model)
    assert sorted(op for op, _ in weights) == ["Conv", "Gemm", "MatMul"]
    for op, q in weights:
        assert q.zp_type == TensorProto.INT8 and not q.zero_point.any(), op  # signed, symmetric
        assert q.scale.size > 1, f"{op} weight is per tensor"
        assert q.weight is not None
        # no reduce_range: every output channel's largest weight uses the full 8-bit range
        axis = 1 if op == "MatMul" else 0
        per_channel_max = np.abs(q.weight.astype(np.int32)).max(
            axis=tuple(i for i in range(q.weight.ndim) if i != axis)
        )
        assert (per_channel_max == 127).all(), op
    assert _biases(model)  # int32 bias, as NNCF writes it
    assert _close_to_fp32(prepared, graphs["openvino"]) > 0.99
    qc = _qc("openvino")
    assert graph_violations(model, qc) == []
    assert TARGETS.get("openvino").graph_violations(model, qc) == []


def test_openvino_rules_refuse_the_qnn_layout(graphs: dict[str, Path]) -> None:
    """u8 asymmetric per-tensor weights run in f32 on OpenVINO's CPU plugin: the rules say so."""
    problems = TARGETS.get("openvino").graph_violations(_load(graphs, "qnn"), _qc("openvino"))
    assert any("weight quantized as uint8, but this target needs int8" in p.reason for p in problems)
    assert any("per tensor; this target wants per-channel" in p.reason for p in problems)


def test_openvino_providers_and_options() -> None:
    target = TARGETS.get("openvino")
    providers = target.bind().providers([IMAGE_INPUT])
    assert [p.name for p in providers] == [OPENVINO, CPU]
    assert providers[0].options == {"device_type": "CPU", "precision": "FP32", "cache_dir": "ov_cache"}
    gpu = target.bind({"device": "GPU", "cache_dir": ""}).providers([IMAGE_INPUT])[0].options
    assert gpu == {"device_type": "GPU"}
    npu = target.bind({"device": "NPU"}).providers([IMAGE_INPUT])[0].options
    assert npu["device_type"] == "NPU" and npu["enable_qdq_optimizer"] == "True"
    assert all(isinstance(v, str) for p in providers for v in p.options.values())
    assert target.modes == {8: ("static",)}
    with pytest.raises(ConfigError, match=r"--mode dynamic .*DynamicQuantizeLinear.*Valid modes: static\."):
        target.resolve_mode(8, "dynamic")


def test_openvino_provider_contract(graphs: dict[str, Path]) -> None:
    target, model = TARGETS.get("openvino"), _load(graphs, "openvino")
    providers = target.bind().providers([IMAGE_INPUT])
    assert target.provider_violations(model, providers) == []
    assert [str(v) for v in target.provider_violations(model, providers[1:])] == [
        "the OpenVINO provider is missing from the provider list"
    ]
    fp16_cpu = [Provider(OPENVINO, {**providers[0].options, "precision": "FP16"}), providers[1]]
    assert any("only takes FP32" in p.reason for p in target.provider_violations(model, fp16_cpu))
    tpu = [Provider(OPENVINO, {"device_type": "TPU"}), providers[1]]
    assert any("'TPU'" in p.reason for p in target.provider_violations(model, tpu))


# --- arm64: S8S8 static, dynamic, XNNPACK -----------------------------------------------------------


def test_arm64_static_graph_is_s8s8_per_channel(graphs: dict[str, Path], prepared: Path) -> None:
    model = _load(graphs, "arm64")
    acts = _activations(model)
    assert acts and all(q.zp_type == TensorProto.INT8 for q in acts)
    assert any(q.zero_point.any() for q in acts)  # asymmetric activations
    weights = _weights(model)
    assert sorted(op for op, _ in weights) == ["Conv", "Gemm", "MatMul"]
    for op, q in weights:
        assert q.zp_type == TensorProto.INT8 and not q.zero_point.any(), op
        assert q.scale.size > 1, op
        assert q.weight is not None and np.abs(q.weight.astype(np.int32)).max() == 127, op  # no reduce_range
    assert _close_to_fp32(prepared, graphs["arm64"]) > 0.99
    assert graph_violations(model, _qc("arm64")) == []


def test_arm64_dynamic_graph(graphs: dict[str, Path], prepared: Path) -> None:
    model = _load(graphs, "arm64-dynamic")
    ops = {n.op_type for n in model.graph.node}
    assert {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"} <= ops
    init = {t.name: t for t in model.graph.initializer}
    integer_weights = [
        init[n.input[1]]
        for n in model.graph.node
        if n.op_type in ("ConvInteger", "MatMulInteger") and n.input[1] in init
    ]
    assert integer_weights and all(w.data_type == TensorProto.INT8 for w in integer_weights)
    qc = _qc("arm64", "dynamic")
    assert qc.format == "qoperator" and not qc.reduce_range
    assert graph_violations(model, qc) == []
    assert _close_to_fp32(prepared, graphs["arm64-dynamic"]) > 0.99


def test_arm64_rules_refuse_unsigned_activations(graphs: dict[str, Path]) -> None:
    problems = graph_violations(_load(graphs, "openvino"), _qc("arm64"))
    assert problems and all(
        "activation quantized as uint8, but this target needs int8" in p.reason for p in problems
    )


def test_arm64_providers_and_options() -> None:
    target = TARGETS.get("arm64")
    providers = target.bind().providers([IMAGE_INPUT])
    assert [p.name for p in providers] == [XNNPACK, CPU]
    assert providers[0].options == {"intra_op_num_threads": "0"}
    assert target.bind({"threads": "4"}).providers([IMAGE_INPUT])[0].options == {"intra_op_num_threads": "4"}
    assert [p.name for p in target.bind({"xnnpack": "false"}).providers([IMAGE_INPUT])] == [CPU]
    assert target.modes == {8: ("static", "dynamic"), 4: ("weight-only",)}


def test_arm64_xnnpack_contract(graphs: dict[str, Path]) -> None:
    """XNNPACK has quantized Conv kernels for S8S8 (per-channel) and U8U8, none for U8S8."""
    target = TARGETS.get("arm64")
    with_xnnpack = target.bind().providers([IMAGE_INPUT])
    cpu_only = target.bind({"xnnpack": "false"}).providers([IMAGE_INPUT])
    assert target.provider_violations(_load(graphs, "arm64"), with_xnnpack) == []
    u8s8 = _load(graphs, "openvino")
    (problem,) = target.provider_violations(u8s8, with_xnnpack)
    assert "XNNPACK" in problem.reason and "U8S8" in problem.reason and "1 quantized Conv" in problem.reason
    assert target.provider_violations(u8s8, cpu_only) == []
    assert target.provider_violations(u8s8, with_xnnpack[:1]) != []  # no CPU provider behind XNNPACK


def test_arm64_is_not_validated_on_this_cpus_kernels_unless_arm64() -> None:
    import platform

    target = TARGETS.get("arm64")
    why = target.not_here(target.bind({"xnnpack": "false"}).providers([IMAGE_INPUT]))
    arm = platform.machine().lower() in ("aarch64", "arm64")
    assert (why is None) is arm
    assert target.facts()["build_machine_is_arm64"] is arm


# --- qnn: u8/u16 activations, u8 per-tensor weights -------------------------------------------------


def test_qnn_a8w8_graph_follows_its_rules(graphs: dict[str, Path], prepared: Path) -> None:
    model = _load(graphs, "qnn")
    acts = _activations(model)
    assert acts and all(q.zp_type == TensorProto.UINT8 for q in acts)
    assert any(q.zero_point.any() for q in acts)
    weights = _weights(model)
    assert sorted(op for op, _ in weights) == ["Conv", "Gemm", "MatMul"]
    for op, q in weights:
        assert q.zp_type == TensorProto.UINT8, op
        assert q.scale.size == 1, f"{op} weight is per channel"
    assert any(q.zero_point.item() != 0 for _, q in weights)  # asymmetric weights
    assert _opset(model) == 18
    assert all(d.HasField("dim_value") for i in model.graph.input for d in i.type.tensor_type.shape.dim)
    assert _close_to_fp32(prepared, graphs["qnn"]) > 0.99
    assert TARGETS.get("qnn").graph_violations(model, _qc("qnn")) == []


def test_qnn_a16w8_graph(graphs: dict[str, Path], prepared: Path) -> None:
    model = _load(graphs, "qnn-a16")
    onnx.checker.check_model(model)
    acts = _activations(model)
    assert acts and all(q.zp_type == TensorProto.UINT16 for q in acts)
    # 16-bit Q/DQ below opset 21 needs onnxruntime's com.microsoft Q/DQ (onnxruntime >= 1.32 also
    # raises the model to opset 21, where the native ops take 16 bits as well)
    assert all(q.node.domain == "com.microsoft" for q in _qdq(model)) or _opset(model) >= 21
    assert {q.zp_type for _, q in _weights(model)} == {TensorProto.UINT8}
    qc = _qc("qnn", activation="uint16")
    assert ("UseQDQContribOps", True) in qc.extra_options
    assert TARGETS.get("qnn").graph_violations(model, qc) == []
    # 16-bit activations keep the graph closer to fp32 than 8-bit ones
    assert _close_to_fp32(prepared, graphs["qnn-a16"]) >= _close_to_fp32(prepared, graphs["qnn"])


def test_qnn_rules_tell_the_activation_widths_apart(graphs: dict[str, Path]) -> None:
    qnn = TARGETS.get("qnn")
    a16_as_a8 = qnn.graph_violations(_load(graphs, "qnn-a16"), _qc("qnn"))
    assert a16_as_a8 and all(
        "activation quantized as uint16, but this target needs uint8" in p.reason for p in a16_as_a8
    )
    a8_as_a16 = qnn.graph_violations(_load(graphs, "qnn"), _qc("qnn", activation="uint16"))
    assert a8_as_a16 and all(
        "activation quantized as uint8, but this target needs uint16" in p.reason for p in a8_as_a16
    )
    # the OpenVINO/CPU layout (s8 symmetric per-channel weights) is not QNN's either
    assert any(
        "weight quantized as int8" in p.reason
        for p in qnn.graph_violations(_load(graphs, "openvino"), _qc("qnn"))
    )


@pytest.fixture(scope="module")
def sigmoid_tanh(workdir: Path) -> Path:
    """x [N, 8] -> MatMul -> Sigmoid -> MatMul -> Tanh -> MatMul -> y, as a prepared fp32 ONNX model
    (each activation feeds a MatMul, so the quantizer puts a QuantizeLinear on every one of them)."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), f"w{i}") for i in range(3)
    ]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w0"], ["h0"], name="mm0"),
            helper.make_node("Sigmoid", ["h0"], ["s"], name="sigmoid"),
            helper.make_node("MatMul", ["s", "w1"], ["h1"], name="mm1"),
            helper.make_node("Tanh", ["h1"], ["t"], name="tanh"),
            helper.make_node("MatMul", ["t", "w2"], ["y"], name="mm2"),
        ],
        "sigmoid_tanh",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(workdir / "sigmoid_tanh.onnx"))
    return prepared_from_onnx(workdir / "sigmoid_tanh.onnx", workdir / "sigmoid_tanh_prepared.onnx")


def test_qnn_refuses_16_bit_sigmoid_and_tanh_without_fixed_ranges(sigmoid_tanh: Path) -> None:
    """QNN needs 16-bit Sigmoid/Tanh outputs with fixed scale and zero point; a plain calibration
    does not give them, and the qnn rules say which nodes are wrong."""
    data = Dataset("x", {"x": np.random.default_rng(1).standard_normal((32, 8)).astype(np.float32)})
    qnn = TARGETS.get("qnn")
    a16 = _qc("qnn", activation="uint16")
    model = onnx.load(str(_quantize(sigmoid_tanh, "st_a16", a16, data)))
    violations = qnn.graph_violations(model, a16)
    assert {v.rule for v in violations} == {"fixed-output-range"}
    problems = sorted(str(v) for v in violations)
    assert len(problems) == 2, problems
    assert problems[0].startswith("sigmoid (Sigmoid): a 16-bit output needs scale 1.53e-05 and zero point 0 ")
    assert problems[1].startswith("tanh (Tanh): a 16-bit output needs scale 3.05e-05 and zero point 32768 ")
    # the same model at 8 bits has no such requirement
    a8 = _qc("qnn")
    assert qnn.graph_violations(onnx.load(str(_quantize(sigmoid_tanh, "st_a8", a8, data))), a8) == []


def test_qnn_providers_and_options() -> None:
    target = TARGETS.get("qnn")
    providers = target.bind().providers([IMAGE_INPUT])
    assert [p.name for p in providers] == [QNN, CPU]
    assert providers[0].options == {
        "backend_type": "htp",
        "htp_performance_mode": "burst",
        "htp_graph_finalization_optimization_mode": "3",
    }
    assert target.bind({"backend": "cpu"}).providers([IMAGE_INPUT])[0].options == {"backend_type": "cpu"}
    balanced = target.bind({"performance_mode": "balanced"}).providers([IMAGE_INPUT])[0].options
    assert balanced["htp_performance_mode"] == "balanced"
    assert target.modes == {8: ("static",)}
    qc = _qc("qnn")
    assert (qc.activation_type, qc.weight_type, qc.per_channel, qc.weight_symmetric) == (
        "uint8",
        "uint8",
        False,
        False,
    )
    assert dict(qc.extra_options) == {"MinimumRealRange": 0.0001}


def test_qnn_provider_contract(graphs: dict[str, Path]) -> None:
    target, model = TARGETS.get("qnn"), _load(graphs, "qnn")
    providers = target.bind().providers([IMAGE_INPUT])
    assert target.provider_violations(model, providers) == []
    both = [Provider(QNN, {**providers[0].options, "backend_path": "libQnnHtp.so"}), providers[1]]
    assert any("only one" in p.reason for p in target.provider_violations(model, both))
    assert any(
        "no backend" in p.reason for p in target.provider_violations(model, [Provider(QNN), providers[1]])
    )
    assert [str(v) for v in target.provider_violations(model, providers[1:])] == [
        "the QNN provider is missing from the provider list"
    ]


# --- options are checked, with the valid values in the message -------------------------------------


@pytest.mark.parametrize(
    ("target", "option", "value", "valid"),
    [
        ("openvino", "device", "TPU", "Valid values: CPU, GPU, NPU."),
        ("arm64", "xnnpack", "yes", "Valid values: true, false."),
        ("arm64", "threads", "-1", "Valid values: a whole number >= 0"),
        ("arm64", "threads", "four", "Valid values: a whole number >= 0"),
        ("qnn", "activation", "int16", "Valid values: uint8, uint16."),
        ("qnn", "backend", "gpu", "Valid values: htp, cpu."),
        ("qnn", "performance_mode", "turbo", "Valid values: burst, sustained_high_performance,"),
    ],
)
def test_bad_option_values_list_the_valid_ones(target: str, option: str, value: str, valid: str) -> None:
    with pytest.raises(ConfigError) as err:
        TARGETS.get(target).bind({option: value})
    assert f"--target-option {option}={value}" in str(err.value)
    assert valid in str(err.value)


@pytest.mark.parametrize(
    ("target", "valid"),
    [
        ("openvino", "device, cache_dir"),
        ("arm64", "xnnpack, threads"),
        ("qnn", "activation, backend, batch, performance_mode"),
    ],
)
def test_unknown_options_list_the_valid_ones(target: str, valid: str) -> None:
    with pytest.raises(ConfigError, match=f"no such option. Valid options: {valid}."):
        TARGETS.get(target).bind({"precision": "FP16"})


def test_export_refuses_a_bad_option_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Valid values: uint8, uint16"):
        export(RunConfig(target="qnn", target_options=(("activation", "int4"),), out_dir=tmp_path / "out"))
    assert not (tmp_path / "out").exists()


# --- one full pipeline run per target, on the built-in digits model ---------------------------------

RUNS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "openvino": ("openvino", ()),
    "arm64": ("arm64", ()),
    "qnn": ("qnn", ()),
    "qnn-a16": ("qnn", (("activation", "uint16"),)),
}
# what each run's model.onnx must show: (activation zp type, weight zp type, weights per-channel)
LAYOUT = {
    "openvino": (TensorProto.UINT8, TensorProto.INT8, True),
    "arm64": (TensorProto.INT8, TensorProto.INT8, True),
    "qnn": (TensorProto.UINT8, TensorProto.UINT8, False),
    "qnn-a16": (TensorProto.UINT16, TensorProto.UINT8, False),
}


@pytest.fixture(scope="module", params=list(RUNS))
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, RunResult]:
    target, options = RUNS[request.param]
    out = tmp_path_factory.mktemp("runs") / request.param
    return request.param, export(
        RunConfig(target=target, target_options=options, out_dir=out, latency_repeats=5)
    )


def test_pipeline_run_passes_the_default_tolerance(run: tuple[str, RunResult]) -> None:
    _, result = run
    assert result.passed, result.validation.failures
    logits = result.report["validation"]["outputs"]["logits"]
    assert logits["top1_agreement"] >= 0.97 and logits["cosine"] >= 0.99
    assert result.report["accuracy"]["drop"] <= 0.01
    # neither XNNPACK, OpenVINO nor QNN is in this onnxruntime (and this is no ARM64 machine on CI):
    # the verdict is the graph's exact Q/DQ arithmetic, and the report says so
    assert result.report["validated_on"] == CPU
    assert result.report["validation_exact_qdq"] is True
    assert any(
        "the verdict comes from the CPU provider with graph optimizations off" in n
        for n in result.report["notes"]
    )


def test_pipeline_artifact_follows_the_target_rules(run: tuple[str, RunResult]) -> None:
    name, result = run
    model = onnx.load(str(result.out_dir / "model.onnx"))
    act_type, weight_type, per_channel = LAYOUT[name]
    assert {q.zp_type for q in _activations(model)} == {act_type}
    weights = _weights(model)
    # the digits CNN: three Convs and two Linear layers, every weight quantized
    assert sorted(op for op, _ in weights) == ["Conv", "Conv", "Conv", "Gemm", "Gemm"]
    assert {q.zp_type for _, q in weights} == {weight_type}
    assert all((q.scale.size > 1) is per_channel for _, q in weights)
    target: Target = TARGETS.get(RUNS[name][0])
    qc = target.bind(dict(RUNS[name][1])).quantize_config(8, "static", "minmax")
    assert target.graph_violations(model, qc) == []


def test_pipeline_manifest_records_providers_and_rules(run: tuple[str, RunResult]) -> None:
    name, result = run
    target_name, options = RUNS[name]
    target = TARGETS.get(target_name)
    manifest: dict[str, Any] = result.manifest
    bound = target.bind(dict(options))
    expected = bound.providers([ModelInput("input", (None, 1, 8, 8), "float32")])
    assert manifest["providers"] == [p.as_json() for p in expected]
    assert manifest["target"]["name"] == target_name
    assert manifest["target"]["options"] == dict(bound.options)
    type_names = {TensorProto.UINT8: "uint8", TensorProto.INT8: "int8", TensorProto.UINT16: "uint16"}
    assert manifest["quantization"]["activation_type"] == type_names[LAYOUT[name][0]]
    # folders in the options are relative to OUT_DIR; loading the artifact resolves them there
    resolved = manifest_providers(result.out_dir, result.manifest_record)
    for given, loaded in zip(expected, resolved, strict=True):
        for key, value in given.options.items():
            want = str(result.out_dir.resolve() / value) if key == "cache_dir" else value
            assert loaded.options[key] == want, key
