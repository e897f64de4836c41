"""What both pipelines (export, validate) share: the progress callback, the stage guard, and
how held-out data is fed and the original model's outputs obtained."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np

from qconvert.calibrate import Dataset, ModelInput
from qconvert.errors import (
    InternalError,
    QConvertError,
)
from qconvert.sources import LoadedModel

SMALL_HELDOUT = 100  # below this, say how coarse agreement and accuracy figures are


# progress(stage, message, done, total): done/total are None for stages without a count
Progress = Callable[[str, str, "int | None", "int | None"], None]


def no_progress(stage: str, message: str, done: int | None = None, total: int | None = None) -> None:
    return None


@contextlib.contextmanager
def stage(name: str, progress: Progress, message: str) -> Iterator[None]:
    progress(name, message, None, None)
    try:
        yield
    except QConvertError:
        raise
    except Exception as e:
        raise InternalError(f"unexpected failure in the {name!r} stage: {type(e).__name__}: {e}") from e


def model_inputs(loaded: LoadedModel) -> list[ModelInput]:
    return [
        ModelInput(name, dims, str(example.dtype))
        for name, dims, example in zip(
            loaded.input_names, loaded.input_dims, loaded.example_inputs, strict=True
        )
    ]


def latency_feed(data: Dataset, batch: int) -> dict[str, np.ndarray]:
    """Exactly `batch` held-out samples (repeated in order when there are fewer) for timing."""
    index = np.arange(batch) % len(data)
    return {name: values[index] for name, values in data.feeds.items()}


def reference_outputs(loaded: LoadedModel, data: Dataset, fp32_out: list[np.ndarray]) -> list[np.ndarray]:
    """The original model's outputs: PyTorch itself for torch sources, else the fp32 ONNX."""
    if not loaded.is_torch:
        return fp32_out
    parts = [loaded.run_torch(batch) for batch in data.batches(256)]
    return [np.concatenate(p) for p in zip(*parts, strict=True)]
