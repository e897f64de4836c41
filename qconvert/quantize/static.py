"""Static int8: activation ranges from calibration data, Q/DQ or QOperator format.

The ranges come from qconvert's streaming calibrator (memory independent of the number of
samples); everything after calibration is onnxruntime's own `quantize_static`, which takes them
through its calibration-cache hook, so model loading, op types, Q/DQ vs QOperator and every
extra option behave exactly as in onnxruntime.
"""

from __future__ import annotations

import logging
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from qconvert.calibrate import Dataset
from qconvert.calibrate.streaming import (
    ORT_METHODS,
    CalibrationSettings,
    calibrate_streaming,
    ranges_only,
    replaced_ranges,
)
from qconvert.errors import CalibrationError, QConvertError, QuantizationError
from qconvert.quantize._common import check_output, quant_type
from qconvert.types import QuantizeConfig

log = logging.getLogger(__name__)

# Sensitivity and --auto re-quantize one prepared graph many times with other nodes excluded; its
# ranges do not change, so they are calibrated once: (graph sha256, settings, external) -> the
# calibration set (held, so its id stays valid) and the ranges. A few entries at most.
_RANGES: OrderedDict[tuple[Any, ...], tuple[Dataset, Any]] = OrderedDict()
RANGE_CACHE_ENTRIES = 4

CALIBRATION_METHODS = ORT_METHODS
# onnxruntime calibration options (extra_options) and the streaming setting each one maps to
CALIB_OPTIONS = {"CalibTensorRangeSymmetric": "symmetric", "CalibPercentile": "percentile"}
# onnxruntime calibration options that only make sense with its own calibrator
UNSUPPORTED_CALIB_OPTIONS = (
    "CalibMovingAverage",
    "CalibMovingAverageConstant",
    "CalibMaxIntermediateOutputs",
    "CalibStridedMinMax",
    "SmoothQuant",
)


def static_op_types() -> tuple[str, ...]:
    """The op types `quantize_static` quantizes (and calibrates around) when given none."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return tuple(sorted(set(QLinearOpsRegistry) | set(QDQRegistry)))


def calibration_settings(
    qc: QuantizeConfig, extra: dict[str, Any], op_types: tuple[str, ...] | None
) -> CalibrationSettings:
    """The streaming calibrator's settings for `qc`, with onnxruntime's Calib* extra options."""
    unsupported = [k for k in UNSUPPORTED_CALIB_OPTIONS if extra.get(k)]
    if unsupported:
        raise QuantizationError(
            f"extra option(s) {', '.join(unsupported)} need onnxruntime's own calibrator, which keeps "
            "every sample's activations in memory; qconvert's streaming calibrator does not support them. "
            "Remove them from the target's extra_options."
        )
    given = {CALIB_OPTIONS[k]: v for k, v in extra.items() if k in CALIB_OPTIONS}
    return CalibrationSettings(
        method=qc.calibration_method,
        op_types=op_types,
        activation_type=qc.activation_type,
        activation_symmetric=bool(extra.get("ActivationSymmetric", qc.activation_symmetric)),
        **given,
    )


def calibrated_ranges(
    src: Path,
    calibration: Dataset,
    settings: CalibrationSettings,
    on_batch: Callable[[int, int], None] | None,
    external_data: bool,
) -> Any:
    """The streaming calibrator's ranges for `src`, computed once per (graph, data, settings).

    Graphs with external data are always calibrated afresh: their weights are not in `src`'s bytes."""
    from qconvert.artifacts import sha256_file

    if external_data:
        return calibrate_streaming(src, calibration, settings, on_batch, external_data)
    key = (sha256_file(src), id(calibration), settings, external_data)
    hit = _RANGES.get(key)
    if hit is not None and hit[0] is calibration:
        _RANGES.move_to_end(key)
        log.debug("calibration ranges of %s reused", src)
        return hit[1]
    ranges = calibrate_streaming(src, calibration, settings, on_batch, external_data)
    _RANGES[key] = (calibration, ranges)
    while len(_RANGES) > RANGE_CACHE_ENTRIES:
        _RANGES.popitem(last=False)
    return ranges


def quantize_static_int8(
    src: Path,
    dest: Path,
    qc: QuantizeConfig,
    calibration: Dataset | None,
    on_batch: Callable[[int, int], None] | None = None,
    *,
    ranges_of: QuantizeConfig | None = None,
) -> Path:
    """`src` quantized with `qc`. `ranges_of`: the quantization whose activation ranges to use
    (default `qc`). Per-layer sensitivity and the float fallback quantize the model's graph again
    with more nodes excluded; given the model's QuantizeConfig they reuse its calibration, and every
    tensor still quantized gets the range it has in the model (the input of a Clip/Relu they leave
    float keeps its Clip's range, `replaced_ranges`, instead of being measured afresh)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

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
    try:
        settings = calibration_settings(qc, extra, static_op_types())
        graph = onnx.load(str(src), load_external_data=False)
        ranged = ranges_of or qc
        replaced = replaced_ranges(graph, static_op_types(), ranged.nodes_to_include, ranged.nodes_to_exclude)
        settings = replace(settings, replaced=replaced)
        ranges = calibrated_ranges(src, calibration, settings, on_batch, qc.external_data)
        with tempfile.TemporaryDirectory(prefix="qconvert-static-") as tmp:
            cache = Path(tmp) / "ranges.json"
            save_tensors_data(ranges_only(ranges), cache)
            quantize_static(
                str(src),
                str(dest),
                None,  # no reader: the ranges come from the cache
                quant_format=QuantFormat.QDQ if qc.format == "qdq" else QuantFormat.QOperator,
                per_channel=qc.per_channel,
                reduce_range=qc.reduce_range,
                activation_type=quant_type(qc.activation_type),
                weight_type=quant_type(qc.weight_type),
                nodes_to_exclude=list(qc.nodes_to_exclude) or None,
                nodes_to_quantize=list(qc.nodes_to_include) or None,
                use_external_data_format=qc.external_data,
                calibrate_method=ranges.calibration_method,
                extra_options=extra,
                calibration_cache_path=cache,
            )
    except QConvertError:
        raise
    except Exception as e:
        raise QuantizationError(f"static int8 quantization failed: {type(e).__name__}: {e}") from e
    return check_output(dest)
