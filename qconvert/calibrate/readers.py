"""Readers for `.npz`, `.npy` and folders of them, checked against the model's inputs."""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qconvert.errors import CalibrationError
from qconvert.settings import RANDOM_CALIBRATION_SAMPLES, RANDOM_CALIBRATION_SEED, RANDOM_DATA, DataOptions

LABEL_KEYS = ("labels", "label")


@dataclass(frozen=True)
class ModelInput:
    """What one model input accepts: per-sample dims (None = any) and dtype; axis 0 is the batch."""

    name: str
    dims: tuple[int | None, ...]  # including the batch axis
    dtype: str

    def sample_shape(self) -> str:
        return "[" + ", ".join("?" if d is None else str(d) for d in self.dims[1:]) + "]"


@dataclass(frozen=True)
class Dataset:
    """Samples for every model input (first axis = samples) and optional integer labels."""

    origin: str
    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(next(iter(self.feeds.values())))

    def batches(self, size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self), size):
            yield {k: v[start : start + size] for k, v in self.feeds.items()}

    def subset(self, index: slice | np.ndarray, origin: str | None = None) -> Dataset:
        return Dataset(
            origin or self.origin,
            {k: v[index] for k, v in self.feeds.items()},
            None if self.labels is None else self.labels[index],
        )

    def split(self, held: int) -> tuple[Dataset, Dataset]:
        """(rest, held-out): a deterministic, disjoint split that holds out `held` samples (a larger
        `held` holds out the same samples and more)."""
        n = len(self)
        held = max(1, held)
        if n - held < 1:
            raise CalibrationError(
                f"{self.origin}: {n} sample(s) are too few to set some aside for validation. "
                "Give held-out data with --data, or more calibration samples."
            )
        order = np.random.default_rng(0).permutation(n)
        return (
            self.subset(np.sort(order[held:]), f"{self.origin} ({n - held} samples)"),
            self.subset(np.sort(order[:held]), f"{self.origin} (held-out {held} samples)"),
        )


def load_dataset(
    path: str | Path,
    inputs: Sequence[ModelInput],
    *,
    flag: str,
    samples: int | None = None,
    options: DataOptions | None = None,
) -> Dataset:
    """Load DATA and check it against `inputs`: `.npz`, `.npy`, a folder of them, a folder of images,
    `file.py:callable` / `package.module:callable`, or (for `--calibration` only) `random`.

    `options` says how data that is not arrays (image folders, text files) becomes feeds. Readers
    that can stop early (images, callables) read only the first `samples` samples."""
    where = f"{flag} {path}"
    if str(path) == RANDOM_DATA:
        return _random_calibration(inputs, flag, samples)
    arrays, labels = _read_any(str(path), inputs, flag, samples, options or DataOptions())
    feeds = {inp.name: _check_input(arrays[inp.name], inp, where) for inp in inputs}
    counts = {name: len(a) for name, a in feeds.items()}
    if len(set(counts.values())) > 1:
        raise CalibrationError(f"{where}: inputs have different numbers of samples: {counts}")
    n = next(iter(counts.values()))
    if n == 0:
        raise CalibrationError(f"{where}: holds no samples.")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != n or not np.issubdtype(labels.dtype, np.integer):
            raise CalibrationError(
                f"{where}: 'labels' must be integer class ids, one per sample ({n}); got shape "
                f"{list(labels.shape)} and dtype {labels.dtype}."
            )
    data = Dataset(where, feeds, labels)
    if samples is not None and samples < n:
        data = data.subset(slice(0, samples), f"{where} (first {samples} of {n} samples)")
    return data


def _read_any(
    spec: str, inputs: Sequence[ModelInput], flag: str, samples: int | None, options: DataOptions
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """DATA -> (arrays keyed by input name, labels or None): the one place that tells the forms apart."""
    from qconvert.calibrate.python_source import is_callable_spec, read_callable

    p, where = Path(spec), f"{flag} {spec}"
    if not p.exists():
        if is_callable_spec(spec):
            return read_callable(spec, inputs, flag, samples)
        raise CalibrationError(f"{where}: no such file or folder.")
    if p.is_dir():
        if any(f.suffix in (".npz", ".npy") for f in p.iterdir()):
            return _read_folder(p, inputs, where)
        from qconvert.calibrate.images import read_image_folder

        return read_image_folder(p, inputs, options, where, samples)
    if p.suffix in (".npz", ".npy"):
        return _read_file(p, inputs, where)
    if p.suffix == ".txt":
        from qconvert.calibrate.text import read_text_file

        return read_text_file(p, inputs, options, where, samples)
    raise CalibrationError(
        f"{where}: unsupported data format {p.suffix or '(no suffix)'}. Give a .npz (one array per model "
        "input, keyed by input name, samples on the first axis), a .npy for a single-input model, a folder "
        "of them, a folder of images (.png, .jpg, .bmp, .webp; class subfolders give labels), a text file "
        "(.txt, one sample per line, read with the model's tokenizer), or file.py:callable yielding feed dicts."
    )


def _random_calibration(inputs: Sequence[ModelInput], flag: str, samples: int | None) -> Dataset:
    from qconvert.calibrate.synthetic import random_dataset

    if flag != "--calibration":
        raise CalibrationError(
            f"{flag} {RANDOM_DATA}: random inputs are only for --calibration (and then, without --data, "
            "validation runs on another random set). Give real samples here: a .npz, a folder of images, "
            "or file.py:callable."
        )
    n = samples or RANDOM_CALIBRATION_SAMPLES
    return random_dataset(inputs, n, RANDOM_CALIBRATION_SEED, f"--calibration random ({n} seeded samples)")


def _load_npz(path: Path, where: str) -> dict[str, np.ndarray]:
    from qconvert.trust import check_array_headers

    check_array_headers(path, where)  # before numpy allocates what a header declares
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise CalibrationError(f"{where}: cannot read {path.name} as .npz without pickles ({e}).") from e


def _load_npy(path: Path, where: str) -> np.ndarray:
    from qconvert.trust import check_array_headers

    check_array_headers(path, where)  # before numpy allocates what a header declares
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise CalibrationError(f"{where}: cannot read {path.name} as .npy without pickles ({e}).") from e


def _assign(
    raw: dict[str, np.ndarray], inputs: Sequence[ModelInput], where: str
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Map arrays to model inputs by name; a single-input model takes any single non-label key."""
    labels = next((raw[k] for k in LABEL_KEYS if k in raw), None)
    arrays = {k: v for k, v in raw.items() if k not in LABEL_KEYS}
    names = [i.name for i in inputs]
    if len(inputs) == 1 and names[0] not in arrays and len(arrays) == 1:
        arrays = {names[0]: next(iter(arrays.values()))}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise CalibrationError(
            f"{where}: no array for model input(s) {missing}. The model's inputs are {names}; the data "
            f"has {sorted(raw) or 'no arrays'}. Key each array by its input name."
        )
    return {n: arrays[n] for n in names}, labels


def _read_file(
    path: Path, inputs: Sequence[ModelInput], where: str
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    if path.suffix == ".npz":
        return _assign(_load_npz(path, where), inputs, where)
    if len(inputs) != 1:
        raise CalibrationError(
            f"{where}: a .npy holds one array but the model has {len(inputs)} inputs; use a .npz keyed "
            "by input name."
        )
    return {inputs[0].name: _load_npy(path, where)}, None


def _read_folder(
    folder: Path, inputs: Sequence[ModelInput], where: str
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    files = sorted(f for f in folder.iterdir() if f.suffix in (".npz", ".npy"))
    if not files:
        raise CalibrationError(f"{where}: the folder has no .npy or .npz files.")
    parts: dict[str, list[np.ndarray]] = {i.name: [] for i in inputs}
    label_parts: list[Any] = []
    first: dict[str, tuple[str, tuple[int, ...]]] = {}  # input -> (file, sample shape) seen first
    for f in files:
        arrays, labels = _read_file(f, inputs, f"{where}/{f.name}")
        for inp in inputs:
            a = arrays[inp.name]
            a = a[None] if a.ndim == len(inp.dims) - 1 else a
            seen = first.setdefault(inp.name, (f.name, a.shape[1:]))
            if a.shape[1:] != seen[1]:
                raise CalibrationError(
                    f"{where}/{f.name}: input '{inp.name}' has samples of shape {a.shape[1:]}, but "
                    f"{where}/{seen[0]} has {seen[1]}. Every file in a DATA folder is read as samples; "
                    f"move {f.name} (or {seen[0]}) out of the folder, or pass the one file you mean."
                )
            parts[inp.name].append(a)
        label_parts.append(labels)
    if any(lab is None for lab in label_parts) and any(lab is not None for lab in label_parts):
        raise CalibrationError(f"{where}: some files have labels and some do not.")
    try:
        stacked = {n: np.concatenate(v) for n, v in parts.items()}
    except ValueError as e:
        raise CalibrationError(f"{where}: files disagree in shape ({e}).") from e
    labels = None if label_parts[0] is None else np.concatenate([np.atleast_1d(x) for x in label_parts])
    return stacked, labels


_CASTS = {("float64", "float32"), ("float16", "float32"), ("int32", "int64"), ("int64", "int32")}


def _check_input(a: np.ndarray, inp: ModelInput, where: str) -> np.ndarray:
    expected = f"[N, {inp.sample_shape()[1:]}" if len(inp.dims) > 1 else "[N]"
    if a.ndim != len(inp.dims) or any(
        d is not None and d != g for d, g in zip(inp.dims[1:], a.shape[1:], strict=True)
    ):
        raise CalibrationError(
            f"{where}: input '{inp.name}' expects samples of shape {inp.sample_shape()} (the array: "
            f"{expected}, samples on the first axis); the data has {list(a.shape)}. Reshape the data "
            "to match the model input."
        )
    if str(a.dtype) != inp.dtype:
        if (str(a.dtype), inp.dtype) not in _CASTS:
            raise CalibrationError(
                f"{where}: input '{inp.name}' expects dtype {inp.dtype}; the data has {a.dtype}."
            )
        a = a.astype(inp.dtype)
    if np.issubdtype(a.dtype, np.floating):
        bad = ~np.isfinite(a)
        if bad.any():
            first = int(np.argwhere(bad.reshape(len(a), -1).any(axis=1))[0][0])
            raise CalibrationError(
                f"{where}: input '{inp.name}' contains {int(bad.sum())} NaN/Inf value(s), first in sample "
                f"{first}. Clean the data; quantization ranges would be meaningless."
            )
    return np.ascontiguousarray(a)


def ort_reader(data: Dataset, batch_size: int = 1, on_batch: Callable[[int, int], None] | None = None) -> Any:
    """Adapt a dataset to onnxruntime's `CalibrationDataReader` (`get_next()` until None).

    `on_batch(samples_done, samples_total)` is called as batches are handed out."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rewind()

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._it, None)
            if batch is not None and on_batch is not None:
                self._done += len(next(iter(batch.values())))
                on_batch(self._done, len(data))
            return batch

        def rewind(self) -> None:
            self._it = data.batches(batch_size)
            self._done = 0

    return _Reader()
