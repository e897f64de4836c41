"""Implicit int8 (TensorRT): the graph stays fp32 and a calibration table carries the ranges.

TensorRT reads the table through its provider option `trt_int8_calibration_table_name` and picks
each layer's precision itself. The table is only valid on a graph without Q/DQ nodes.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from qconvert.calibrate import Dataset
from qconvert.calibrate.streaming import CalibrationSettings, calibrate_streaming, ranges_only
from qconvert.errors import CalibrationError, QConvertError, QuantizationError
from qconvert.quantize._common import check_output
from qconvert.types import QuantizeConfig


def quantize_implicit_int8(
    src: Path,
    dest: Path,
    qc: QuantizeConfig,
    calibration: Dataset | None,
    on_batch: Callable[[int, int], None] | None = None,
) -> Path:
    """Copy the fp32 graph to `dest` and write the table to `dest.parent / qc.calibration_table`.

    Every float tensor is calibrated, with a symmetric range: TensorRT's int8 is symmetric and reads
    one magnitude per tensor from the table."""
    from onnxruntime.quantization import write_calibration_table

    if calibration is None or len(calibration) == 0:
        raise CalibrationError("implicit int8 needs calibration data: pass --calibration DATA.")
    if not qc.calibration_table:
        raise QuantizationError("implicit int8 needs the target to name a calibration table path")
    table = dest.parent / qc.calibration_table
    table.parent.mkdir(parents=True, exist_ok=True)
    try:
        settings = CalibrationSettings(
            method=qc.calibration_method, symmetric=True, activation_type="int8", activation_symmetric=True
        )
        ranges = calibrate_streaming(src, calibration, settings, on_batch, qc.external_data)
        with tempfile.TemporaryDirectory() as tmp:
            write_calibration_table(ranges_only(ranges).data, dir=str(tmp))
            shutil.copyfile(Path(tmp) / "calibration.flatbuffers", table)
            shutil.copyfile(Path(tmp) / "calibration.json", table.with_suffix(".json"))
    except QConvertError:
        raise
    except Exception as e:
        raise QuantizationError(
            f"computing the TensorRT calibration table failed: {type(e).__name__}: {e}"
        ) from e
    shutil.copyfile(src, dest)
    data = src.with_name(src.name + ".data")
    if data.exists():
        shutil.copyfile(data, dest.with_name(dest.name + ".data"))
    return check_output(dest)
