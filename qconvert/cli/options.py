"""The options several commands share, and how flag text becomes settings values.

Typer options are plain metadata, so one declaration serves every command that takes the flag: the
DATA options (image folders, text files) and --task. The parsers turn a flag's text into what the
settings hold (qconvert.config), and each error names its flag and the fix.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from enum import Enum

import typer

from qconvert.config import DEFAULT_CONFIDENCE, IMAGE_LAYOUTS, TEXT_PADDING, DataOptions
from qconvert.errors import ConfigError

# Image-folder DATA options, shared by the commands that read DATA (typer options are plain metadata,
# so one instance can serve several commands).
IMAGE_SIZE_OPTION = typer.Option(
    None,
    "--image-size",
    help="Image folders: resize to HxW (or N for N x N). Default: the model input's own size.",
)
MEAN_OPTION = typer.Option(
    None,
    "--mean",
    help="Image folders: subtracted per channel after scaling to [0, 1]; one value per channel or one "
    "for all, e.g. 0.485,0.456,0.406. Default: none.",
)
STD_OPTION = typer.Option(
    None,
    "--std",
    help="Image folders: divided by per channel after --mean, e.g. 0.229,0.224,0.225. Default: none.",
)
LAYOUT_OPTION = typer.Option(
    "nchw", "--layout", help="Image folders: nchw (channels first) or nhwc (channels last)."
)

# The verdict's confidence level, shared by export, validate and sweep.
CONFIDENCE_OPTION = typer.Option(
    DEFAULT_CONFIDENCE,
    "--confidence",
    help="Confidence level of the intervals the verdict reads: PASSED when every check's interval lies "
    "inside its tolerance, FAILED when one lies outside, INCONCLUSIVE (exit 1) when one straddles it.",
)

# Text-file DATA options (.txt, one sample per line) and the Hugging Face --task, shared the same way.
TextPadding = Enum("TextPadding", {p: p for p in TEXT_PADDING}, type=str)  # type: ignore[misc]
TASK_OPTION = typer.Option(
    None,
    "--task",
    help="Hugging Face folders: what to export the model for (feature-extraction, text-generation, "
    "text-classification, ...). Default: detected from config.json.",
)
TOKENIZER_OPTION = typer.Option(
    None,
    "--tokenizer",
    help="Text files (.txt, one sample per line): a Hugging Face folder, or file.py:fn with fn(lines) "
    "returning feed dicts. Default: the model's own (a Hugging Face SOURCE's, or the one `qconvert export` "
    "copied into OUT_DIR).",
)
MAX_LENGTH_OPTION = typer.Option(
    None,
    "--max-length",
    min=1,
    help="Text files: tokens per sample. Default: the longest line, up to the tokenizer's limit.",
)
PADDING_OPTION = typer.Option(
    "max_length",
    "--padding",
    help="Text files: max_length pads every line to --max-length; longest, to the longest line in the file.",
)
TRUNCATION_OPTION = typer.Option(
    True, "--truncation/--no-truncation", help="Text files: cut lines longer than --max-length."
)


def data_options(
    image_size: str | None,
    mean: str | None,
    std: str | None,
    layout: str,
    tokenizer: str | None,
    max_length: int | None,
    padding: Enum,
    truncation: bool,
) -> DataOptions:
    """The image-folder and text-file flags above, parsed into one DataOptions (a bad value names its flag)."""
    return text_options(
        tokenizer, max_length, padding.value, truncation, base=image_options(image_size, mean, std, layout)
    )


def parse_image_size(text: str) -> tuple[int, int]:
    """`--image-size HxW` (or N for a square), in pixels."""
    parts = re.split(r"[x,]", text.strip().lower())
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(
            f"--image-size {text!r} is not HxW or N (positive pixel counts). Example: --image-size 224x224 "
            "or --image-size 224"
        )
    return int(parts[0]), int(parts[1])


def parse_channel_values(text: str, flag: str) -> tuple[float, ...]:
    """`--mean` / `--std`: comma-separated numbers, one per channel or one for all channels. They
    apply after pixels are scaled to [0, 1], so ImageNet's are 0.485,0.456,0.406 / 0.229,0.224,0.225."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(v == v and abs(v) != float("inf") for v in values):
        raise ConfigError(
            f"{flag} {text!r} is not a comma-separated list of numbers, one per channel or one for all. "
            f"Example: {flag} 0.485,0.456,0.406 (on pixels scaled to [0, 1])"
        )
    if flag == "--std" and any(v <= 0 for v in values):
        raise ConfigError(f"--std {text!r}: every value must be greater than 0 (inputs are divided by it).")
    return values


def parse_layout(text: str) -> str:
    """`--layout nchw|nhwc`: where the channel axis of an image input sits."""
    layout = text.strip().lower()
    if layout not in IMAGE_LAYOUTS:
        raise ConfigError(f"--layout {text!r} is not a layout. Valid: {', '.join(IMAGE_LAYOUTS)}")
    return layout


def image_options(
    image_size: str | None = None,
    mean: str | None = None,
    std: str | None = None,
    layout: str = "nchw",
    base: DataOptions | None = None,
) -> DataOptions:
    """`base` (default: DataOptions()) with the image flags `--image-size`, `--mean`, `--std` and
    `--layout` parsed into it; each malformed value is a ConfigError that names its flag."""
    return replace(
        base or DataOptions(),
        image_size=None if image_size is None else parse_image_size(image_size),
        mean=None if mean is None else parse_channel_values(mean, "--mean"),
        std=None if std is None else parse_channel_values(std, "--std"),
        layout=parse_layout(layout),
    )


def text_options(
    tokenizer: str | None = None,
    max_length: int | None = None,
    padding: str = "max_length",
    truncation: bool = True,
    base: DataOptions | None = None,
) -> DataOptions:
    """`base` (default: DataOptions()) with the text flags `--tokenizer`, `--max-length`, `--padding`
    and `--truncation/--no-truncation` set; a bad value is a ConfigError that names its flag."""
    if max_length is not None and max_length < 1:
        raise ConfigError(f"--max-length must be at least 1 token (got {max_length})")
    if padding not in TEXT_PADDING:
        raise ConfigError(
            f"--padding {padding!r} is not a padding. Valid: max_length (every sample padded to "
            "--max-length) or longest (to the longest sample in the file)"
        )
    return replace(
        base or DataOptions(),
        tokenizer=tokenizer,
        max_length=max_length,
        padding=padding,
        truncation=truncation,
    )


def parse_target_option(text: str) -> tuple[str, str]:
    """`--target-option NAME=VALUE`."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ConfigError(f"--target-option {text!r} is not NAME=VALUE. Example: --target-option device=GPU")
    return name.strip(), value.strip()


def parse_recover(values: Sequence[str]) -> tuple[str, ...] | None:
    """--recover values (repeatable, comma-separated): None when not given (the family's defaults),
    () for `none`, else the step names in order."""
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    if not names:
        return None
    if "none" in names:
        if len(names) > 1:
            raise ConfigError("--recover none turns every recovery step off: give it alone, or name steps.")
        return ()
    return tuple(names)
