"""Target rules as contracts, checked on real graphs quantized by onnxruntime.

A tiny CNN + MLP (Conv, Gemm, MatMul, ReLU) is exported with the dynamo exporter, prepared, and
quantized once per style (TensorRT static, CPU static, per-tensor, dynamic). The assertions read
the quantized graph itself, and `graph_violations` must agree with what the graph shows.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
from _models import INPUT_NAME, cnn_mlp_onnx_bytes, images, write_cnn_mlp
from onnx import TensorProto, numpy_helper

from qconvert.calibrate import Dataset, ModelInput
from qconvert.errors import ConfigError
from qconvert.prepare import prepared_from_onnx
from qconvert.quantize import QUANTIZERS
from qconvert.targets import TARGETS, Provider, Violation, graph_violations
from qconvert.targets.cpu import has_vnni
from qconvert.types import QuantizeConfig

TRT = "TensorrtExecutionProvider"
INTEGER_ONLY = {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "QGemm"}
WEIGHT_INPUT = {"Conv": 1, "Gemm": 1, "MatMul": 1}


# --- fixtures: one export, one quantization per style -------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("targets")


@pytest.fixture(scope="module")
def prepared(workdir: Path) -> Path:
    return prepared_from_onnx(write_cnn_mlp(workdir / "fp32.onnx"), workdir / "prepared.onnx")


@pytest.fixture(scope="module")
def calibration() -> Dataset:
    return Dataset("test images", {INPUT_NAME: images(40)})


@pytest.fixture(scope="module")
def trt_qc() -> QuantizeConfig:
    return TARGETS.get("tensorrt").bind().quantize_config(8, "static", "minmax")


@pytest.fixture(scope="module")
def cpu_qc() -> QuantizeConfig:
    return TARGETS.get("cpu").bind().quantize_config(8, "static", "minmax")


def _quantize(prepared: Path, name: str, qc: QuantizeConfig, calibration: Dataset | None) -> onnx.ModelProto:
    dest = prepared.with_name(f"{name}.onnx")
    QUANTIZERS.get(qc.mode)(prepared, dest, qc, calibration)
    return onnx.load(str(dest))


@pytest.fixture(scope="module")
def trt_graph(prepared: Path, trt_qc: QuantizeConfig, calibration: Dataset) -> onnx.ModelProto:
    return _quantize(prepared, "trt", trt_qc, calibration)


@pytest.fixture(scope="module")
def cpu_graph(prepared: Path, cpu_qc: QuantizeConfig, calibration: Dataset) -> onnx.ModelProto:
    return _quantize(prepared, "cpu", cpu_qc, calibration)


@pytest.fixture(scope="module")
def per_tensor_graph(prepared: Path, trt_qc: QuantizeConfig, calibration: Dataset) -> onnx.ModelProto:
    return _quantize(prepared, "per_tensor", dataclasses.replace(trt_qc, per_channel=False), calibration)


@pytest.fixture(scope="module")
def dynamic_graph(prepared: Path) -> onnx.ModelProto:
    return _quantize(
        prepared, "dynamic", TARGETS.get("cpu").bind().quantize_config(8, "dynamic", "minmax"), None
    )


# --- graph reading helpers --------------------------------------------------------------------


def _initializers(model: onnx.ModelProto) -> dict[str, TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def _qdq_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


def _weight_dequantizers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """consumer op type -> the DequantizeLinear that feeds that op's weight input."""
    producers = {out: n for n in model.graph.node for out in n.output}
    found = {}
    for node in model.graph.node:
        slot = WEIGHT_INPUT.get(node.op_type)
        if slot is None or len(node.input) <= slot:
            continue
        dq = producers.get(node.input[slot])
        if dq is not None and dq.op_type == "DequantizeLinear":
            found[node.op_type] = dq
    return found


def _axis(node: onnx.NodeProto) -> int | None:
    return next((a.i for a in node.attribute if a.name == "axis"), None)


# --- TensorRT: the quantized graph follows the rules --------------------------------------


def test_trt_graph_is_explicit_qdq_and_valid(trt_graph: onnx.ModelProto) -> None:
    onnx.checker.check_model(trt_graph)
    ops = {n.op_type for n in trt_graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm", "MatMul"} <= ops
    quantized_inputs = {n.input[0] for n in trt_graph.graph.node if n.op_type == "QuantizeLinear"}
    assert INPUT_NAME in quantized_inputs


def test_trt_every_zero_point_is_int8_zero(trt_graph: onnx.ModelProto) -> None:
    init = _initializers(trt_graph)
    nodes = _qdq_nodes(trt_graph)
    assert nodes
    for node in nodes:
        assert len(node.input) == 3, f"{node.name} has no explicit zero point (defaults to uint8)"
        zp = init[node.input[2]]
        assert zp.data_type == TensorProto.INT8, node.name
        assert not numpy_helper.to_array(zp).any(), f"{node.name}: zero point is not 0"


def test_trt_weights_are_per_channel_on_the_output_channel_axis(trt_graph: onnx.ModelProto) -> None:
    init = _initializers(trt_graph)
    dequantizers = _weight_dequantizers(trt_graph)
    assert set(dequantizers) == {"Conv", "Gemm", "MatMul"}
    # Conv weight [out, in, kh, kw] and Gemm weight [out, in] (transB=1): axis 0; MatMul [in, out]: axis 1
    expected_axis = {"Conv": 0, "Gemm": 0, "MatMul": 1}
    for op, dq in dequantizers.items():
        weight = numpy_helper.to_array(init[dq.input[0]])
        scale = numpy_helper.to_array(init[dq.input[1]])
        assert weight.dtype == np.int8
        assert scale.size > 1, f"{op} weight is quantized per tensor"
        assert _axis(dq) == expected_axis[op]
        assert scale.size == weight.shape[expected_axis[op]]
        # symmetric, full 8-bit range (no reduce_range): each channel's largest weight maps to 127
        assert np.abs(weight.astype(np.int32)).max() == 127


def test_trt_bias_stays_float(trt_graph: onnx.ModelProto) -> None:
    init = _initializers(trt_graph)
    for node in trt_graph.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in init:
            assert init[node.input[0]].data_type != TensorProto.INT32, (
                f"{node.name} dequantizes an int32 bias"
            )
    biased = [n for n in trt_graph.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) == 3]
    assert len(biased) == 2
    for node in biased:
        assert init[node.input[2]].data_type == TensorProto.FLOAT, node.name


def test_trt_graph_has_no_integer_only_ops(trt_graph: onnx.ModelProto) -> None:
    ops = {n.op_type for n in trt_graph.graph.node}
    assert not {op for op in ops if op.startswith("QLinear")}
    assert not ops & INTEGER_ONLY


def test_trt_graph_passes_the_trt_rules(trt_graph: onnx.ModelProto, trt_qc: QuantizeConfig) -> None:
    assert graph_violations(trt_graph, trt_qc) == []
    assert TARGETS.get("tensorrt").graph_violations(trt_graph, trt_qc) == []


def test_trt_graph_computes_close_to_fp32(prepared: Path, trt_graph: onnx.ModelProto) -> None:
    """Run as written (graph optimizations off, as validation does off-target): the Q/DQ arithmetic
    itself stays close to fp32. (Fused S8S8 CPU kernels can saturate on CPUs without VNNI.)"""
    from qconvert.runtime import make_session
    from qconvert.validation import compare

    data = Dataset("held-out", {INPUT_NAME: images(32, seed=5)})
    fp32 = make_session(prepared).run(data)[0]
    int8 = make_session(prepared.with_name("trt.onnx"), optimize=False).run(data)[0]
    metrics = compare(fp32, int8)
    assert metrics["cosine"] > 0.99
    assert metrics["max_abs"] > 0  # it really is quantized


# --- TensorRT: graphs that break the rules are flagged --------------------------------------


def test_cpu_style_graph_breaks_trt_rules(cpu_graph: onnx.ModelProto, trt_qc: QuantizeConfig) -> None:
    init = _initializers(cpu_graph)
    activation_qdq = [n for n in _qdq_nodes(cpu_graph) if n.input[0] not in init]
    assert activation_qdq
    assert all(init[n.input[2]].data_type == TensorProto.UINT8 for n in activation_qdq)

    problems = graph_violations(cpu_graph, trt_qc)
    for node in activation_qdq:
        assert any(p.reason.startswith(f"{node.name}:") and "uint8" in p.reason for p in problems), node.name
    # the CPU config also quantizes bias to int32, which TensorRT does not want
    assert any("int32" in p.reason for p in problems)


def test_per_tensor_weights_break_trt_rules(
    per_tensor_graph: onnx.ModelProto, trt_qc: QuantizeConfig
) -> None:
    init = _initializers(per_tensor_graph)
    dequantizers = _weight_dequantizers(per_tensor_graph)
    assert all(numpy_helper.to_array(init[dq.input[1]]).size == 1 for dq in dequantizers.values())

    problems = graph_violations(per_tensor_graph, trt_qc)
    # every other rule holds, so the weight granularity is the only thing reported, once per weight
    assert sorted(problems, key=str) == sorted(
        (
            Violation(
                "per-channel",
                dq.name,
                f"{dq.name}: weight is quantized per tensor; this target wants per-channel",
            )
            for dq in dequantizers.values()
        ),
        key=str,
    )
    assert len(problems) == 3


def test_dynamic_graph_breaks_trt_rules(dynamic_graph: onnx.ModelProto, trt_qc: QuantizeConfig) -> None:
    ops = {n.op_type for n in dynamic_graph.graph.node}
    assert {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"} <= ops

    problems = graph_violations(dynamic_graph, trt_qc)
    for op in ("ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"):
        flagged = [n for n in dynamic_graph.graph.node if n.op_type == op]
        assert sum(f"is {op}, which this target cannot run" in p.reason for p in problems) == len(flagged)


# --- CPU target ---------------------------------------------------------------------------------


def _cpuinfo_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_cpu_config_is_u8_activations_s8_per_channel_weights(cpu_qc: QuantizeConfig) -> None:
    assert cpu_qc.format == "qdq"
    assert (cpu_qc.activation_type, cpu_qc.weight_type) == ("uint8", "int8")
    assert cpu_qc.per_channel and cpu_qc.weight_symmetric and not cpu_qc.activation_symmetric
    assert TARGETS.get("cpu").bind().quantize_config(8, "dynamic", "minmax").format == "qoperator"


def test_cpu_reduce_range_exactly_when_no_vnni(cpu_qc: QuantizeConfig) -> None:
    vnni = bool({"avx512_vnni", "avx_vnni", "amx_int8"} & _cpuinfo_flags())
    assert has_vnni() is vnni
    assert cpu_qc.reduce_range is (not vnni)
    assert TARGETS.get("cpu").facts()["reduce_range"] is (not vnni)


def test_cpu_graph_matches_cpu_rules(cpu_graph: onnx.ModelProto, cpu_qc: QuantizeConfig) -> None:
    init = _initializers(cpu_graph)
    dequantizers = _weight_dequantizers(cpu_graph)
    assert set(dequantizers) == {"Conv", "Gemm", "MatMul"}
    for dq in dequantizers.values():
        weight = numpy_helper.to_array(init[dq.input[0]]).astype(np.int32)
        assert init[dq.input[2]].data_type == TensorProto.INT8
        assert numpy_helper.to_array(init[dq.input[1]]).size > 1
        # 7-bit weights on CPUs without VNNI (so u8 x s8 pairs cannot saturate), else the full range
        assert np.abs(weight).max() == (64 if cpu_qc.reduce_range else 127)
    assert graph_violations(cpu_graph, cpu_qc) == []


# --- TensorRT provider settings ------------------------------------------------------------------


def _parse_profile(text: str) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for item in text.split(","):
        name, _, dims = item.rpartition(":")
        shapes[name] = tuple(int(d) for d in dims.split("x"))
    return shapes


IMAGE_INPUT = ModelInput(INPUT_NAME, (None, 1, 8, 8), "float32")


def test_trt_providers_in_priority_order() -> None:
    providers = TARGETS.get("tensorrt").bind().providers([IMAGE_INPUT])
    assert [p.name for p in providers] == [TRT, "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert all(isinstance(v, str) for p in providers for v in p.options.values())


def test_trt_provider_options() -> None:
    options = TARGETS.get("tensorrt").bind().providers([IMAGE_INPUT])[0].options
    assert options["trt_int8_enable"] == "True"
    assert options["trt_fp16_enable"] == "True"
    assert options["trt_engine_cache_enable"] == "True"
    assert options["trt_engine_cache_path"]
    assert options["trt_timing_cache_enable"] == "True"
    assert options["trt_timing_cache_path"]
    assert "trt_int8_calibration_table_name" not in options
    assert options.get("trt_int8_use_native_calibration_table", "False") != "True"


def test_trt_profile_covers_every_dynamic_input() -> None:
    inputs = [IMAGE_INPUT, ModelInput("scales", (None, 3), "float32")]
    options = TARGETS.get("tensorrt").bind().providers(inputs)[0].options
    lo, opt, hi = (_parse_profile(options[f"trt_profile_{k}_shapes"]) for k in ("min", "opt", "max"))
    for inp in inputs:
        assert len(lo[inp.name]) == len(opt[inp.name]) == len(hi[inp.name]) == len(inp.dims)
        for axis, dim in enumerate(inp.dims):
            if dim is None:
                assert 1 <= lo[inp.name][axis] <= opt[inp.name][axis] <= hi[inp.name][axis]
                assert lo[inp.name][axis] < hi[inp.name][axis]
            else:
                assert lo[inp.name][axis] == opt[inp.name][axis] == hi[inp.name][axis] == dim


def test_trt_profile_spans_a_dynamic_sequence_axis() -> None:
    ids = ModelInput("input_ids", (None, None), "int64")
    options = TARGETS.get("tensorrt").bind().providers([ids])[0].options
    lo = _parse_profile(options["trt_profile_min_shapes"])["input_ids"]
    hi = _parse_profile(options["trt_profile_max_shapes"])["input_ids"]
    assert lo[1] < hi[1]


def test_trt_static_inputs_need_no_profile() -> None:
    options = (
        TARGETS.get("tensorrt").bind().providers([ModelInput(INPUT_NAME, (4, 1, 8, 8), "float32")])[0].options
    )
    assert not any(k.startswith("trt_profile_") for k in options)


def _with_trt_options(providers: list[Provider], **changes: str) -> list[Provider]:
    trt = providers[0]
    return [Provider(trt.name, {**trt.options, **changes}), *providers[1:]]


def test_trt_provider_rules_on_a_qdq_graph(trt_graph: onnx.ModelProto) -> None:
    target = TARGETS.get("tensorrt")
    providers = target.bind().providers([IMAGE_INPUT])
    assert target.provider_violations(trt_graph, providers) == []

    int8_off = _with_trt_options(providers, trt_int8_enable="False")
    assert any("trt_int8_enable" in p.reason for p in target.provider_violations(trt_graph, int8_off))

    table = _with_trt_options(providers, trt_int8_calibration_table_name="calib.flatbuffers")
    assert any("calibration table" in p.reason for p in target.provider_violations(trt_graph, table))

    native = _with_trt_options(providers, trt_int8_use_native_calibration_table="True")
    assert any("calibration table" in p.reason for p in target.provider_violations(trt_graph, native))

    assert target.provider_violations(trt_graph, providers[1:]) != []


def test_trt_implicit_providers_agree_with_an_fp32_graph(prepared: Path) -> None:
    """Implicit quantization (no Q/DQ in the graph) is where a calibration table belongs."""
    target = TARGETS.get("tensorrt")
    fp32 = onnx.load(str(prepared))
    implicit = target.bind({"quantization": "implicit"}).providers([IMAGE_INPUT])
    assert implicit[0].options["trt_int8_calibration_table_name"] == "calibration.flatbuffers"
    assert target.provider_violations(fp32, implicit) == []
    # int8 off would make the table pointless; an fp32 graph without a table has no int8 ranges at all
    int8_off = _with_trt_options(implicit, trt_int8_enable="False")
    assert any("trt_int8_enable" in p.reason for p in target.provider_violations(fp32, int8_off))
    explicit = target.bind().providers([IMAGE_INPUT])
    assert any("needs a calibration table" in p.reason for p in target.provider_violations(fp32, explicit))


def test_cpu_provider_is_the_cpu_ep() -> None:
    assert [p.name for p in TARGETS.get("cpu").bind().providers([IMAGE_INPUT])] == ["CPUExecutionProvider"]


# --- modes and the registry -------------------------------------------------------------------


def test_resolve_mode_defaults_and_choices() -> None:
    cpu, trt = TARGETS.get("cpu"), TARGETS.get("tensorrt")
    assert cpu.resolve_mode(8, None) == "static"
    assert cpu.resolve_mode(8, "dynamic") == "dynamic"
    assert trt.resolve_mode(8, None) == "static"


@pytest.mark.parametrize(
    ("target", "bits", "valid"),
    [
        ("tensorrt", 4, "16, 8"),
        ("coreml", 4, "16, 8"),
        ("openvino", 4, "8"),
        ("openvino", 16, "8"),
        ("qnn", 16, "8"),
    ],
)
def test_resolve_mode_unsupported_bits_names_the_valid_ones(target: str, bits: int, valid: str) -> None:
    with pytest.raises(ConfigError) as err:
        TARGETS.get(target).resolve_mode(bits, None)
    message = str(err.value)
    assert f"--bits {bits} is not supported by --target {target} (" in message  # with the reason
    assert f"Valid --bits for {target}: {valid}." in message


def test_resolve_mode_tensorrt_refuses_dynamic_with_a_reason() -> None:
    with pytest.raises(ConfigError) as err:
        TARGETS.get("tensorrt").resolve_mode(8, "dynamic")
    message = str(err.value)
    assert "--mode dynamic" in message
    assert "DynamicQuantizeLinear" in message  # the reason
    assert "Valid modes: static." in message


def test_resolve_mode_unknown_mode_lists_valid_modes() -> None:
    with pytest.raises(ConfigError, match=r"Valid modes: static, dynamic\."):
        TARGETS.get("cpu").resolve_mode(8, "weight-only")


def test_registry_names_and_unknown_target() -> None:
    names = TARGETS.names()
    assert names == sorted(names) and {"cpu", "tensorrt"} <= set(names)
    assert "tensorrt" in TARGETS
    assert "no-such-target" not in TARGETS
    with pytest.raises(ConfigError) as err:
        TARGETS.get("no-such-target")
    assert "--target 'no-such-target'" in str(err.value)
    assert f"Valid choices: {', '.join(names)}." in str(err.value)


def test_every_mode_a_target_offers_has_a_quantizer() -> None:
    for _, target in TARGETS:
        for modes in target.modes.values():
            for mode in modes:
                assert mode in QUANTIZERS, (target.name, mode)
    with pytest.raises(ConfigError, match="--mode 'no-such-mode'"):
        QUANTIZERS.get("no-such-mode")


def test_target_options_are_checked() -> None:
    target = TARGETS.get("tensorrt")
    assert dict(target.bind().options) == {o.name: o.default for o in target.options}
    with pytest.raises(ConfigError, match=r"no such option\. Valid options"):
        target.bind({"no_such_option": "1"})


def test_models_module_export_is_dynamic_in_batch() -> None:
    """Guards the fixture itself: the export the rules are checked on really has a dynamic batch."""
    model = onnx.load_from_string(cnn_mlp_onnx_bytes())
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert not batch_dim.HasField("dim_value")
