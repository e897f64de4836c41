"""The order of the stages: `exporting.EXPORT` is the order of `qconvert export` and `validating.VALIDATE`
the order of `qconvert validate` (their stages live in qconvert/stages/, run by `stages.base.run_stages`).
A failure names its stage and the stages before it.
"""

from __future__ import annotations

from qconvert.pipeline.exporting import RunResult, default_out_dir, export, load_data
from qconvert.pipeline.validating import ValidationRun, validate
from qconvert.stages._shared import Progress, latency_feed, model_inputs

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
