"""x86 CPU through onnxruntime's CPU provider.

Fastest with unsigned 8-bit activations and signed per-channel weights (U8S8). On CPUs without
VNNI, the AVX2 u8 x s8 multiply-add can saturate, so weights use a reduced 7-bit range there.

4 bits: weight-only MatMulNBits (the provider has the kernel), asymmetric blocks, accuracy_level 4:
the kernel quantizes each block of activations to int8 and uses integer dot products, which is what
makes it faster than fp32 here (accuracy_level 0 dequantizes to fp32 and is slower than fp32).

16 bits, for accuracy experiments rather than speed (on x86 both are slower than fp32, and the
latency figure says so): fp16 (the default, what most people mean by 16-bit; the provider runs most
fp16 nodes through fp32 kernels with Casts), or static A16W8: uint16 activations and int8 per-channel
weights in Q/DQ form. ONNX Q/DQ takes 16-bit types only from opset 21, so below it the Q/DQ nodes
are onnxruntime's com.microsoft ones (`UseQDQContribOps`, as the qnn target does); the provider has
no 16-bit fused kernels, so each node runs in fp32 between a dequantize and a quantize.

Per-layer formats inside a static int8 graph (`--recover mixed_precision`): int8, a16w8 (that layer's
activation inputs through 16-bit com.microsoft Q/DQ, which the provider runs, its weights int8) and
fp32. Not fp16: the provider has no fp16 Conv/MatMul kernel on x86 (onnxruntime inserts Casts and runs
the node in fp32, dropping the rounding), so an fp16 layer would cost two Casts and buy nothing.
Both raised formats leave the fused int8 kernels for that layer: a16w8 is smaller than fp32 (int8
weights) but not faster.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from qconvert.errors import ConfigError
from qconvert.targets import presets
from qconvert.targets.base import ORT_CPU_INT8_OPS, Options, Provider, Target, TargetOption
from qconvert.types import QuantizeConfig

if TYPE_CHECKING:
    from qconvert.calibrate import ModelInput


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def has_vnni() -> bool:
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags())


OPTIONS = (
    TargetOption(
        "format",
        "auto",
        "static int8 graph format; auto quantizes both and keeps the faster one here",
        ("auto", "qdq", "qoperator"),
    ),
    TargetOption(
        "reduce_range",
        "auto",
        "7-bit weights; auto turns it on for CPUs without VNNI",
        ("auto", "true", "false"),
    ),
)


# MatMulNBits accuracy_level on CPUs: 4 = int8 compute (activations quantized per block)
CPU_INT4_ACCURACY_LEVEL = 4


def a16w8_config(calibration_method: str) -> QuantizeConfig:
    """uint16 asymmetric activations, int8 symmetric per-channel weights, Q/DQ (contrib Q/DQ ops).
    No reduce_range: no int8 x uint8 kernel runs these, so nothing can saturate."""
    u8s8 = presets.u8s8(16, "static", calibration_method)
    return replace(u8s8, activation_type="uint16", extra_options=(("UseQDQContribOps", True),))


class CpuTarget(Target):
    def why_not(self, bits: int, mode: str) -> str:
        if mode == "bf16":
            return (
                " (onnxruntime's CPU provider has Cast for bfloat16 but no bf16 MatMul, Gemm or Conv, so a "
                "bf16 graph would not load; bf16 is for --target cuda or tensorrt)"
            )
        return ""

    def quantize_candidates(
        self, bits: int, mode: str, calibration_method: str, opts: Options
    ) -> list[QuantizeConfig]:
        if bits == 4:
            return [presets.int4_weight_only(CPU_INT4_ACCURACY_LEVEL)]
        if bits == 16 and mode == "fp16":
            return [presets.fp16(bits, mode)]
        if bits == 16:
            if opts["format"] == "qoperator":
                raise ConfigError(
                    "--target-option format=qoperator: onnxruntime has no 16-bit QOperator ops; A16W8 "
                    "(--bits 16 --mode static) is Q/DQ only. Use format=qdq or auto."
                )
            return [a16w8_config(calibration_method)]
        reduce = not has_vnni() if opts["reduce_range"] == "auto" else opts["reduce_range"] == "true"
        base = presets.u8s8(bits, mode, calibration_method, format="qoperator", reduce_range=reduce)
        if mode != "static":
            return [base]
        formats = ("qdq", "qoperator") if opts["format"] == "auto" else (opts["format"],)
        return [replace(base, format=f) for f in formats]

    def providers(self, inputs: Sequence[ModelInput], opts: Options) -> list[Provider]:
        return [Provider("CPUExecutionProvider")]

    def facts(self) -> dict[str, object]:
        flags = cpu_flags()
        return {
            "machine": platform.machine(),
            "vnni": has_vnni(),
            "avx2": "avx2" in flags,
            "avx512f": "avx512f" in flags,
            "reduce_range": not has_vnni(),  # what reduce_range=auto chooses on this CPU
        }


CPU = CpuTarget(
    name="cpu",
    description="x86 CPU, onnxruntime CPU provider: U8S8 static int8 (Q/DQ or QOperator, whichever "
    "measures faster here) or dynamic int8; 4-bit weight-only MatMulNBits (int8 compute); 16-bit fp16 "
    "or A16W8 (uint16 activations, int8 weights, Q/DQ) for accuracy experiments: on x86 both 16-bit "
    "modes are slower than fp32",
    modes={16: ("fp16", "static"), 8: ("static", "dynamic"), 4: ("weight-only",)},
    options=OPTIONS,
    int8_ops=ORT_CPU_INT8_OPS,
    layer_formats=("int8", "a16w8", "fp32"),
)
