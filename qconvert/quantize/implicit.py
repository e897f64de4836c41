"""Implicit int8 (TensorRT): the graph stays fp32 and a calibration table carries the ranges.

TensorRT reads the table through its provider option `trt_int8_calibration_table_name` and picks
each layer's precision itself. The table is only valid on a graph without Q/DQ nodes.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from qconvert.calibrate import Dataset, ort_reader
from qconvert.config import QuantizeConfig
from qconvert.errors import CalibrationError, QuantizationError
from qconvert.quantize._common import check_output
from qconvert.quantize.static import CALIBRATION_METHODS, calibration_batch


def quantize_implicit_int8(
    src: Path,
    dest: Path,
    qc: QuantizeConfig,
    calibration: Dataset | None,
    on_batch: Callable[[int, int], None] | None = None,
) -> Path:
    """Copy the fp32 graph to `dest` and write the table to `dest.parent / qc.calibration_table`."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator, write_calibration_table

    if calibration is None or len(calibration) == 0:
        raise CalibrationError("implicit int8 needs calibration data: pass --calibration DATA.")
    if not qc.calibration_table:
        raise QuantizationError("implicit int8 needs the target to name a calibration table path")
    table = dest.parent / qc.calibration_table
    table.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            calibrator = create_calibrator(
                str(src),
                augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[qc.calibration_method]),
                use_external_data_format=qc.external_data,
                extra_options={"symmetric": True},
            )
            batch = calibration_batch(len(calibration), qc.calibration_method)
            calibrator.collect_data(ort_reader(calibration, batch_size=batch, on_batch=on_batch))
            ranges = calibrator.compute_data()
            write_calibration_table(ranges.data if hasattr(ranges, "data") else ranges, dir=str(tmp))
            shutil.copyfile(Path(tmp) / "calibration.flatbuffers", table)
            shutil.copyfile(Path(tmp) / "calibration.json", table.with_suffix(".json"))
    except (CalibrationError, QuantizationError):
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
