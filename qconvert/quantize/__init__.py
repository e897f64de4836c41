"""Quantization methods, by mode. One module per method."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from qconvert.calibrate import Dataset
from qconvert.config import QuantizeConfig
from qconvert.quantize.dynamic import quantize_dynamic_int8
from qconvert.quantize.static import quantize_static_int8
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


QUANTIZERS: Registry[Quantizer] = Registry("quantization mode", "--mode")
QUANTIZERS.register("static")(quantize_static_int8)
QUANTIZERS.register("dynamic")(quantize_dynamic_int8)

__all__ = ["QUANTIZERS", "Quantizer"]
