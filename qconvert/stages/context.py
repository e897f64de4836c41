"""The contexts of the two pipelines: what the stages of one `qconvert export` run (ExportContext) or
one `qconvert validate` run (ValidateContext) know so far.

Each field is set by exactly one stage (its `gives`) and read by later ones (their `needs`); a field
is absent, not None, until its stage ran, so the runner can check the order. `notes` collects the
report's notes in the order the stages add them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for annotations: importing the context stays cheap
    import numpy as np

    from qconvert.artifacts import ArtifactDir
    from qconvert.calibrate import Dataset, ModelInput
    from qconvert.onnx_export import ExportResult
    from qconvert.results import Manifest, Report, Speed, TaskScore, ValidationRun
    from qconvert.runtime import Session
    from qconvert.settings import RunConfig, ValidateConfig
    from qconvert.sources import LoadedModel
    from qconvert.stages._shared import Progress
    from qconvert.targets import BoundTarget, Provider
    from qconvert.tolerance import Bound, Tolerance
    from qconvert.trust import Verified
    from qconvert.types import QuantizeConfig
    from qconvert.validation import ValidationResult
    from qconvert.validation.collapse import CollapseResult


class ExportContext:
    """One export run's state, filled in stage by stage (see pipeline/exporting.py for the order)."""

    # plan
    target: BoundTarget  # the target with its --target-option values, checked once
    mode: str
    tolerance: Tolerance
    candidates: list[QuantizeConfig]
    qc: QuantizeConfig
    # load / data
    loaded: LoadedModel
    out_dir: Path
    inputs: list[ModelInput]
    calibration: Dataset | None
    heldout: Dataset
    user_files: list[Path]
    data_flags: dict[str, bool]  # report.json's `data`: which data were seeded random inputs
    # output folder
    art: ArtifactDir
    # export / prepare
    exported: ExportResult
    prepared: Path
    fusions: dict[str, Any] | None
    # defaults: the recovery steps this run uses (--recover, else the family's) and what was chosen
    recover: tuple[str, ...]
    defaults: dict[str, Any]
    prepared_fp32: Path  # the prepared graph before any recovery step (where --auto starts again)
    notes_mark: int  # len(notes) before the recovery stages (their notes are redone by --auto)
    auto: list[dict[str, Any]]  # report.json's `auto`: each --auto recovery attempt
    # recover / quantize / correct
    recovery: list[dict[str, Any]]  # report.json's `recovery`: one entry per --recover step run
    recovery_cache: dict[str, Any]  # statistics shared by the steps of this run (RecoveryInput.cache)
    tradeoff: dict[str, Any] | None  # report.json's `tradeoff`: what --recover mixed_precision tried
    model_path: Path
    reference_path: Path
    # target / stand-in
    providers: list[Provider]
    not_here: str | None
    checked_path: Path
    float_nodes: list[str]
    float_note: list[str]
    # compare / blame
    native: bool
    candidate: Session
    validation: ValidationResult
    fidelity: ValidationResult
    on_cpu_kernels: ValidationResult | None
    # held-out outputs -> their figures against the original (a Tolerance: with a verdict)
    evaluate_run: Callable[..., ValidationResult]
    validate_graph: Callable[[Path], ValidationResult]  # a graph validated as model.onnx was
    blame: Any  # stages.blame.Blame | None
    all_int8_path: Path | None
    fallback_json: dict[str, Any] | None  # report.json's `fallback` (None: no entry)
    # benchmark
    lat: dict[str, Any]
    bench_provider: str
    sizes: dict[str, int]
    # written
    report: Report
    manifest: Manifest

    def __init__(self, config: RunConfig, progress: Progress, stack: contextlib.ExitStack) -> None:
        self.config = config
        self.progress = progress
        self.stack = stack  # the output folder is entered on it, so a failure rolls it back
        self.notes: list[str] = []


class ValidateContext:
    """One validate run's state, filled in stage by stage (see pipeline/validating.py for the order)."""

    # find / verify / open: the candidate
    model_path: Path  # the candidate's .onnx
    out_dir: Path | None  # the OUT_DIR it came in, if it did
    manifest: Manifest | None  # that OUT_DIR's qconvert.json
    verified: Verified | None  # the manifest's hashes held (None: no manifest to check)
    inputs: list[ModelInput]
    names: list[str]  # the candidate's output names, in graph order
    # tolerance
    bits: int
    tolerance: Tolerance  # defaults < tolerance file < --tolerance
    tolerance_source: str | None  # the tolerance file, if one was read
    model_bounds: list[Bound]  # whole-model bounds (task_drop, speedup, collapse_rate)
    per_output: Tolerance  # the rest, applied per output
    token_kinds: dict[str, str]  # a text model's token outputs (from the manifest)
    # plan: everything a flag names, checked before any work
    reference_spec: str  # --reference, or the OUT_DIR's reference.onnx
    reference_onnx: Path | None  # an fp32 ONNX to time and probe against (None: none here)
    probe_kwargs: dict[str, Any] | None  # the collapse probe's settings (None: no --probe collapse)
    data_path: Path
    calibration_path: Path | None
    user_files: list[Path]  # every file the run reads: no report may overwrite one
    # load
    heldout: Dataset
    metric_fn: Callable[..., Any] | None  # --metric
    # reference
    reference: str  # what the reference is, as the result names it
    ref_out: list[np.ndarray]  # its outputs on the held-out data, in the candidate's output order
    # simulate / candidate
    providers: list[Provider]
    not_here: str | None  # why this machine cannot run the graph as the target will
    native: bool
    checked_path: Path  # what runs: model.onnx, or its fp16/bf16 stand-in
    candidate: Session
    cand_out: list[np.ndarray]
    # validate / task / probe / benchmark: the checks, each stage adding its own
    validation: ValidationResult
    task: TaskScore | None  # --metric: both scores and the drop
    collapse: CollapseResult | None
    speed: Speed | None  # --require-speedup / a speedup bound: both latencies
    # write
    run: ValidationRun

    def __init__(self, config: ValidateConfig, progress: Progress, stack: contextlib.ExitStack) -> None:
        self.config = config
        self.progress = progress
        self.stack = stack  # the stand-in's temporary folder is entered on it
        self.notes: list[str] = []
        self.started = time.perf_counter()
