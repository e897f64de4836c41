"""`qconvert validate`: the order of its stages, and the function that runs them.

    find -> verify -> open -> tolerance -> plan -> load -> reference -> simulate -> candidate -> validate
    -> task -> probe -> benchmark -> write

Each stage is a class in qconvert/stages/ (none imports another); VALIDATE below is the only place that
knows the order. Everything a flag names is checked by `plan`, before any model runs. A failure names its
stage and the stages before it.
"""

from __future__ import annotations

import contextlib

from qconvert.results import ValidationRun
from qconvert.settings import ValidateConfig
from qconvert.stages._shared import Progress, no_progress
from qconvert.stages.base import Stage, run_stages
from qconvert.stages.bench import TimeAgainstReference
from qconvert.stages.candidate import FindCandidate, LoadCandidate, VerifyManifest
from qconvert.stages.checks import ChooseTolerance, PlanChecks
from qconvert.stages.context import ValidateContext
from qconvert.stages.heldout import LoadHeldout
from qconvert.stages.outputs import CompareOutputs, RunCandidate
from qconvert.stages.probe import ProbeCollapse
from qconvert.stages.reference import RunReference
from qconvert.stages.reports import WriteReports
from qconvert.stages.standin import StandInFromManifest
from qconvert.stages.task import ScoreTask

__all__ = ["VALIDATE", "ValidationRun", "validate"]

VALIDATE: tuple[Stage[ValidateContext], ...] = (
    FindCandidate(),
    VerifyManifest(),
    LoadCandidate(),
    ChooseTolerance(),
    PlanChecks(),
    LoadHeldout(),
    RunReference(),
    StandInFromManifest(),
    RunCandidate(),
    CompareOutputs(),
    ScoreTask(),
    ProbeCollapse(),
    TimeAgainstReference(),
    WriteReports(),
)


def validate(config: ValidateConfig, progress: Progress | None = None) -> ValidationRun:
    """Validate an existing candidate (an .onnx file or an OUT_DIR) against a reference on the same
    inputs, apply the tolerance (defaults < qconvert.toml / pyproject.toml < --tolerance), and write
    the --json / --junit / --html reports. Raises QConvertError (exit 2) on bad input; an
    out-of-tolerance candidate is a falsy ValidationRun (exit 1), not an exception."""
    with contextlib.ExitStack() as stack:  # StandInFromManifest enters its temporary folder here
        ctx = ValidateContext(config, progress or no_progress, stack)
        run_stages(VALIDATE, ctx, ctx.progress)
    return ctx.run
