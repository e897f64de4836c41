"""Quantization methods, by mode. One module per method."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from qconvert.calibrate import Dataset
from qconvert.config import QuantizeConfig
from qconvert.quantize.bf16 import quantize_bf16
from qconvert.quantize.dynamic import quantize_dynamic_int8
from qconvert.quantize.float16 import quantize_fp16
from qconvert.quantize.implicit import quantize_implicit_int8
from qconvert.quantize.int4 import quantize_int4
from qconvert.quantize.static import quantize_static_int8
from qconvert.quantize.weight_only import quantize_weight_only
from qconvert.registry import Registry


class Quantizer(Protocol):
    """src (prepared fp32 ONNX) -> dest (quantized ONNX), checked by onnx.checker."""

    def __call__(
        self,
        src: Path,
        dest: Path,
        qc: QuantizeConfig,
        calibration: Dataset | None,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> Path: ...


def quantize_weights_only(
    src: Path,
    dest: Path,
    qc: QuantizeConfig,
    calibration: Dataset | None,
    on_batch: Callable[[int, int], None] | None = None,
) -> Path:
    """weight-only: 4-bit MatMulNBits blocks at --bits 4, int8 DequantizeLinear weights otherwise."""
    quantize = quantize_int4 if qc.bits == 4 else quantize_weight_only
    return quantize(src, dest, qc, calibration, on_batch)


QUANTIZERS: Registry[Quantizer] = Registry("quantization mode", "--mode")
QUANTIZERS.register("static")(quantize_static_int8)
QUANTIZERS.register("dynamic")(quantize_dynamic_int8)
QUANTIZERS.register("fp16")(quantize_fp16)
QUANTIZERS.register("bf16")(quantize_bf16)
QUANTIZERS.register("weight-only")(quantize_weights_only)
QUANTIZERS.register("implicit")(quantize_implicit_int8)

__all__ = ["QUANTIZERS", "Quantizer"]
