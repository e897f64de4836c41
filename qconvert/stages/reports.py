"""WriteReports: the ValidationRun of `qconvert validate`, and its --json / --junit / --html files (each
written atomically; PlanChecks refused their paths before any work where they could not be written)."""

from __future__ import annotations

import json
import time

from qconvert.results import Collapse, Figures, ValidationReport, ValidationRun, written
from qconvert.stages.base import Stage
from qconvert.stages.context import ValidateContext


def validation_report(ctx: ValidateContext) -> ValidationReport:
    """The --json document: what ran on what, with which tolerance, and every check."""
    verified = ctx.verified
    return ValidationReport(
        passed=bool(ctx.validation),
        verdict=ctx.validation.verdict,
        candidate=str(ctx.config.candidate),
        model=str(ctx.model_path),
        reference=ctx.reference,
        data=str(ctx.data_path),
        samples=len(ctx.heldout),
        labels=ctx.heldout.labels is not None,
        provider=ctx.candidate.used,
        exact_qdq=not ctx.candidate.optimized,
        bits=ctx.bits,
        tolerance=tuple(b.describe() for b in ctx.tolerance.bounds),
        tolerance_source=ctx.tolerance_source,
        task=ctx.task,
        speed=ctx.speed,
        collapse=None if ctx.collapse is None else written(Collapse, ctx.collapse.as_json(), "collapse"),
        notes=tuple(ctx.notes),
        manifest_sha256=None if verified is None else verified.manifest_sha256,
        verified_files=None if verified is None else verified.files,
        seconds=time.perf_counter() - ctx.started,
        validation=written(Figures, ctx.validation.as_json(), "validation"),
    )


class WriteReports(Stage[ValidateContext]):
    name = "write"
    needs = (
        "verified",
        "model_path",
        "data_path",
        "heldout",
        "reference",
        "candidate",
        "bits",
        "tolerance",
        "tolerance_source",
        "validation",
        "task",
        "collapse",
        "speed",
        "user_files",
    )
    gives = ("run",)

    def run(self, ctx: ValidateContext) -> None:
        from qconvert.artifacts import write_text_atomic

        config = ctx.config
        ctx.run = run = ValidationRun(ctx.validation, validation_report(ctx))
        pages = []
        if config.json_out is not None:
            pages.append(("--json", config.json_out, json.dumps(run.as_json(), indent=2, default=str) + "\n"))
        if config.junit_out is not None:
            from qconvert.junit import render_junit

            pages.append(("--junit", config.junit_out, render_junit(run.report)))
        if config.html_out is not None:
            from qconvert.report_html import render_validation_html

            pages.append(("--html", config.html_out, render_validation_html(run.report)))
        for flag, path, text in pages:
            write_text_atomic(path, text, config.force, ctx.user_files, flag)
