"""BlameLayers: per-layer sensitivity of a failed (or --auto) run and, with --auto, the graph that keeps
the most sensitive nodes in float."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from qconvert import artifacts
from qconvert.calibrate import Dataset
from qconvert.quantize import QUANTIZERS
from qconvert.quantize.static import quantize_static_int8
from qconvert.settings import RunConfig
from qconvert.stages._shared import Progress, check_target_rules, float_nodes_note
from qconvert.stages.base import Stage
from qconvert.stages.context import ExportContext
from qconvert.types import QuantizeConfig
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
    notes: tuple[str, ...] = ()


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
    recover_again: Callable[[tuple[str, ...], Path], Path] | None = None,
) -> _Blame:
    """Per-layer sensitivity of the Q/DQ graph and, with --auto and a `failed` validation, the
    fallback: `validate(path)` validates a graph as model.onnx was, `finalize(path)` applies the
    target's last changes in place. `recover_again(kept, dest)`, where recovery steps changed
    `prepared`, writes `prepared` recovered anew with `kept` in float: the graph the fallback's
    choice is rebuilt from, since steps like bias correction measured a graph in which those
    nodes were quantized.

    Runs on a Q/DQ graph quantized with `qc` (in Q/DQ format even where model.onnx is QOperator)."""
    from qconvert import fallback
    from qconvert.validation import sensitivity

    why_not = _sensitivity_unavailable(qc)
    if why_not is not None:
        return _Blame({"available": False, "reason": f"per-layer sensitivity is not available: {why_not}"})
    # the user's --exclude/--include stay in force; the fallback re-quantizes without a post step's
    # per-layer formats (mixed precision), so its graphs have none
    qdq = replace(qc, format="qdq", layer_formats=())

    def quantize(exclude: tuple[str, ...], dest: Path, source: Path = prepared) -> Path:
        """`source` with `exclude` float, each quantized tensor at its range in the model: the
        export's calibration is reused, not run again per exclusion set."""
        excluded = replace(qdq, nodes_to_exclude=(*qdq.nodes_to_exclude, *exclude))
        return quantize_static_int8(source, dest, excluded, calibration, ranges_of=qdq)

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

    def build(kept: tuple[str, ...], dest: Path, source: Path = prepared) -> Path:
        excluded = quantize(kept, dest.with_name(dest.stem + "-excluded.onnx"), source)
        path = fallback.keep_float(excluded, dest, kept, source)
        finalize(path)
        return path

    def on_step(done: int, total: int) -> None:
        report_progress("fallback", "--auto: keeping sensitive nodes in float", done, total)

    report_progress("fallback", "--auto: keeping sensitive nodes in float", 0, None)
    result = fallback.search(sens.fallback_order(), budget, build, validate, work / "fallback", on_step)
    if result.passed and result.kept_float and recover_again is not None:
        result, blame.notes = _recovered_again(result, recover_again, build, validate, work, report_progress)
    blame.fallback = result
    if result.passed:
        blame.qc = replace(qdq, nodes_to_exclude=(*qdq.nodes_to_exclude, *result.kept_float))
    return blame


def _recovered_again(
    result: Any,
    recover_again: Callable[[tuple[str, ...], Path], Path],
    build: Callable[[tuple[str, ...], Path, Path], Path],
    validate: Callable[[Path], ValidationResult],
    work: Path,
    report_progress: Progress,
) -> tuple[Any, tuple[str, ...]]:
    """The fallback's choice rebuilt from the graph recovered again with its kept nodes in float (the
    search measured graphs recovered with every node quantized) and validated: (the result to ship,
    notes). The search's own graph stays where the rebuilt one fails."""
    report_progress("fallback", "--auto: accuracy recovery again, the kept nodes in float", None, None)
    where = work / "fallback"
    source = recover_again(result.kept_float, where / "recovered-again.onnx")
    path = build(result.kept_float, where / "kept-float-recovered-again.onnx", source)
    validation = validate(path)
    if validation:
        note = "--auto: recovery steps re-run with the kept nodes in float; that graph passes"
        return replace(result, model=path, validation=validation), (note,)
    note = (
        "--auto: recovery steps re-run with the kept nodes in float failed validation "
        f"({validation.failures[0].describe()}); the graph the search validated is kept"
    )
    return result, (note,)


def _recover_again(ctx: ExportContext) -> Callable[[tuple[str, ...], Path], Path]:
    """(kept, dest) -> the prepared graph recovered again, as the Recover stage did, but with `kept`
    in float (written to `dest`)."""

    def recover_again(kept: tuple[str, ...], dest: Path) -> Path:
        import onnx

        from qconvert.recover import RecoveryInput, rerun_pre_steps
        from qconvert.recover.base import quantizer_for

        qc = replace(ctx.qc, format="qdq", nodes_to_exclude=(*ctx.qc.nodes_to_exclude, *kept))
        work = ctx.art.work
        inp = RecoveryInput(qc, ctx.calibration, work, quantize=quantizer_for(qc, ctx.calibration, work))
        model = rerun_pre_steps(ctx.recover, onnx.load(str(ctx.prepared_fp32)), inp)
        return artifacts.save_onnx(model, dest, ctx.qc.external_data or None)

    return recover_again


class BlameLayers(Stage[ExportContext]):
    name = "sensitivity"
    needs = ("validation", "validate_graph", "prepared", "prepared_fp32", "recover", "model_path")
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
            recover_again=_recover_again(ctx) if ctx.prepared != ctx.prepared_fp32 else None,
        )
        ctx.blame = blame
        ctx.notes.extend(blame.notes)
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
