"""`file.py:callable` / `package.module:callable` DATA: user code that yields feed dicts.

The callable takes no arguments and returns an iterable (a list, a generator, a DataLoader-like
object) of dicts keyed by model input name. Each dict is a batch (samples on axis 0) or a single
sample without the batch axis; which one is told apart by the rank the model input expects. An
optional `labels` key carries integer class ids (one per sample, or a scalar for a single sample).

Reading stops as soon as `--samples` samples are in hand: a generator over a large dataset is
never run further than that, and is closed so that its own clean-up runs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qconvert.calibrate.readers import LABEL_KEYS, ModelInput, _assign
from qconvert.errors import CalibrationError

log = logging.getLogger(__name__)


def is_callable_spec(text: str) -> bool:
    """Whether DATA names a callable (`x.py:fn`, `pkg.mod:fn`) rather than a file that exists."""
    where, sep, attr = text.rpartition(":")
    return bool(sep and where and attr.isidentifier()) and not Path(text).exists()


def read_callable(
    spec: str,
    inputs: Sequence[ModelInput],
    flag: str,
    samples: int | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Import and call `spec`, and gather what it yields (at most `samples` samples) into one
    array per model input, plus labels when every item has them."""
    from qconvert.sources import import_callable

    where = f"{flag} {spec}"
    _, fn, _ = import_callable(spec, label=flag, error=CalibrationError)
    name = spec.rpartition(":")[2]
    try:
        produced = fn()
    except Exception as e:
        raise CalibrationError(f"{where}: {name}() raised {type(e).__name__}: {e}") from e
    if isinstance(produced, (Mapping, str, bytes, np.ndarray)) or not isinstance(produced, Iterable):
        raise CalibrationError(
            f"{where}: {name}() returned a {type(produced).__name__}; it must return an iterable of feed "
            "dicts (a list of them, or yield them), each keyed by model input name."
        )
    iterator = iter(produced)
    try:
        parts, label_parts, count = _gather(iterator, inputs, where, samples)
    finally:
        close = getattr(iterator, "close", None)
        if callable(close):
            close()  # a generator's `finally` and context managers run now, not at garbage collection
    if count == 0:
        raise CalibrationError(f"{where}: {name}() yielded no feed dicts.")
    log.info("%s: %d sample(s) in %d item(s)", where, count, len(label_parts))
    has_labels = [lab is not None for lab in label_parts]
    if any(has_labels) and not all(has_labels):
        raise CalibrationError(
            f"{where}: some items have '{LABEL_KEYS[0]}' and some do not; give labels with every item or none."
        )
    try:
        stacked = {n: np.concatenate(v) for n, v in parts.items()}
    except ValueError as e:
        raise CalibrationError(f"{where}: items disagree in per-sample shape ({e}).") from e
    labels = np.concatenate([lab for lab in label_parts if lab is not None]) if all(has_labels) else None
    return stacked, labels


def _gather(
    iterator: Iterator[Any], inputs: Sequence[ModelInput], where: str, samples: int | None
) -> tuple[dict[str, list[np.ndarray]], list[np.ndarray | None], int]:
    parts: dict[str, list[np.ndarray]] = {i.name: [] for i in inputs}
    label_parts: list[np.ndarray | None] = []
    count = 0
    while samples is None or count < samples:
        index = len(label_parts) + 1
        try:
            item = next(iterator)
        except StopIteration:
            break
        except Exception as e:
            raise CalibrationError(
                f"{where}: the iterable raised {type(e).__name__}: {e} (while producing item {index})."
            ) from e
        feeds, labels, n = _batch_from_item(item, inputs, f"{where}: item {index}")
        keep = n if samples is None else min(n, samples - count)
        for name, values in feeds.items():
            parts[name].append(values[:keep])
        label_parts.append(None if labels is None else labels[:keep])
        count += keep
    return parts, label_parts, count


def _numeric(value: Any, key: str, where: str) -> np.ndarray:
    try:
        array = np.asarray(value)
    except Exception as e:  # an object whose __array__ fails
        raise CalibrationError(f"{where}: the value for '{key}' cannot become an array ({e}).") from e
    if array.dtype.kind not in "biuf":
        raise CalibrationError(
            f"{where}: the value for '{key}' is a {type(value).__name__} (dtype {array.dtype}), not a numeric "
            "array. Yield numpy arrays keyed by model input name."
        )
    return array


def _batch_from_item(
    item: Any, inputs: Sequence[ModelInput], where: str
) -> tuple[dict[str, np.ndarray], np.ndarray | None, int]:
    """One yielded item as (feeds with a batch axis, labels or None, sample count)."""
    if not isinstance(item, Mapping) or not all(isinstance(k, str) for k in item):
        raise CalibrationError(
            f"{where} is a {type(item).__name__}, not a dict of arrays keyed by model input name "
            f"({', '.join(i.name for i in inputs)})."
        )
    raw = {k: _numeric(v, k, where) for k, v in item.items()}
    arrays, labels = _assign(raw, inputs, where)
    feeds: dict[str, np.ndarray] = {}
    single: set[bool] = set()
    for inp in inputs:
        a = arrays[inp.name]
        if a.ndim == len(inp.dims) - 1:
            single.add(True)
            a = a[None]
        elif a.ndim == len(inp.dims):
            single.add(False)
        else:
            raise CalibrationError(
                f"{where}: '{inp.name}' has shape {list(a.shape)}; the input takes samples of shape "
                f"{inp.sample_shape()}, so give [N, ...] for a batch or the sample alone."
            )
        feeds[inp.name] = a
    counts = {name: len(a) for name, a in feeds.items()}
    if len(set(counts.values())) > 1 or len(single) > 1:
        raise CalibrationError(
            f"{where}: inputs disagree in sample count (batch or single sample): {counts}."
        )
    n = next(iter(counts.values()))
    if labels is not None:
        labels = np.atleast_1d(labels) if single == {True} else labels
        if labels.ndim != 1 or len(labels) != n or labels.dtype.kind not in "iu":
            raise CalibrationError(
                f"{where}: '{LABEL_KEYS[0]}' must be integer class ids, one per sample ({n}); got shape "
                f"{list(labels.shape)} and dtype {labels.dtype}."
            )
    return feeds, labels, n
