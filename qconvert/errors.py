"""The qconvert error tree.

Every error a user can cause is a :class:`QConvertError`; its message names the file or flag at
fault and says how to fix it. The CLI turns these into a clean message and an exit code.
Anything else that escapes is a bug in qconvert and is shown with its traceback.
"""

from __future__ import annotations

import re
import signal
import threading
from types import FrameType

# Set by the Ctrl-C handler that `latch_interrupts` installs. Some library code catches every exception
# while it imports or exports (a Ctrl-C inside torch's dynamo import was swallowed that way and the run
# went on with the other exporter); the stage runner checks this after every stage, so an interrupt
# that something swallowed still stops the run at the next stage boundary.
# SIGTERM/SIGHUP latch the same way (artifacts._CleanupOnSignals): torch's exporter swallowed the
# Terminated raised inside it, and the run went on to exit 0.
INTERRUPTED = threading.Event()
_LATCHED: dict[str, int] = {}


def latch(signum: int) -> None:
    """Record that signal `signum` arrived, for `raise_latched` at the next stage boundary."""
    _LATCHED["signum"] = signum
    INTERRUPTED.set()


def raise_latched() -> None:
    """Raise what a latched signal should have raised (KeyboardInterrupt for Ctrl-C, Terminated for
    SIGTERM/SIGHUP), if one arrived; nothing otherwise."""
    if not INTERRUPTED.is_set():
        return
    signum = _LATCHED.get("signum", signal.SIGINT)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def _latched_interrupt(signum: int, frame: FrameType | None) -> None:
    latch(signum)
    raise KeyboardInterrupt


def latch_interrupts() -> object:
    """Install the Ctrl-C handler that also sets INTERRUPTED (main thread only); returns the handler
    it replaced, for `signal.signal(signal.SIGINT, old)`."""
    INTERRUPTED.clear()
    _LATCHED.clear()
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, _latched_interrupt)


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
    """A bug in qconvert itself: an invariant of our own code did not hold (exit code 3)."""

    exit_code = 3


class Terminated(BaseException):
    """The process got SIGTERM or SIGHUP: raised from the signal handler so that every `with` block
    (the output folder's temporary sibling, its lock) cleans up as it does for Ctrl-C. Exit code
    128 + the signal number, as a shell reports a process killed by that signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum
        self.exit_code = 128 + signum


# The exit codes, for --help and the README: CI acts on these.
EXIT_CODES = {
    0: "PASSED: every check's confidence interval lies inside its tolerance",
    1: "validation ran: FAILED (outside tolerance) or INCONCLUSIVE (too few held-out samples to tell)",
    2: "bad input or usage (the message names the file or flag and the fix)",
    3: "internal error: a bug in qconvert (traceback shown; please report it)",
}


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
