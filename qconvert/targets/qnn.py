"""Qualcomm NPUs (Hexagon HTP) through onnxruntime's QNN provider.

The rules follow onnxruntime's own QNN configuration, `onnxruntime.quantization.execution_providers.
qnn.get_qnn_qdq_config`: unsigned asymmetric activations (QUInt8 by default) and unsigned asymmetric
per-tensor weights (QUInt8, `per_channel=False`), with `MinimumRealRange=0.0001` so that no tensor
gets a near-zero scale. The QNN provider's docs: "QNN operators typically support the uint8 and
uint16 data types", and its MatMul on HTP takes (uint8, uint8), (uint8, uint16) or (uint16, uint8)
inputs.

Weights stay per-tensor. Per-channel weights would need more than a flag: onnxruntime's quantizer
makes every Conv, Gemm *and* MatMul weight per-channel once `per_channel` is on, QNN has no
per-channel MatMul (`get_qnn_qdq_config` adds per-tensor overrides for MatMul weights, model by
model), and the provider's docs do not say which per-channel weight encodings HTP takes (signed,
symmetric?), so that would need the hardware to verify. A model that loses accuracy here should try
`activation=uint16` first.

`activation=uint16` gives A16W8 (16-bit activations, 8-bit weights), for models whose activations
do not fit 8 bits. ONNX QuantizeLinear/DequantizeLinear take 16-bit types only from opset 21, and
qconvert exports at opset 18: like `get_qnn_qdq_config` below opset 21, the 16-bit config sets
onnxruntime's `UseQDQContribOps`, so the Q/DQ nodes are onnxruntime's `com.microsoft` ones, which
the QNN provider takes ("Provides 16-bit integer (de)quantization support"). onnxruntime 1.32 also
raises the model to opset 21 by itself for 16-bit types; the contrib nodes are valid there too.
QNN needs fixed output ranges for 16-bit Sigmoid and Tanh (`get_qnn_qdq_config` sets them with
per-tensor overrides); qconvert does not write those overrides, so `graph_violations` refuses a
16-bit graph whose Sigmoid/Tanh outputs do not have them.

Provider: `backend_type` htp (the NPU; the default) or cpu (QNN's reference CPU backend, for
integration tests). `backend_type` is the platform-independent form of `backend_path` (which needs
"libQnnHtp.so" on Android/Linux but "QnnHtp.dll" on Windows on Snapdragon, where onnxruntime's QNN
Python packages run); it needs onnxruntime 1.22 or newer on the device. On HTP:
`htp_performance_mode` (an option, default burst) and `htp_graph_finalization_optimization_mode` 3
(longest graph preparation, best graph).

QNN also needs static shapes: "QNN EP does not support models with dynamic shapes (e.g., a dynamic
batch size)". qconvert exports a dynamic batch axis, so this target fixes it in model.onnx after
quantization (option `batch`, default 1) with onnxruntime's own shape tools; another dynamic axis
(a sequence length, say) is refused with the fix: export with fixed shapes (`--input NAME:SHAPE`).

Per-layer formats inside the static graph (`--recover mixed_precision`): int8, a16w8 (uint16
activations through com.microsoft Q/DQ; onnxruntime documents 8/16-bit mixed precision for this
provider) and fp16 (the layer in float16 between Casts). Not fp32: HTP computes float layers in fp16
(the provider's `enable_htp_fp16_precision`, on by default), so an fp32 layer would not run as fp32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from qconvert.artifacts import save_onnx
from qconvert.errors import ConfigError
from qconvert.targets.base import (
    COMMON_INT8_OPS,
    Options,
    Provider,
    Target,
    TargetOption,
    Violation,
    graph_violations,
    missing_provider,
)
from qconvert.types import QuantizeConfig

if TYPE_CHECKING:
    from pathlib import Path

    import onnx

    from qconvert.calibrate import ModelInput

QNN_EP = "QNNExecutionProvider"
PERFORMANCE_MODES = (
    "burst",
    "sustained_high_performance",
    "high_performance",
    "balanced",
    "default",
    "low_balanced",
    "power_saver",
    "low_power_saver",
    "high_power_saver",
)
OPTIONS = (
    TargetOption(
        "activation",
        "uint8",
        "activation type: uint8 (A8W8), or uint16 (A16W8) for models that lose "
        "accuracy with 8-bit activations",
        ("uint8", "uint16"),
    ),
    TargetOption(
        "backend", "htp", "QNN backend: htp (the NPU) or cpu (QNN's reference CPU backend)", ("htp", "cpu")
    ),
    TargetOption("batch", "1", "the fixed batch size model.onnx is given (QNN needs static shapes)"),
    TargetOption(
        "performance_mode",
        "burst",
        "HTP power/performance mode (burst: lowest latency, most power)",
        PERFORMANCE_MODES,
    ),
)
# QNN's required output encodings for 16-bit Sigmoid and Tanh (onnxruntime's QnnCompatibilityOverrides):
# op type -> (scale, zero point) for uint16 outputs
UINT16_FIXED_OUTPUTS = {"Sigmoid": (1.0 / 65536.0, 0), "Tanh": (1.0 / 32768.0, 32768)}


def _fixed_output_problems(model: onnx.ModelProto) -> list[Violation]:
    from onnx import TensorProto, numpy_helper

    init = {t.name: t for t in model.graph.initializer}
    quantizers = {
        n.input[0]: n for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) >= 3
    }
    problems = []
    for node in model.graph.node:
        want = UINT16_FIXED_OUTPUTS.get(node.op_type)
        q = quantizers.get(node.output[0]) if want else None
        if q is None or want is None or q.input[1] not in init or q.input[2] not in init:
            continue
        zp = init[q.input[2]]
        if zp.data_type != TensorProto.UINT16:
            continue
        scale = float(numpy_helper.to_array(init[q.input[1]]))
        zero = int(numpy_helper.to_array(zp))
        if abs(scale - want[0]) > 1e-12 or zero != want[1]:
            reason = (
                f"{node.name or '?'} ({node.op_type}): a 16-bit output needs scale {want[0]:.3g} and "
                f"zero point {want[1]} on QNN, got {scale:.3g} and {zero}"
            )
            problems.append(Violation("fixed-output-range", node.name or None, reason))
    return problems


# fmt: off
HTP_QUANTIZED_OPS = frozenset({
    "Sigmoid", "Tanh", "Softmax", "LeakyRelu", "PRelu", "HardSwish", "HardSigmoid", "Gelu",
    "ConvTranspose", "LayerNormalization", "InstanceNormalization", "BatchNormalization", "Sub",
    "Div", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "DepthToSpace", "SpaceToDepth",
    "Tile", "Expand", "ArgMax", "ArgMin", "TopK", "Where", "Sqrt", "Exp", "Log", "Elu", "Neg",
    "Abs", "Max", "Min", "Pow"
})
# fmt: on


class QnnTarget(Target):
    def why_not(self, bits: int, mode: str) -> str:
        if mode == "dynamic":
            return " (QNN's HTP runs only static quantized graphs; it has no DynamicQuantizeLinear)"
        return ""

    def quantize_config(self, bits: int, mode: str, calibration_method: str, opts: Options) -> QuantizeConfig:
        extra: list[tuple[str, object]] = [("MinimumRealRange", 0.0001)]
        if opts["activation"] == "uint16":
            extra.append(("UseQDQContribOps", True))
        return QuantizeConfig(
            bits=bits,
            mode=mode,
            format="qdq",
            activation_type=opts["activation"],
            weight_type="uint8",
            per_channel=False,
            activation_symmetric=False,
            weight_symmetric=False,
            reduce_range=False,
            calibration_method=calibration_method,
            extra_options=tuple(extra),
        )

    def providers(self, inputs: Sequence[ModelInput], opts: Options) -> list[Provider]:
        options = {"backend_type": opts["backend"]}
        if opts["backend"] == "htp":
            options["htp_performance_mode"] = opts["performance_mode"]
            options["htp_graph_finalization_optimization_mode"] = "3"
        return [Provider(QNN_EP, options), Provider("CPUExecutionProvider")]

    def resolve_options(self, given: Options | None = None) -> dict[str, str]:
        opts = super().resolve_options(given)
        if not opts["batch"].isdigit() or int(opts["batch"]) < 1:
            raise ConfigError(
                f"--target-option batch={opts['batch']}: give a positive whole number, e.g. batch=1."
            )
        return opts

    def finalize(self, model_path: Path, inputs: Sequence[ModelInput], opts: Options) -> str | None:
        import onnx
        from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_input_shape_fixed

        batch = int(opts["batch"])
        dynamic = [i for i in inputs if None in i.dims[1:]]
        if dynamic:
            raise ConfigError(
                f"--target qnn needs static shapes, and input(s) {', '.join(i.name for i in dynamic)} have "
                "dynamic axes besides the batch. Export with fixed shapes: --input NAME:SHAPE for each input."
            )
        if not any(i.dims and i.dims[0] is None for i in inputs):
            return None
        model = onnx.load(str(model_path))
        for inp in inputs:
            make_input_shape_fixed(model.graph, inp.name, [batch if d is None else d for d in inp.dims])
        fix_output_shapes(model)
        save_onnx(model, model_path)
        return (
            f"qnn: the batch axis of model.onnx is fixed to {batch} (QNN needs static shapes; option batch)"
        )

    def graph_violations(self, model: onnx.ModelProto, qc: QuantizeConfig) -> list[Violation]:
        static = [
            Violation("static-shape", i.name, f"input {i.name} has a dynamic axis; QNN needs static shapes")
            for i in model.graph.input
            if any(not d.HasField("dim_value") for d in i.type.tensor_type.shape.dim)
        ]
        return graph_violations(model, qc) + _fixed_output_problems(model) + static

    def provider_violations(self, model: onnx.ModelProto, providers: Sequence[Provider]) -> list[Violation]:
        qnn = next((p for p in providers if p.name == QNN_EP), None)
        if qnn is None:
            return [missing_provider("QNN")]
        if "backend_type" in qnn.options and "backend_path" in qnn.options:
            reason = "backend_type and backend_path are both set; the QNN provider takes only one"
            return [Violation("provider-option", None, reason)]
        if not ({"backend_type", "backend_path"} & set(qnn.options)):
            reason = "neither backend_type nor backend_path is set, so the QNN provider has no backend"
            return [Violation("provider-option", None, reason)]
        return []


QNN = QnnTarget(
    name="qnn",
    description="Qualcomm NPU (HTP) through the QNN EP: u8 (or u16) asymmetric activations, u8 per-tensor "
    "weights, as onnxruntime's QNN config; the batch axis is fixed (QNN needs static shapes)",
    modes={8: ("static",)},
    refused_bits={
        4: "QNN's HTP takes 4-bit weights only as block-quantized int4 Q/DQ (LPBQ), not onnxruntime's "
        "MatMulNBits, which onnxruntime maps to QNN's GPU backend only; qconvert writes neither for QNN",
        16: "16-bit here means 16-bit activations: use --bits 8 with --target-option activation=uint16 "
        "(A16W8); HTP has no bf16, and fp16 is not offered",
    },
    options=OPTIONS,
    # QNN's op list (HTP runs what it takes quantized; data types vary by op)
    int8_ops=COMMON_INT8_OPS | HTP_QUANTIZED_OPS,
    layer_formats=("int8", "a16w8", "fp16"),
)
