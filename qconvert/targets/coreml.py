"""Apple devices (Neural Engine, GPU, CPU) through onnxruntime's CoreML provider.

- fp16 (`--bits 16`): the graph in float16 with fp32 inputs and outputs. The provider builds an ML
  Program (`ModelFormat=MLProgram`), the Core ML format that takes float16; a NeuralNetwork model
  takes only float32, so every fp16 node would fall back to onnxruntime's CPU provider.
- weight-only int8 (`--bits 8`): int8 weights with a per-output-channel scale and a
  DequantizeLinear each; activations stay float. This buys download and disk size (about 4x), not
  speed: the CoreML provider has no DequantizeLinear, so onnxruntime dequantizes on the CPU and Core
  ML computes in float. Create the session with the session option `session.disable_quant_qdq=1`:
  onnxruntime then folds each weight's DequantizeLinear into a float initializer when it loads the
  model, and Core ML receives constant weights, as it wants them.
- static int8 Q/DQ is not offered: the CoreML provider runs no QuantizeLinear/DequantizeLinear, so
  each Q/DQ pair would split the graph between Core ML and the CPU.

`MLComputeUnits` (target option `compute_units`) chooses where Core ML may run: ALL (default),
CPUAndNeuralEngine, CPUAndGPU or CPUOnly. The exported model has a dynamic batch axis; Core ML
accepts it, but the Neural Engine is at its best with fixed shapes (export with a fixed --input).

No per-layer formats (`--recover mixed_precision`): there is no static int8 graph to mix into.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from qconvert.targets import presets
from qconvert.targets.base import (
    INTEGER_ONLY_OPS,
    Options,
    Provider,
    Target,
    TargetOption,
    Violation,
    missing_provider,
)
from qconvert.types import QuantizeConfig

if TYPE_CHECKING:
    import onnx

    from qconvert.calibrate import ModelInput

COREML = "CoreMLExecutionProvider"
COMPUTE_UNITS = ("ALL", "CPUAndNeuralEngine", "CPUAndGPU", "CPUOnly")
MODEL_FORMATS = ("MLProgram", "NeuralNetwork")

OPTIONS = (
    TargetOption("compute_units", "ALL", "where Core ML may run the model (MLComputeUnits)", COMPUTE_UNITS),
)


class CoreMLTarget(Target):
    def why_not(self, bits: int, mode: str) -> str:
        if mode == "static":
            return (
                " (the CoreML provider runs no QuantizeLinear/DequantizeLinear, so a Q/DQ graph would be "
                "split between Core ML and the CPU at every pair)"
            )
        if mode == "dynamic":
            return " (the CoreML provider has no DynamicQuantizeLinear, ConvInteger or MatMulInteger)"
        if mode == "bf16":
            return " (Core ML's ML Program runs fp16 and fp32; the CoreML provider takes no bfloat16 tensors)"
        return ""

    def quantize_config(self, bits: int, mode: str, calibration_method: str, opts: Options) -> QuantizeConfig:
        if mode == "fp16":
            return presets.fp16(bits, mode)
        return QuantizeConfig(
            bits=bits,
            mode=mode,
            format="qdq",  # DequantizeLinear on weights only
            weight_type="int8",
            per_channel=True,
            weight_symmetric=True,
            quantize_bias=False,
            calibration_method=calibration_method,
            forbidden_ops=INTEGER_ONLY_OPS,
        )

    def providers(self, inputs: Sequence[ModelInput], opts: Options) -> list[Provider]:
        options = {"ModelFormat": "MLProgram", "MLComputeUnits": opts["compute_units"]}
        return [Provider(COREML, options), Provider("CPUExecutionProvider")]

    def facts(self) -> dict[str, object]:
        import onnxruntime as ort

        return {
            "coreml_provider_installed": COREML in ort.get_available_providers(),
            # what a weight-only model needs at load time (see the module docstring)
            "weight_only_session_config": {"session.disable_quant_qdq": "1"},
        }

    def provider_violations(self, model: onnx.ModelProto, providers: Sequence[Provider]) -> list[Violation]:
        from onnx import TensorProto

        coreml = next((p for p in providers if p.name == COREML), None)
        if coreml is None:
            return [missing_provider("CoreML")]
        problems = []
        fmt = coreml.options.get("ModelFormat", "NeuralNetwork")  # the provider's own default
        units = coreml.options.get("MLComputeUnits", "ALL")
        if fmt not in MODEL_FORMATS:
            problems.append(f"ModelFormat={fmt} is not one of {', '.join(MODEL_FORMATS)}")
        if units not in COMPUTE_UNITS:
            problems.append(f"MLComputeUnits={units} is not one of {', '.join(COMPUTE_UNITS)}")
        fp16 = any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer) or any(
            a.name == "to" and a.i == TensorProto.FLOAT16
            for n in model.graph.node
            for a in n.attribute
            if n.op_type == "Cast"
        )
        if fp16 and fmt != "MLProgram":
            problems.append(
                f"the graph is float16 but ModelFormat={fmt}: only an ML Program takes float16, so every "
                "fp16 node would run on the CPU provider instead"
            )
        return [Violation("provider-option", None, reason) for reason in problems]


COREML_TARGET = CoreMLTarget(
    name="coreml",
    description=(
        "Apple Neural Engine/GPU/CPU, onnxruntime CoreML provider (ML Program): fp16, or weight-only int8 "
        "(smaller file; computes in float)"
    ),
    modes={16: ("fp16",), 8: ("weight-only",)},
    refused_bits={
        4: "the CoreML provider has no MatMulNBits: every 4-bit MatMul would run on onnxruntime's CPU "
        "provider, outside Core ML",
    },
    options=OPTIONS,
    layer_formats=(),
)
