"""WriteArtifacts: report.json, report.html, qconvert.json and the companions, then the atomic move."""

from __future__ import annotations

import platform
import shlex
from dataclasses import asdict, replace
from datetime import datetime, timezone
from importlib import metadata

from qconvert.artifacts import sha256_file
from qconvert.results import (
    Accuracy,
    AccuracyIntervals,
    AutoAttempt,
    DataFlags,
    DataRecord,
    DataSource,
    ExportRecord,
    Fallback,
    Figures,
    Fusions,
    Latency,
    Manifest,
    ModelInputRecord,
    Ops,
    ProviderRecord,
    QuantizationRecord,
    RecoveryStep,
    Report,
    Sensitivity,
    Size,
    SourceFile,
    SourceRecord,
    TargetRecord,
    Tradeoff,
    ValidatedOn,
    VerdictRecord,
    written,
)
from qconvert.stages._shared import op_counts
from qconvert.stages.base import Stage
from qconvert.stages.context import ExportContext
from qconvert.validation.standin import emulation


def _accuracy(ctx: ExportContext, figures: Figures) -> Accuracy | None:
    """Task accuracy on the held-out labels of the original, the fp32 export and model.onnx."""
    acc = figures.accuracy
    if acc is None:
        return None
    intervals = acc.intervals  # fp32_onnx has none: it is the export's fidelity
    return Accuracy(
        reference=acc.reference,
        fp32_onnx=ctx.fidelity.accuracy["candidate"] if ctx.fidelity.accuracy else None,
        model=acc.candidate,
        drop=acc.drop,
        samples=len(ctx.heldout),
        intervals=None
        if intervals is None
        else AccuracyIntervals(reference=intervals.reference, model=intervals.candidate, drop=intervals.drop),
    )


def report_record(ctx: ExportContext) -> Report:
    """report.json: what was measured. The live results (validation, sensitivity, fallback, the
    trade-off table) become the record's typed entries through the JSON they write."""
    blame, sizes, lat = ctx.blame, ctx.sizes, ctx.lat
    fallback = None if blame is None else ctx.fallback_json
    figures = written(Figures, ctx.validation.as_json(), "validation")
    return Report(
        passed=bool(ctx.validation),
        verdict=ctx.validation.verdict,
        target=ctx.target.name,
        bits=ctx.config.bits,
        mode=ctx.qc.mode,
        validated_on=ctx.candidate.used,
        validation_exact_qdq=not ctx.candidate.optimized,
        # the graph validation ran when it was not model.onnx: implicit (an explicit Q/DQ graph with
        # the table's ranges), fp16 or bf16 (an fp32 graph rounding to that type)
        stand_in=None
        if ctx.checked_path == ctx.model_path
        else emulation(ctx.qc.mode, bool(ctx.qc.calibration_table), ctx.not_here, ctx.qc.layer_formats),
        validation=figures,
        on_cpu_kernels=None
        if ctx.on_cpu_kernels is None
        else written(Figures, ctx.on_cpu_kernels.as_json(), "on_cpu_kernels"),
        export_fidelity=ctx.fidelity.outputs,
        accuracy=_accuracy(ctx, figures),
        size=Size(
            fp32_bytes=sizes["fp32_bytes"],
            model_bytes=sizes["model_bytes"],
            ratio=sizes["model_bytes"] / sizes["fp32_bytes"],
        ),
        latency=Latency(
            provider=ctx.bench_provider,
            batch=ctx.config.latency_batch,
            fp32=lat["fp32"],
            model=lat["model"],
            ratio_p50=lat["model"].p50_ms / lat["fp32"].p50_ms,
        ),
        data=DataFlags(**ctx.data_flags),
        fusions=None if ctx.fusions is None else Fusions(**ctx.fusions),
        ops=Ops(
            fp32=op_counts(ctx.reference_path),
            model=op_counts(ctx.model_path),
            float_between_qdq=tuple(ctx.float_nodes),
        ),
        notes=tuple(ctx.notes),
        recovery=tuple(written(RecoveryStep, step, "recovery") for step in ctx.recovery),
        defaults=ctx.defaults,
        auto=tuple(written(AutoAttempt, attempt, "auto") for attempt in ctx.auto),
        sensitivity=None if blame is None else written(Sensitivity, blame.sensitivity, "sensitivity"),
        fallback=None if fallback is None else written(Fallback, fallback, "fallback"),
        tradeoff=None if ctx.tradeoff is None else written(Tradeoff, ctx.tradeoff, "tradeoff"),
    )


def manifest_record(ctx: ExportContext) -> Manifest:
    """qconvert.json: everything needed to re-run and re-check (`files`, the hashes, are added once
    the other files are written).
    `settings` are the run's own (`--mode` as given, None for the target's and the family's choice,
    which `quantization.mode` records), so that `Manifest.run_config()` gives back `command`."""
    qc = ctx.qc
    return Manifest(
        qconvert=_versions()["qconvert"],
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        command=shlex.join(ctx.config.to_argv(ctx.out_dir)),
        source=SourceRecord(
            origin=ctx.loaded.origin,
            kind=ctx.loaded.kind,
            files=tuple(SourceFile(path=str(p), sha256=sha256_file(p)) for p in ctx.loaded.files),
            inputs=tuple(
                ModelInputRecord(name=i.name, dims=tuple(i.dims), dtype=i.dtype) for i in ctx.inputs
            ),
            outputs=tuple(ctx.loaded.output_names),
            task=ctx.loaded.task,
            token_outputs=ctx.loaded.token_outputs,
        ),
        settings={**ctx.config.flat(), "out_dir": str(ctx.out_dir)},
        quantization=written(
            QuantizationRecord,
            {
                **asdict(qc),
                "forbidden_ops": sorted(qc.forbidden_ops),
                "keep_fp32_ops": sorted(qc.keep_fp32_ops),
            },
            "qconvert.json: quantization",
        ),
        export=ExportRecord(
            exporter=ctx.exported.exporter,
            fallback_reason=ctx.exported.fallback_reason,
            opset=ctx.exported.opset,
        ),
        target=TargetRecord(name=ctx.target.name, options=dict(ctx.target.options), facts=ctx.target.facts()),
        providers=tuple(ProviderRecord(name=p.name, options=dict(p.options)) for p in ctx.providers),
        provider_paths_relative_to="this folder",
        validated_on=ValidatedOn(provider=ctx.candidate.used, exact_qdq=not ctx.candidate.optimized),
        data=DataRecord(
            calibration=None
            if ctx.calibration is None
            else DataSource(origin=ctx.calibration.origin, samples=len(ctx.calibration)),
            validation=DataSource(origin=ctx.heldout.origin, samples=len(ctx.heldout)),
        ),
        tolerance=tuple(b.describe() for b in ctx.tolerance.bounds),
        validation=VerdictRecord(
            passed=bool(ctx.validation),
            verdict=ctx.validation.verdict,
            confidence=ctx.validation.confidence,
            failures=tuple(c.describe() for c in ctx.validation.failures),
        ),
        versions=_versions(),
    )


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("qconvert", "torch", "onnx", "onnxruntime", "onnxscript", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


class WriteArtifacts(Stage[ExportContext]):
    name = "write"
    needs = ("validation", "lat", "sizes", "fallback_json", "recovery", "defaults", "auto", "tradeoff")
    gives = ("report", "manifest")

    def run(self, ctx: ExportContext) -> None:
        report = report_record(ctx)
        art = ctx.art
        for companion in ctx.loaded.companion_files:  # config and tokenizer: OUT_DIR loads on its own
            art.copy_file(companion, companion.name)
        ctx.report = report
        art.write_json("report.json", report.to_json())
        from qconvert.report_html import render_html

        about = manifest_record(ctx)  # the page names the model, qconvert, the date and the command
        art.write_text("report.html", render_html(report, about))
        ctx.manifest = replace(about, files=art.hashes())
        art.write_json("qconvert.json", ctx.manifest.to_json())
        art.commit()
