"""ARM64 edge CPUs (phones, Raspberry Pi class boards, Graviton) through onnxruntime's XNNPACK and
CPU providers.

Static: S8S8 Q/DQ, signed activations (asymmetric) and signed symmetric per-channel weights.
onnxruntime's quantization docs: "ONNX Runtime quantization on CPU can run U8U8, U8S8 and S8S8.
S8S8 with QDQ is the default setting and balances performance and accuracy. It should be the first
choice." The U8S8 saturation caveat (and `reduce_range`, its workaround) is for x86-64 AVX2/AVX512
without VNNI; the same docs: "There is no such issue on other CPU architectures (x64 with VNNI and
ARM)", and "ARM with dot-product instructions can get better performance". S8S8 is also the only
per-channel layout the XNNPACK provider takes: its quantized Conv accepts s8 activations with s8
per-channel weights (zero point 0), or u8 with u8 per-tensor weights, and no U8S8 mix
(`GetTensorQuantType` in onnxruntime's xnnpack/detail/utils.cc: "we do not handle u8s8").

Dynamic: DynamicQuantizeLinear (always u8) + ConvInteger/MatMulInteger with signed per-channel
weights, run by the CPU provider (MLAS has ARM64 dot-product kernels for it).

4-bit weight-only: MatMulNBits, asymmetric blocks, accuracy_level 4 (int8 compute, which MLAS
runs with the ARM64 dot-product instructions). XNNPACK has no MatMulNBits, so those nodes run on the
CPU provider.

XNNPACK's limits, as onnxruntime's XNNPACK docs and sources state them: it takes quantized Conv,
ConvTranspose, MaxPool, AveragePool, Softmax and Resize (2D only, constant weights and quantization
parameters); Gemm and MatMul only in float. So in a Q/DQ graph the fully connected layers, and
everything else it does not claim, run on the CPU provider, and in a dynamic graph XNNPACK runs
little or nothing. XNNPACK keeps its own thread pool: onnxruntime recommends setting the session's
intra-op threads to 1 and turning off intra-op spinning (session options, not provider options, so
not part of what this target declares) when XNNPACK does most of the work.

Per-layer formats inside a static int8 graph (`--recover mixed_precision`): int8, a16w8 (int16
activations through onnxruntime's com.microsoft Q/DQ, which the CPU provider runs; XNNPACK takes only
8-bit, so such a layer runs on the CPU provider in fp32 between dequantize and quantize) and fp32.
Not fp16: whether an onnxruntime build has the ARM64 fp16 Conv/MatMul kernels depends on how it was
built, and qconvert cannot check that from here.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from qconvert.errors import ConfigError
from qconvert.targets import presets
from qconvert.targets.base import ORT_CPU_INT8_OPS, Options, Provider, Target, TargetOption, Violation
from qconvert.types import QuantizeConfig

if TYPE_CHECKING:
    import onnx

    from qconvert.calibrate import ModelInput

XNNPACK_EP = "XnnpackExecutionProvider"
CPU_EP = "CPUExecutionProvider"


@dataclass(frozen=True)
class CountOption(TargetOption):
    """An option that takes a whole number >= 0."""

    def check(self, target: str, value: str) -> str:
        if not value.isdigit():
            raise ConfigError(
                f"--target-option {self.name}={value}: not valid for --target {target}. "
                "Valid values: a whole number >= 0 (0: as many as onnxruntime's intra-op thread pool)."
            )
        return str(int(value))


OPTIONS = (
    TargetOption("xnnpack", "true", "put the XNNPACK provider ahead of the CPU provider", ("true", "false")),
    CountOption(
        "threads",
        "0",
        "XNNPACK's thread pool size (its intra_op_num_threads); 0: the session's intra-op count",
    ),
)


def _zero_point_types(model: onnx.ModelProto) -> dict[str, tuple[int, bool]]:
    """DequantizeLinear output -> (zero-point data type, per-channel), for DQs that have a zero point."""
    init = {t.name: t for t in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3 or node.input[2] not in init:
            continue
        scale = init.get(node.input[1])
        per_channel = scale is not None and len(scale.dims) > 0 and scale.dims[0] > 1
        found[node.output[0]] = (init[node.input[2]].data_type, per_channel)
    return found


def xnnpack_conv_problems(model: onnx.ModelProto) -> list[str]:
    """Quantized Convs whose types XNNPACK has no kernel for (so they would run on the CPU provider)."""
    from onnx import TensorProto

    dq = _zero_point_types(model)
    problems = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose") or len(node.input) < 2:
            continue
        act, weight = dq.get(node.input[0]), dq.get(node.input[1])
        if act is None or weight is None:
            continue
        if act[0] == TensorProto.UINT8 and weight[0] == TensorProto.INT8:
            problems.append(f"{node.name or '?'}: u8 activations with s8 weights (U8S8)")
        elif weight[0] == TensorProto.UINT8 and weight[1]:
            problems.append(f"{node.name or '?'}: per-channel u8 weights")
    return problems


ARM64_INT4_ACCURACY_LEVEL = 4  # MatMulNBits int8 compute


class Arm64Target(Target):
    def quantize_config(self, bits: int, mode: str, calibration_method: str, opts: Options) -> QuantizeConfig:
        if bits == 4:
            return presets.int4_weight_only(ARM64_INT4_ACCURACY_LEVEL)
        if mode == "static":  # S8S8: signed asymmetric activations, the layout XNNPACK takes
            return replace(presets.u8s8(bits, mode, calibration_method), activation_type="int8")
        # dynamic: DynamicQuantizeLinear is always u8
        return presets.u8s8(bits, mode, calibration_method, format="qoperator")

    def providers(self, inputs: Sequence[ModelInput], opts: Options) -> list[Provider]:
        cpu = Provider(CPU_EP)
        if opts["xnnpack"] != "true":
            return [cpu]
        return [Provider(XNNPACK_EP, {"intra_op_num_threads": opts["threads"]}), cpu]

    def provider_violations(self, model: onnx.ModelProto, providers: Sequence[Provider]) -> list[Violation]:
        names = [p.name for p in providers]
        if CPU_EP not in names:
            reason = "the CPU provider is missing: it runs every node XNNPACK does not take"
            return [Violation("provider-missing", None, reason)]
        if XNNPACK_EP not in names:
            return []
        problems = xnnpack_conv_problems(model)
        if not problems:
            return []
        reason = (
            f"XNNPACK is listed first but has no kernel for {len(problems)} quantized Conv(s), which would "
            f"silently run on the CPU provider: {'; '.join(problems[:5])}"
        )
        return [Violation("no-kernel", None, reason)]

    def not_here(self, providers: Sequence[Provider]) -> str | None:
        missing = super().not_here(providers)
        if missing is None and not _is_arm64():
            # the CPU provider here is x86's: its fused int8 kernels (which can saturate without VNNI)
            # are not the ones an ARM64 CPU runs
            return f"this machine is {platform.machine()}, not ARM64, so its CPU provider is not the target's"
        return missing

    def facts(self) -> dict[str, object]:
        return {"build_machine": platform.machine(), "build_machine_is_arm64": _is_arm64()}


def _is_arm64() -> bool:
    return platform.machine().lower() in ("aarch64", "arm64")


ARM64 = Arm64Target(
    name="arm64",
    description="ARM64 CPUs through the XNNPACK EP, then the CPU EP: S8S8 Q/DQ with per-channel weights "
    "(XNNPACK runs quantized Conv/pool/Softmax/Resize; Gemm/MatMul fall to the CPU EP), or dynamic int8; "
    "4-bit weight-only MatMulNBits on the CPU EP",
    modes={8: ("static", "dynamic"), 4: ("weight-only",)},
    options=OPTIONS,
    int8_ops=ORT_CPU_INT8_OPS,
    layer_formats=("int8", "a16w8", "fp32"),
)
