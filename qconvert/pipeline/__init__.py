"""The order of the stages: source -> export -> prepare -> quantize -> target -> validate -> artifacts.

This package is the only place that knows that order: `exporting.export` runs it for `qconvert
export`, `gate.validate` checks an existing candidate for `qconvert validate`. Each stage is called
with values and returns values; an unexpected exception inside one is reported as a bug in that
stage (`_stages.stage`).
"""

from __future__ import annotations

from qconvert.pipeline._stages import Progress, latency_feed, model_inputs
from qconvert.pipeline.exporting import RunResult, default_out_dir, export, load_data
from qconvert.pipeline.gate import ValidationRun, validate

__all__ = [
    "Progress",
    "RunResult",
    "ValidationRun",
    "default_out_dir",
    "export",
    "latency_feed",
    "load_data",
    "model_inputs",
    "validate",
]
