"""Command-line options, and commands generated from them and the settings' fields.

An `Opt` is one typer option (or argument) and the settings field it sets. A command is a settings
class, its options in help order and a `run(settings, extras)`: `command()` makes the function typer
reads (its parameters are the options), and `settings_from()` turns the parsed values into the
settings through each field's `Flag` (qconvert.settings), the same metadata `to_argv()` prints from.
Options several commands share are declared here once; a command module declares its own.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import typer

from qconvert import choices
from qconvert.settings import (
    DEFAULT_CONFIDENCE,
    DEFAULT_LATENCY_BATCH,
    DEFAULT_OPSET,
    DEFAULT_TARGET,
    TEXT_PADDING,
    from_flags,
)


@dataclass(frozen=True)
class Opt:
    """One option of a command: the settings field it sets (None: not a setting, handed to `run` as
    an extra), the parameter's type for typer, and the typer declaration (help, default)."""

    field: str | None
    annotation: Any
    declaration: Any
    param: str = ""  # the parameter's name; default: the field's

    @property
    def name(self) -> str:
        return self.param or str(self.field)


def _plain(value: Any) -> Any:
    """A typer choice (an Enum member, or a list of them) as its text."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def settings_from(cls: type, values: dict[str, Any]) -> Any:
    """`cls` from the options' values by field name (choices as their text), through the fields' Flags."""
    return from_flags(cls, {name: _plain(value) for name, value in values.items()})


def command(
    cls: type, opts: Sequence[Opt], run: Callable[[Any, dict[str, Any]], int], doc: str
) -> Callable[..., int]:
    """The function typer reads for a command: one keyword parameter per option, in help order; it
    builds the settings and calls `run(settings, extras)` (extras: the options that set no field)."""

    def fn(**values: Any) -> int:
        extras = {o.name: values[o.name] for o in opts if o.field is None}
        settings = settings_from(cls, {str(o.field): values[o.name] for o in opts if o.field is not None})
        return run(settings, extras)

    fn.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                o.name, inspect.Parameter.KEYWORD_ONLY, default=o.declaration, annotation=o.annotation
            )
            for o in opts
        ]
    )
    fn.__annotations__ = {o.name: o.annotation for o in opts}
    fn.__doc__ = doc
    fn.__name__ = fn.__qualname__ = cls.__name__
    fn.opts = tuple(opts)  # type: ignore[attr-defined]  # read by the tests and settings_of
    fn.settings = cls  # type: ignore[attr-defined]
    return fn


def choice(name: str, values: Sequence[Any]) -> Any:
    """A typer choice type from a registry's names (so help and validation follow the registry)."""
    return Enum(name, {str(v): str(v) for v in values}, type=str)


# Choices come from the registries (qconvert.choices), so the help can never drift from what exists
# and a plugin's target or mode is offered like a built-in one.
TargetName = choice("TargetName", choices.targets())
CalibrationMethod = choice("CalibrationMethod", choices.calibration_methods())
TextPadding = choice("TextPadding", TEXT_PADDING)

TARGET = Opt(
    "target",
    TargetName,
    typer.Option(
        DEFAULT_TARGET, "--target", case_sensitive=False, help="Hardware target (any case: TensorRT)."
    ),
)
SAMPLES = Opt(
    "samples", int, typer.Option(None, "--samples", min=1, help="Use the first N calibration samples.")
)
OPSET = Opt("opset", int, typer.Option(DEFAULT_OPSET, "--opset", help="ONNX opset to export with."))
TARGET_OPTIONS = Opt(
    "target_options",
    list[str],
    typer.Option(
        [], "--target-option", help="NAME=VALUE, a target setting (see `qconvert targets`). Repeatable."
    ),
)
LATENCY_BATCH = Opt(
    "latency_batch",
    int,
    typer.Option(
        DEFAULT_LATENCY_BATCH, "--latency-batch", min=1, help="Batch size the latency is measured at."
    ),
)
FORCE_OUT_DIR = Opt("force", bool, typer.Option(False, "--force", help="Replace an existing output folder."))

# The verdict's confidence level, shared by export, validate and sweep.
CONFIDENCE = Opt(
    "confidence",
    float,
    typer.Option(
        DEFAULT_CONFIDENCE,
        "--confidence",
        help="Confidence level of the intervals the verdict reads: PASSED when every check's interval lies "
        "inside its tolerance, FAILED when one lies outside, INCONCLUSIVE (exit 1) when one straddles it.",
    ),
)

# Image-folder DATA options, shared by the commands that read DATA.
IMAGE_OPTIONS = (
    Opt(
        "image_size",
        str,
        typer.Option(
            None,
            "--image-size",
            help="Image folders: resize to HxW (or N for N x N). Default: the model input's own size.",
        ),
    ),
    Opt(
        "mean",
        str,
        typer.Option(
            None,
            "--mean",
            help="Image folders: subtracted per channel after scaling to [0, 1]; one value per channel or one "
            "for all, e.g. 0.485,0.456,0.406. Default: none.",
        ),
    ),
    Opt(
        "std",
        str,
        typer.Option(
            None,
            "--std",
            help="Image folders: divided by per channel after --mean, e.g. 0.229,0.224,0.225. Default: none.",
        ),
    ),
    Opt(
        "layout",
        str,
        typer.Option(
            "nchw", "--layout", help="Image folders: nchw (channels first) or nhwc (channels last)."
        ),
    ),
)
# The Hugging Face --task, and the text-file DATA options (.txt, one sample per line).
TASK = Opt(
    "task",
    str,
    typer.Option(
        None,
        "--task",
        help="Hugging Face folders: what to export the model for (feature-extraction, text-generation, "
        "text-classification, ...). Default: detected from config.json.",
    ),
)
TEXT_OPTIONS = (
    Opt(
        "tokenizer",
        str,
        typer.Option(
            None,
            "--tokenizer",
            help="Text files (.txt, one sample per line): a Hugging Face folder, or file.py:fn with fn(lines) "
            "returning feed dicts. Default: the model's own (a Hugging Face SOURCE's, or the one `qconvert "
            "export` copied into OUT_DIR).",
        ),
    ),
    Opt(
        "max_length",
        int,
        typer.Option(
            None,
            "--max-length",
            min=1,
            help="Text files: tokens per sample. Default: the longest line, up to the tokenizer's limit.",
        ),
    ),
    Opt(
        "padding",
        TextPadding,
        typer.Option(
            "max_length",
            "--padding",
            help="Text files: max_length pads every line to --max-length; longest, to the longest line in the "
            "file.",
        ),
    ),
    Opt(
        "truncation",
        bool,
        typer.Option(
            True, "--truncation/--no-truncation", help="Text files: cut lines longer than --max-length."
        ),
    ),
)
