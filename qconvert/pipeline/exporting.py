"""`qconvert export`: the order of its stages, and the function that runs them.

    plan -> load -> data -> output -> export -> prepare -> select -> defaults -> recover -> quantize -> correct
    -> finalize -> simulate -> target -> validate -> auto-recover -> sensitivity -> cpu-kernels -> benchmark
    -> fallback-cost -> write

Each stage is a class in qconvert/stages/ (one per file, none imports another); EXPORT below is the
only place that knows the order. A failure names its stage and the stages before it.
"""

from __future__ import annotations

import contextlib
import time

from qconvert.pipeline.auto import AutoRecover
from qconvert.results import RunResult
from qconvert.settings import RunConfig
from qconvert.stages._shared import Progress, no_progress
from qconvert.stages.base import Stage, run_stages
from qconvert.stages.bench import TimeAgainstFp32
from qconvert.stages.blame import BlameLayers
from qconvert.stages.compare import CompareOnCpuKernels, CompareToReference
from qconvert.stages.context import ExportContext
from qconvert.stages.data import LoadData, load_data
from qconvert.stages.defaults import ChooseDefaults
from qconvert.stages.export import OnnxFromTorch
from qconvert.stages.fallback import FallbackCost
from qconvert.stages.load import LoadSource, default_out_dir
from qconvert.stages.output import OpenOutput
from qconvert.stages.plan import PlanQuantization
from qconvert.stages.prepare import PrepareOnnx
from qconvert.stages.quantize import Quantize
from qconvert.stages.recover import Correct, Recover
from qconvert.stages.select import SelectNodes
from qconvert.stages.standin import StandInForHere
from qconvert.stages.target import CheckTargetRules, FinalizeForTarget
from qconvert.stages.write import WriteArtifacts

__all__ = ["EXPORT", "RETRY", "RunResult", "default_out_dir", "export", "load_data"]

# what --auto's AutoRecover re-runs, with more recovery steps, while validation fails
RETRY: tuple[Stage[ExportContext], ...] = (
    Recover(),
    Quantize(),
    Correct(),
    FinalizeForTarget(),
    StandInForHere(),
    CheckTargetRules(),
    CompareToReference(),
)
EXPORT: tuple[Stage[ExportContext], ...] = (
    PlanQuantization(),
    LoadSource(),
    LoadData(),
    OpenOutput(),
    OnnxFromTorch(),
    PrepareOnnx(),
    SelectNodes(),
    ChooseDefaults(),
    *RETRY,
    AutoRecover(RETRY),
    BlameLayers(),
    CompareOnCpuKernels(),
    TimeAgainstFp32(),
    FallbackCost(),
    WriteArtifacts(),
)


def export(config: RunConfig, progress: Progress | None = None) -> RunResult:
    """Run the EXPORT stages for `config` and write OUT_DIR. See ARCHITECTURE.md."""
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:  # OpenOutput enters the artifact folder here
        ctx = ExportContext(config, progress or no_progress, stack)
        run_stages(EXPORT, ctx, ctx.progress)
    seconds = time.perf_counter() - start
    return RunResult(
        ctx.out_dir,
        ctx.validation,
        ctx.manifest.to_json(),
        ctx.report.to_json(),
        seconds,
        ctx.report,
        ctx.manifest,
    )
