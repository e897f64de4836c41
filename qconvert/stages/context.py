"""The export context: what the stages of one `qconvert export` run know so far.

Each field is set by exactly one stage (its `gives`) and read by later ones (their `needs`); a field
is absent, not None, until its stage ran, so the runner can check the order. `notes` collects the
report's notes in the order the stages add them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for annotations: importing the context stays cheap
    from qconvert.artifacts import ArtifactDir
    from qconvert.calibrate import Dataset, ModelInput
    from qconvert.config import QuantizeConfig, RunConfig, Tolerance
    from qconvert.onnx_export import ExportResult
    from qconvert.runtime import Session
    from qconvert.sources import LoadedModel
    from qconvert.stages._shared import Progress
    from qconvert.targets import BoundTarget, Provider
    from qconvert.validation import ValidationResult


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
    report: dict[str, Any]
    manifest: dict[str, Any]

    def __init__(self, config: RunConfig, progress: Progress, stack: contextlib.ExitStack) -> None:
        self.config = config
        self.progress = progress
        self.stack = stack  # the output folder is entered on it, so a failure rolls it back
        self.notes: list[str] = []
