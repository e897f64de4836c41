"""BlameLayers: per-layer sensitivity of a failed (or --auto) run and, with --auto, the graph that keeps
the most sensitive nodes in float."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from qconvert import artifacts
from qconvert.calibrate import Dataset
from qconvert.config import QuantizeConfig, RunConfig
from qconvert.quantize import QUANTIZERS
from qconvert.stages._shared import Progress, check_target_rules, float_nodes_note
from qconvert.stages.base import Stage
from qconvert.stages.context import ExportContext
from qconvert.validation import ValidationResult


def _sensitivity_unavailable(qc: QuantizeConfig) -> str | None:
    """Why per-layer sensitivity and --auto cannot run on this quantization (None: they can).
    Both need an explicit Q/DQ graph quantized by the static quantizer, which takes nodes_to_exclude."""
    if qc.calibration_table:
        return (
            "implicit int8 has no Q/DQ nodes in model.onnx (TensorRT picks each layer's precision "
            "itself), so there is no per-layer quantization to measure or to undo"
        )
    if not QUANTIZERS.get(qc.mode).supports_sensitivity:
        return (
            f"{qc.mode} mode: qconvert measures sensitivity and falls back to float only for static Q/DQ "
            "int8 graphs"
        )
    return None


@dataclass
class _Blame:
    """What per-layer sensitivity and --auto found, and the graph to ship when the fallback passed."""

    sensitivity: dict[str, Any]
    fallback: Any = None  # fallback.FallbackResult
    qc: QuantizeConfig | None = None  # the settings of the fallback graph, when it is model.onnx


def _blame(
    config: RunConfig,
    qc: QuantizeConfig,
    prepared: Path,
    calibration: Dataset | None,
    heldout: Dataset,
    work: Path,
    validate: Callable[[Path], ValidationResult],
    finalize: Callable[[Path], object],
    report_progress: Progress,
    failed: bool,
) -> _Blame:
    """Per-layer sensitivity of the Q/DQ graph and, with --auto and a `failed` validation, the
    fallback: `validate(path)` validates a graph as model.onnx was, `finalize(path)` applies the
    target's last changes in place.

    Runs on a Q/DQ graph quantized with `qc` (in Q/DQ format even where model.onnx is QOperator)."""
    from qconvert import fallback
    from qconvert.validation import sensitivity

    why_not = _sensitivity_unavailable(qc)
    if why_not is not None:
        return _Blame({"available": False, "reason": f"per-layer sensitivity is not available: {why_not}"})
    qdq = replace(qc, format="qdq")  # the user's --exclude/--include stay in force

    def quantize(exclude: tuple[str, ...], dest: Path) -> Path:
        excluded = replace(qdq, nodes_to_exclude=(*qdq.nodes_to_exclude, *exclude))
        return QUANTIZERS.get("static")(prepared, dest, excluded, calibration)

    def on_node(done: int, total: int) -> None:
        report_progress("sensitivity", "per-layer sensitivity (isolated quantizations)", done, total)

    report_progress("sensitivity", "per-layer sensitivity (SQNR against fp32)", None, None)
    sens_dir = work / "sensitivity"
    sens_dir.mkdir(exist_ok=True)
    sens = sensitivity.analyze(
        prepared,
        quantize((), sens_dir / "all-int8.onnx"),
        heldout,
        quantize,
        sens_dir,
        isolated=config.sensitivity_isolated,
        samples=config.sensitivity_samples,
        on_node=on_node,
    )
    blame = _Blame(sens.as_json())
    if not (config.auto and failed):
        return blame

    budget = fallback.default_budget(len(sens.layers)) if config.auto_budget is None else config.auto_budget

    def build(kept: tuple[str, ...], dest: Path) -> Path:
        excluded = quantize(kept, dest.with_name(dest.stem + "-excluded.onnx"))
        path = fallback.keep_float(excluded, dest, kept, prepared)
        finalize(path)
        return path

    def on_step(done: int, total: int) -> None:
        report_progress("fallback", "--auto: keeping sensitive nodes in float", done, total)

    report_progress("fallback", "--auto: keeping sensitive nodes in float", 0, None)
    result = fallback.search(sens.fallback_order(), budget, build, validate, work / "fallback", on_step)
    blame.fallback = result
    if result.passed:
        blame.qc = replace(qdq, nodes_to_exclude=(*qdq.nodes_to_exclude, *result.kept_float))
    return blame


class BlameLayers(Stage[ExportContext]):
    name = "sensitivity"
    needs = ("validation", "validate_graph", "prepared", "model_path")
    gives = ("blame", "all_int8_path")

    def run(self, ctx: ExportContext) -> None:
        ctx.blame, ctx.all_int8_path = None, None
        # a verdict INCONCLUSIVE for want of held-out samples alone has no layer to blame
        to_blame = not ctx.validation and not ctx.validation.data_limited
        if not (ctx.config.auto or to_blame):
            return
        target, inputs = ctx.target, ctx.inputs
        blame = _blame(
            ctx.config,
            ctx.qc,
            ctx.prepared,
            ctx.calibration,
            ctx.heldout,
            ctx.art.work,
            ctx.validate_graph,
            lambda path: target.finalize(path, inputs),
            ctx.progress,
            failed=to_blame,
        )
        ctx.blame = blame
        if blame.qc is not None and blame.fallback is not None:  # the fallback passed: ship it
            import onnx

            ctx.all_int8_path = artifacts.save_onnx(
                onnx.load(str(ctx.model_path)), ctx.art.work / "all-int8.onnx"
            )
            ctx.qc = blame.qc
            ctx.model_path = ctx.checked_path = ctx.art.copy_onnx(blame.fallback.model, "model.onnx")
            ctx.validation = blame.fallback.validation
            ctx.float_nodes = check_target_rules(target, ctx.qc, ctx.model_path, ctx.providers)
            ctx.notes[:] = [n for n in ctx.notes if n not in ctx.float_note]
            ctx.notes.extend(float_nodes_note(ctx.float_nodes, ctx.providers[0].name))
