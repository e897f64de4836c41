"""Calibration and validation data: readers yield feed dicts (`dict[str, np.ndarray]`).

A dataset is checked against the model's inputs (names, per-sample shapes, dtypes, finite
values) when it is loaded, with a message that says what was expected. One adapter turns a
dataset into onnxruntime's `CalibrationDataReader` protocol.
"""

from __future__ import annotations

from qconvert.calibrate.readers import Dataset, ModelInput, load_dataset, ort_reader
from qconvert.calibrate.synthetic import random_dataset

__all__ = ["Dataset", "ModelInput", "load_dataset", "ort_reader", "random_dataset"]
