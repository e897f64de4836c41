"""`--calibration random`: seeded standard-normal inputs of the model's own shapes and dtypes.

This exists to try a model end to end before real data is at hand. The ranges it calibrates are
those of noise, not of the inputs the model will see, so accuracy figures measured after it mean
nothing; the pipeline says so in the report. Only float inputs are filled: for integer inputs
(token ids, indices) the valid range is unknown and random values would be out of range or
meaningless, so they are refused rather than guessed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qconvert.calibrate.readers import Dataset, ModelInput
from qconvert.errors import CalibrationError


def random_dataset(inputs: Sequence[ModelInput], samples: int, seed: int, origin: str) -> Dataset:
    """`samples` seeded N(0, 1) samples for every (float) model input; the same seed, the same data."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for inp in inputs:
        if not np.issubdtype(np.dtype(inp.dtype), np.floating):
            raise CalibrationError(
                f"{origin}: input '{inp.name}' is {inp.dtype}, and random values are only made for float "
                "inputs (the valid range of integer inputs such as token ids is unknown). Give real samples "
                "as a .npz keyed by input name, or a file.py:callable that yields them."
            )
        if any(d is None for d in inp.dims[1:]):
            raise CalibrationError(
                f"{origin}: input '{inp.name}' has samples of shape {inp.sample_shape()}, with an axis of no "
                "fixed size, so random inputs have no shape. Give real samples as a .npz keyed by input "
                "name."
            )
        shape = (samples, *(d for d in inp.dims[1:] if d is not None))
        feeds[inp.name] = rng.standard_normal(shape, dtype=np.float32).astype(inp.dtype)
    return Dataset(origin, feeds)
