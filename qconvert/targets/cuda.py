"""NVIDIA GPUs through onnxruntime's CUDA provider (no TensorRT).

- fp16 (`--bits 16`): the graph in float16, with fp32 inputs and outputs and the ops in
  `quantize.float16.FP16_KEEP_FP32_OPS` kept in fp32. This is usually the fast path on this provider: its
  Conv/MatMul/Gemm kernels run fp16 on tensor cores.
- int8 (`--bits 8`): explicit Q/DQ, symmetric signed int8 activations and weights (S8S8, zero
  point 0), per-channel weights, float bias. Be aware: onnxruntime's CUDA provider runs few int8
  kernels. It has QuantizeLinear/DequantizeLinear but fuses no Q/DQ node unit, so every Conv,
  MatMul and Gemm between them runs in float after a DequantizeLinear. The int8 graph is then
  smaller (about 4x) but usually *slower* than fp32 on this provider. For int8 speed on NVIDIA use
  `--target tensorrt`, which builds real int8 kernels from the same kind of graph.
- bf16 (`--bits 16 --mode bf16`): the graph in bfloat16 (fp32's range, less precision), fp32
  inputs and outputs; ops without a CUDA bf16 kernel at the model's opset stay fp32 (see
  quantize/bf16.py: at opset 18 that includes Conv, whose bf16 kernel starts at opset 22). Needs an
  Ampere or newer GPU (compute capability 8.0+) for bf16 tensor cores.
- 4-bit weight-only (`--bits 4`): MatMulNBits, which the CUDA provider runs (dequantizing the
  4-bit blocks inside its kernel), asymmetric blocks; accuracy_level is left unset (it is a CPU
  setting).
- dynamic int8 is refused: ConvInteger and DynamicQuantizeLinear have no CUDA kernels, and the CUDA
  MatMulInteger takes only int8 x int8 while DynamicQuantizeLinear produces uint8. onnxruntime
  would silently run those nodes on the CPU, copying tensors to and from the GPU around each.
- per-layer formats inside the int8 Q/DQ graph (`--recover mixed_precision`): int8, fp16 (Casts
  and float16 weights; the provider's fp16 Conv/MatMul/Gemm kernels) and fp32. No a16w8: qconvert
  does not rely on CUDA kernels for onnxruntime's 16-bit com.microsoft Q/DQ.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from qconvert.errors import ConfigError
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

CUDA = "CUDAExecutionProvider"
CONV_ALGO_SEARCH = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
# integer-only ops with no CUDA kernel at all (MatMulInteger has one, for int8 x int8 only)
NO_CUDA_KERNEL = INTEGER_ONLY_OPS - {"MatMulInteger"}

OPTIONS = (TargetOption("device_id", "0", "index of the CUDA device to run on"),)


def no_cuda_kernel(model: onnx.ModelProto) -> list[str]:
    """Op types in `model` that the CUDA provider cannot run, so onnxruntime puts them on the CPU."""
    from onnx import TensorProto

    uint8 = {t.name for t in model.graph.initializer if t.data_type == TensorProto.UINT8}
    producers = {out: n.op_type for n in model.graph.node for out in n.output}
    found = {n.op_type for n in model.graph.node if n.op_type in NO_CUDA_KERNEL}
    for n in model.graph.node:
        if n.op_type == "MatMulInteger" and any(
            producers.get(i) == "DynamicQuantizeLinear" or i in uint8 for i in n.input
        ):
            found.add("MatMulInteger (uint8)")
    return sorted(found)


class CudaTarget(Target):
    def why_not(self, bits: int, mode: str) -> str:
        if mode == "dynamic":
            return (
                " (dynamic int8 inserts DynamicQuantizeLinear and ConvInteger, which have no CUDA kernels, "
                "and a uint8 MatMulInteger, which CUDA runs only for int8 x int8: onnxruntime would "
                "silently run them on the CPU)"
            )
        return ""

    def resolve_options(self, given: Options | None = None) -> dict[str, str]:
        opts = super().resolve_options(given)
        if not opts["device_id"].isdigit():
            raise ConfigError(
                f"--target-option device_id={opts['device_id']}: give the CUDA device index, "
                "e.g. device_id=0."
            )
        return opts

    def quantize_config(self, bits: int, mode: str, calibration_method: str, opts: Options) -> QuantizeConfig:
        if mode == "fp16":
            return presets.fp16(bits, mode)
        if mode == "bf16":
            return presets.bf16(bits)
        if bits == 4:
            return presets.int4_weight_only(accuracy_level=0)
        return presets.s8s8_symmetric(bits, mode, calibration_method)

    def providers(self, inputs: Sequence[ModelInput], opts: Options) -> list[Provider]:
        options = {
            "device_id": opts["device_id"],
            "cudnn_conv_algo_search": "EXHAUSTIVE",  # time every cuDNN algorithm once, keep the fastest
            "do_copy_in_default_stream": "1",
        }
        return [Provider(CUDA, options), Provider("CPUExecutionProvider")]

    def facts(self) -> dict[str, object]:
        import onnxruntime as ort

        return {
            "cuda_provider_installed": CUDA in ort.get_available_providers(),
            "int8_kernels": "QuantizeLinear/DequantizeLinear only: ops between Q/DQ run in float",
        }

    def provider_violations(self, model: onnx.ModelProto, providers: Sequence[Provider]) -> list[Violation]:
        cuda = next((p for p in providers if p.name == CUDA), None)
        if cuda is None:
            return [missing_provider("CUDA")]
        problems = []
        missing = no_cuda_kernel(model)
        if missing:
            reason = (
                f"the graph has {', '.join(missing)}, which the CUDA provider has no kernels for: "
                "onnxruntime would silently run those nodes on the CPU, with copies to and from the GPU "
                "around each"
            )
            problems.append(Violation("no-kernel", None, reason))
        algo = cuda.options.get("cudnn_conv_algo_search", "EXHAUSTIVE")
        if algo not in CONV_ALGO_SEARCH:
            reason = f"cudnn_conv_algo_search={algo} is not one of {', '.join(CONV_ALGO_SEARCH)}"
            problems.append(Violation("provider-option", None, reason))
        if not cuda.options.get("device_id", "0").isdigit():
            reason = f"device_id={cuda.options['device_id']} is not a device index"
            problems.append(Violation("provider-option", None, reason))
        return problems


CUDA_TARGET = CudaTarget(
    name="cuda",
    description=(
        "NVIDIA GPU, onnxruntime CUDA provider: fp16 (usually the fast path) or bf16 (Ampere+), "
        "S8S8 Q/DQ int8, which the CUDA provider runs mostly in float (smaller, rarely faster; use "
        "tensorrt for int8 speed), or 4-bit weight-only MatMulNBits"
    ),
    modes={16: ("fp16", "bf16"), 8: ("static",), 4: ("weight-only",)},
    options=OPTIONS,
    # the CUDA provider runs only the Q/DQ nodes themselves in int8
    int8_ops=frozenset({"QuantizeLinear", "DequantizeLinear"}),
    layer_formats=("int8", "fp16", "fp32"),
)
