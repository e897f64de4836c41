"""Quantization methods, by mode. One module per method; what each needs and honours is data here
(`Method`), read by the pipeline instead of tests on the mode's name. Third-party methods register
through the `qconvert.quantizers` entry-point group (see registry.load_plugins); the `--mode` and
`--algorithm` choices come from here (qconvert.choices), in registration order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from qconvert.calibrate import Dataset
from qconvert.quantize.bf16 import quantize_bf16
from qconvert.quantize.dynamic import quantize_dynamic_int8
from qconvert.quantize.float16 import quantize_fp16
from qconvert.quantize.implicit import quantize_implicit_int8
from qconvert.quantize.int4 import WEIGHT_ALGORITHMS, quantize_int4
from qconvert.quantize.static import quantize_static_int8
from qconvert.quantize.weight_only import quantize_weight_only
from qconvert.registry import Registry
from qconvert.types import QuantizeConfig


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


@dataclass(frozen=True)
class Method:
    """A quantization method and its capabilities, as data. Called like the function it wraps."""

    quantize: Quantizer
    needs_calibration: bool = False  # refuses to run without calibration data
    honours_exclude: bool = False  # takes QuantizeConfig.nodes_to_exclude (--exclude)
    honours_include: bool = False  # takes QuantizeConfig.nodes_to_include (--include)
    # per-layer sensitivity and --auto can re-quantize it with nodes excluded (an explicit Q/DQ graph)
    supports_sensitivity: bool = False
    # a user may ask for it with --mode (implicit is not: TensorRT's quantization=implicit chooses it)
    selectable: bool = True
    # --algorithm values it takes (how 4-bit weights are rounded), the first being the default
    algorithms: tuple[str, ...] = ()

    def __call__(
        self,
        src: Path,
        dest: Path,
        qc: QuantizeConfig,
        calibration: Dataset | None,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> Path:
        return self.quantize(src, dest, qc, calibration, on_batch)


def as_method(entry: object) -> Method:
    """A plugin may register a Method or a bare quantizer function (then it declares no capabilities)."""
    if isinstance(entry, Method):
        return entry
    if callable(entry):
        return Method(entry)
    raise TypeError(f"a quantizer plugin must be a qconvert.quantize.Method or a function, not {entry!r}")


QUANTIZERS: Registry[Method] = Registry("quantization mode", "--mode", by_name=False)
QUANTIZERS.register("static")(
    Method(
        quantize_static_int8,
        needs_calibration=True,
        honours_exclude=True,
        honours_include=True,
        supports_sensitivity=True,
    )
)
QUANTIZERS.register("dynamic")(Method(quantize_dynamic_int8, honours_exclude=True, honours_include=True))
QUANTIZERS.register("weight-only")(Method(quantize_weights_only, algorithms=WEIGHT_ALGORITHMS))
QUANTIZERS.register("fp16")(Method(quantize_fp16, honours_exclude=True))
QUANTIZERS.register("bf16")(Method(quantize_bf16))
QUANTIZERS.register("implicit")(Method(quantize_implicit_int8, needs_calibration=True, selectable=False))
QUANTIZERS.plugins("qconvert.quantizers", as_method)

__all__ = ["QUANTIZERS", "Method", "Quantizer"]
