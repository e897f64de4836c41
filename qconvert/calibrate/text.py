"""Text DATA: a `.txt` file, one sample per line, tokenized into feed dicts.

The tokenizer is `DataOptions.tokenizer`: a Hugging Face folder (the SOURCE's own when it is one),
or `file.py:fn` / `package.module:fn` with fn(list[str]) returning the feeds for those lines, as a
dict of arrays (samples on axis 0) or one dict per line.

Every sample in a file gets the same length, so the file is one array per input: `--max-length N`
with `--padding max_length` (the default) pads and truncates each line to exactly N tokens; without
`--max-length` (or with `--padding longest`) lines are padded to the longest one in the file,
truncated at `--max-length` or the tokenizer's own limit. A model input of fixed length takes that
length. Calibration and validation files may differ in length: the graph keeps a dynamic sequence
axis. Inputs the tokenizer does not give are derived where there is one right answer:
`position_ids` from the attention mask (as transformers' generate does), `token_type_ids` as zeros.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qconvert.calibrate.readers import ModelInput
from qconvert.errors import CalibrationError, brief
from qconvert.settings import DataOptions

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt",)
# transformers' placeholder model_max_length for tokenizers that set none (int(1e30)); anything
# this large is not a real limit
NO_LIMIT = 1_000_000


def read_text_file(
    path: Path,
    inputs: Sequence[ModelInput],
    options: DataOptions,
    where: str,
    samples: int | None = None,
) -> tuple[dict[str, np.ndarray], None]:
    """Tokenize the first `samples` non-blank lines of `path` into one array per model input."""
    lines = _read_lines(path, where, samples)
    if options.tokenizer is None:
        raise CalibrationError(
            f"{where}: a text file needs a tokenizer, and the SOURCE has none (it is not a Hugging Face folder "
            "with tokenizer files). Pass --tokenizer PATH/TO/HF_FOLDER, or --tokenizer file.py:fn where "
            "fn(lines: list[str]) returns the feeds for those lines (a dict of arrays keyed by input name)."
        )
    if Path(options.tokenizer).is_dir():
        feeds = _hf_tokenize(options.tokenizer, lines, inputs, options, where)
    else:
        feeds = _call_tokenizer(options.tokenizer, lines, where)
    return _model_feeds(feeds, inputs, where, len(lines)), None


def _read_lines(path: Path, where: str, samples: int | None) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CalibrationError(
            f"{where}: not UTF-8 text (byte {e.start}: {e.reason}). Save the file as UTF-8, one sample per line."
        ) from None
    except OSError as e:
        raise CalibrationError(f"{where}: cannot read the file ({e}).") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise CalibrationError(f"{where}: holds no text; give one sample per line.")
    return lines[:samples] if samples is not None else lines


@functools.lru_cache(maxsize=4)
def _hf_tokenizer(folder: str) -> Any:
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise CalibrationError(
            f"--tokenizer {folder}: reading a Hugging Face tokenizer needs the optional extra 'hf'. Install "
            'it with: pip install "qconvert[hf]"'
        ) from None
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except Exception as e:
        raise CalibrationError(
            f"--tokenizer {folder}: transformers cannot load a tokenizer from this folder ({type(e).__name__}: "
            f"{brief(e)}). It needs tokenizer.json or tokenizer_config.json with the vocabulary files."
        ) from e


def _hf_tokenize(
    folder: str, lines: list[str], inputs: Sequence[ModelInput], options: DataOptions, where: str
) -> dict[str, np.ndarray]:
    tokenizer = _hf_tokenizer(folder)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise CalibrationError(
                f"{where}: the tokenizer in {folder} has neither a pad token nor an end-of-sequence token to pad "
                "with, so lines of different lengths cannot share one array. Add a pad_token to its "
                "tokenizer_config.json."
            )
        tokenizer.pad_token = tokenizer.eos_token  # the usual choice for decoders; the mask hides it
    limit = tokenizer.model_max_length if 0 < tokenizer.model_max_length < NO_LIMIT else None
    fixed = next((i.dims[1] for i in inputs if len(i.dims) > 1 and isinstance(i.dims[1], int)), None)
    max_length = options.max_length or fixed
    exact = max_length is not None and (options.padding == "max_length" or fixed is not None)
    if max_length is None:
        max_length = limit
    try:
        encoded = tokenizer(
            lines,
            padding="max_length" if exact else "longest",
            truncation=options.truncation and max_length is not None,
            max_length=max_length,
        )
    except Exception as e:
        raise CalibrationError(f"{where}: the tokenizer failed: {type(e).__name__}: {brief(e)}") from e
    lengths = {len(ids) for ids in encoded["input_ids"]}
    if len(lengths) > 1:
        raise CalibrationError(
            f"{where}: some lines are longer than --max-length {max_length} tokens ({max(lengths)}) and "
            "--no-truncation keeps them whole, so they cannot share one array. Allow truncation or raise "
            "--max-length."
        )
    longest = lengths.pop()
    if limit is not None and longest > limit:
        raise CalibrationError(
            f"{where}: a line has {longest} tokens, more than the tokenizer's limit of {limit} for this model. "
            "Allow truncation (drop --no-truncation) or shorten the line."
        )
    log.info("%s: %d line(s) tokenized to %d tokens each", where, len(lines), longest)
    return {k: np.asarray(v) for k, v in encoded.items()}


def _call_tokenizer(spec: str, lines: list[str], where: str) -> dict[str, np.ndarray]:
    from qconvert.sources import import_callable

    _, fn, _ = import_callable(spec, label="--tokenizer", error=CalibrationError)
    name = spec.rpartition(":")[2]
    try:
        produced = fn(lines)
    except Exception as e:
        raise CalibrationError(f"--tokenizer {spec}: {name}(lines) raised {type(e).__name__}: {e}") from e
    if isinstance(produced, Mapping):
        return {str(k): np.asarray(v) for k, v in produced.items()}
    if isinstance(produced, Sequence) and produced and all(isinstance(p, Mapping) for p in produced):
        try:
            return {str(k): np.stack([np.asarray(p[k]) for p in produced]) for k in produced[0]}
        except (KeyError, ValueError) as e:
            raise CalibrationError(
                f"--tokenizer {spec}: the per-line feed dicts differ in keys or shape ({e}); pad every line to "
                "one length."
            ) from None
    raise CalibrationError(
        f"--tokenizer {spec}: {name}(lines) returned {type(produced).__name__}; it must return a dict of arrays "
        "keyed by model input name (samples on axis 0), or one such dict per line."
    )


def _model_feeds(
    feeds: dict[str, np.ndarray], inputs: Sequence[ModelInput], where: str, count: int
) -> dict[str, np.ndarray]:
    """The model's inputs from the tokenizer's feeds, deriving position_ids and token_type_ids when
    the tokenizer does not give them."""
    out: dict[str, np.ndarray] = {}
    for inp in inputs:
        if inp.name in feeds:
            values = feeds[inp.name]
        elif inp.name == "position_ids" and "input_ids" in feeds:
            values = position_ids(feeds.get("attention_mask"), feeds["input_ids"].shape)
        elif inp.name == "token_type_ids" and "input_ids" in feeds:
            values = np.zeros(feeds["input_ids"].shape, dtype=np.int64)
        else:
            raise CalibrationError(
                f"{where}: the tokenizer gives {', '.join(sorted(feeds)) or 'nothing'}, but the model also takes "
                f"'{inp.name}'. Use a tokenizer that produces it (--tokenizer)."
            )
        if len(values) != count:
            raise CalibrationError(
                f"{where}: the tokenizer gave {len(values)} sample(s) of '{inp.name}' for {count} lines."
            )
        if np.issubdtype(values.dtype, np.integer) and np.dtype(inp.dtype).kind in "iu":
            values = values.astype(inp.dtype)
        out[inp.name] = values
    return out


def position_ids(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """Positions counted over real tokens only (left padding included), 1 on padding, as
    transformers' generate() builds them; without a mask, 0..S-1."""
    if mask is None:
        return np.broadcast_to(np.arange(shape[1], dtype=np.int64), shape).copy()
    mask = np.asarray(mask)
    positions = np.cumsum(mask, axis=1, dtype=np.int64) - 1
    return np.where(mask == 0, 1, positions).astype(np.int64)
