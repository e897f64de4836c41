"""The qconvert error tree.

Every error a user can cause is a :class:`QConvertError`; its message names the file or flag at
fault and says how to fix it. The CLI turns these into a clean message and an exit code.
Anything else that escapes is a bug in qconvert and is shown with its traceback.
"""

from __future__ import annotations

import re


class QConvertError(Exception):
    """Base class of errors caused by input, settings or the model itself (exit code 2)."""

    exit_code = 2
    stage = "qconvert"

    def __str__(self) -> str:
        return super().__str__()


class ConfigError(QConvertError):
    """A flag, setting or combination of settings that cannot work."""

    stage = "config"


class SourceError(QConvertError):
    """The model source cannot be found, loaded or run."""

    stage = "source"


class ExportError(QConvertError):
    """Turning the PyTorch model into ONNX failed."""

    stage = "export"


class PrepareError(QConvertError):
    """Shape inference or graph preparation failed."""

    stage = "prepare"


class CalibrationError(QConvertError):
    """Calibration or validation data is missing, malformed or does not fit the model."""

    stage = "calibration"


class QuantizationError(QConvertError):
    """The quantizer failed on this model."""

    stage = "quantize"


class TargetError(QConvertError):
    """The quantized graph or its execution-provider settings break the target's rules."""

    stage = "target"


class ValidationFailed(QConvertError):
    """Validation ran and the candidate is outside tolerance (exit code 1)."""

    exit_code = 1
    stage = "validate"


class InternalError(Exception):
    """A bug in qconvert itself: an invariant of our own code did not hold."""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def brief(e: BaseException, limit: int = 400) -> str:
    """A one-line account of a third-party exception: colour codes removed, and for torch's
    exporter errors, the exception summary rather than the boilerplate that precedes it."""
    text = _ANSI.sub("", str(e)).strip()
    _, found, summary = text.partition("## Exception summary")
    if found:
        text = summary.strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = re.sub(r"^<class '[\w.]+\.(\w+)'>:", r"\1:", line)
    line = line or type(e).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
