"""qconvert: a trained PyTorch model to a quantized ONNX model for a named target, with proof.

`import qconvert` is light: torch and onnxruntime are imported only by the stages that use them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "CalibrationError",
    "ConfigError",
    "ExportError",
    "InputSpec",
    "QConvertError",
    "QuantizationError",
    "RunConfig",
    "RunResult",
    "SourceError",
    "TargetError",
    "ValidationFailed",
    "__version__",
    "export",
    "load_session",
]

from qconvert.config import InputSpec, RunConfig
from qconvert.errors import (
    CalibrationError,
    ConfigError,
    ExportError,
    QConvertError,
    QuantizationError,
    SourceError,
    TargetError,
    ValidationFailed,
)

if TYPE_CHECKING:
    from qconvert.pipeline import RunResult, export
    from qconvert.runtime import load_session


def __getattr__(name: str) -> Any:
    # the pipeline pulls in onnx/onnxruntime; load it on first use only
    if name in ("export", "RunResult"):
        from qconvert import pipeline

        return getattr(pipeline, name)
    if name == "load_session":
        from qconvert.runtime import load_session

        return load_session
    raise AttributeError(f"module 'qconvert' has no attribute {name!r}")
