"""Quantization layouts that several targets share, as QuantizeConfig builders: one place says what
U8S8 or symmetric S8S8 means, and a target module says which layout it takes and why.

Every field a layout decides is spelled out here rather than left to QuantizeConfig's defaults, so a
layout reads whole and does not change when a default does.
"""

from __future__ import annotations

from qconvert.targets.base import INTEGER_ONLY_OPS
from qconvert.types import QuantizeConfig


def u8s8(
    bits: int, mode: str, calibration_method: str, *, format: str = "qdq", reduce_range: bool = False
) -> QuantizeConfig:
    """Unsigned asymmetric activations, signed symmetric per-channel weights, int32 bias: what x86's
    u8 x s8 integer kernels take, NNCF's `mixed` preset, and dynamic int8 (DynamicQuantizeLinear
    always makes uint8)."""
    return QuantizeConfig(
        bits=bits,
        mode=mode,
        format=format,
        activation_type="uint8",
        weight_type="int8",
        per_channel=True,
        activation_symmetric=False,
        weight_symmetric=True,
        reduce_range=reduce_range,
        quantize_bias=True,
        calibration_method=calibration_method,
    )


def s8s8_symmetric(bits: int, mode: str, calibration_method: str) -> QuantizeConfig:
    """Signed symmetric activations and per-channel weights (every zero point 0) in Q/DQ form, float
    bias, no integer-only ops: NVIDIA's explicit quantization (TensorRT, and the CUDA provider)."""
    return QuantizeConfig(
        bits=bits,
        mode=mode,
        format="qdq",
        activation_type="int8",
        weight_type="int8",
        per_channel=True,
        activation_symmetric=True,
        weight_symmetric=True,
        reduce_range=False,
        # TensorRT wants float bias; on the CUDA provider an int32 bias only adds a DequantizeLinear
        quantize_bias=False,
        calibration_method=calibration_method,
        forbidden_ops=INTEGER_ONLY_OPS,
    )


def fp16(bits: int, mode: str) -> QuantizeConfig:
    """fp16 weights and activations, fp32 inputs and outputs (QuantizeConfig's fp16 defaults)."""
    return QuantizeConfig(bits=bits, mode=mode, format="fp16", forbidden_ops=INTEGER_ONLY_OPS)


def bf16(bits: int) -> QuantizeConfig:
    """bf16 weights and activations, fp32 inputs and outputs. No op is kept in fp32 for range (bf16
    has fp32's); the bf16 quantizer keeps the ops without a CUDA bf16 kernel in fp32."""
    return QuantizeConfig(
        bits=bits, mode="bf16", format="bf16", forbidden_ops=INTEGER_ONLY_OPS, keep_fp32_ops=frozenset()
    )


def int4_weight_only(accuracy_level: int) -> QuantizeConfig:
    """4-bit weight-only (MatMulNBits): asymmetric blocks (a zero point each, the more accurate
    layout, which every MatMulNBits kernel takes), activations float. `weight_type` is the storage
    type: two 4-bit codes per uint8."""
    return QuantizeConfig(
        bits=4,
        mode="weight-only",
        format="matmulnbits",
        weight_type="uint8",
        weight_symmetric=False,
        quantize_bias=False,
        accuracy_level=accuracy_level,
    )
