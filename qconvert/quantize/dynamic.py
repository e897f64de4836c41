"""Dynamic int8: weights quantized ahead of time, activations at run time (no calibration)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from qconvert.calibrate import Dataset
from qconvert.errors import QuantizationError
from qconvert.quantize._common import check_output, quant_type
from qconvert.types import QuantizeConfig


def gemm_aliases(names: tuple[str, ...]) -> list[str]:
    """`names` plus `<name>_MatMul` for each: onnxruntime's dynamic quantizer first rewrites every Gemm
    into a MatMul of that name (and an Add), then matches node names, so a Gemm left out by name alone
    would be quantized anyway."""
    return [*names, *(f"{n}_MatMul" for n in names)]


def quantize_dynamic_int8(
    src: Path,
    dest: Path,
    qc: QuantizeConfig,
    calibration: Dataset | None,
    on_batch: Callable[[int, int], None] | None = None,
) -> Path:
    """Calibration data is not used: activation ranges are computed per batch at run time."""
    from onnxruntime.quantization import quantize_dynamic

    try:
        quantize_dynamic(
            str(src),
            str(dest),
            per_channel=qc.per_channel,
            reduce_range=qc.reduce_range,
            weight_type=quant_type(qc.weight_type),
            nodes_to_exclude=gemm_aliases(qc.nodes_to_exclude) or None,
            nodes_to_quantize=gemm_aliases(qc.nodes_to_include) or None,
            use_external_data_format=qc.external_data,
            extra_options={"MatMulConstBOnly": True},
        )
    except Exception as e:
        raise QuantizationError(f"dynamic int8 quantization failed: {type(e).__name__}: {e}") from e
    return check_output(dest)
