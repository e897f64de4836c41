"""qconvert: a trained PyTorch model to a quantized ONNX model for a named target, with proof.

`import qconvert` is light: torch and onnxruntime are imported only by the stages that use them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "BenchmarkConfig",
    "BenchmarkResult",
    "CalibrationError",
    "ConfigError",
    "ExportError",
    "InputSpec",
    "PrepareError",
    "QConvertError",
    "QuantizationError",
    "RunConfig",
    "RunResult",
    "SourceError",
    "SweepConfig",
    "TargetError",
    "ValidateConfig",
    "ValidationFailed",
    "ValidationRun",
    "__version__",
    "benchmark_models",
    "export",
    "load_session",
    "validate",
]

from qconvert.errors import (
    CalibrationError,
    ConfigError,
    ExportError,
    PrepareError,
    QConvertError,
    QuantizationError,
    SourceError,
    TargetError,
    ValidationFailed,
)
from qconvert.settings import BenchmarkConfig, RunConfig, SweepConfig, ValidateConfig
from qconvert.types import InputSpec

if TYPE_CHECKING:
    from qconvert.benchmark import BenchmarkResult, benchmark_models
    from qconvert.pipeline import RunResult, ValidationRun, export, validate
    from qconvert.runtime import load_session


def __dir__() -> list[str]:
    """The public API only (not `Any`, `TYPE_CHECKING` or the submodules), lazy names included."""
    return sorted(__all__)


def __getattr__(name: str) -> Any:
    # the pipeline pulls in onnx/onnxruntime; load it on first use only
    if name in ("export", "RunResult", "validate", "ValidationRun"):
        from qconvert import pipeline

        return getattr(pipeline, name)
    if name in ("benchmark_models", "BenchmarkResult"):
        from qconvert import benchmark

        return getattr(benchmark, name)
    if name == "load_session":
        from qconvert.runtime import load_session

        return load_session
    raise AttributeError(f"module 'qconvert' has no attribute {name!r}")
