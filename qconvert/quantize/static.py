"""Static int8: activation ranges from calibration data, Q/DQ or QOperator format."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

from qconvert.calibrate import Dataset, ort_reader
from qconvert.config import QuantizeConfig
from qconvert.errors import CalibrationError, QuantizationError
from qconvert.quantize._common import check_output, quant_type

log = logging.getLogger(__name__)

CALIBRATION_BATCH = 16
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


def calibration_batch(samples: int, method: str) -> int:
    """onnxruntime's histogram calibrators (entropy, percentile) stack the batches into one array,
    so every batch must have the same size: use a batch size that divides the sample count."""
    return CALIBRATION_BATCH if method == "minmax" else math.gcd(samples, CALIBRATION_BATCH)


def quantize_static_int8(
    src: Path,
    dest: Path,
    qc: QuantizeConfig,
    calibration: Dataset | None,
    on_batch: Callable[[int, int], None] | None = None,
) -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    if calibration is None or len(calibration) == 0:
        raise CalibrationError(
            "static int8 needs calibration data: pass --calibration DATA (.npz keyed by input name), or "
            "use --mode dynamic where the target allows it."
        )
    extra = {
        "ActivationSymmetric": qc.activation_symmetric,
        "WeightSymmetric": qc.weight_symmetric,
        "QuantizeBias": qc.quantize_bias,
        **dict(qc.extra_options),
    }
    log.info("static quantization: %s, %d calibration samples", qc, len(calibration))
    batch = calibration_batch(len(calibration), qc.calibration_method)
    try:
        quantize_static(
            str(src),
            str(dest),
            ort_reader(calibration, batch_size=batch, on_batch=on_batch),
            quant_format=QuantFormat.QDQ if qc.format == "qdq" else QuantFormat.QOperator,
            per_channel=qc.per_channel,
            reduce_range=qc.reduce_range,
            activation_type=quant_type(qc.activation_type),
            weight_type=quant_type(qc.weight_type),
            nodes_to_exclude=list(qc.nodes_to_exclude) or None,
            nodes_to_quantize=list(qc.nodes_to_include) or None,
            use_external_data_format=qc.external_data,
            calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[qc.calibration_method]),
            extra_options=extra,
        )
    except Exception as e:
        raise QuantizationError(f"static int8 quantization failed: {type(e).__name__}: {e}") from e
    return check_output(dest)
