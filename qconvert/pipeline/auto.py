"""--auto, first half: when validation fails, more accuracy recovery before any layer is given up.

AutoRecover re-runs the stages from Recover to CompareToReference (exporting.RETRY, handed to it)
with the next step of the model family's ladder added (cheap data-free or one-pass steps first, then
MSE activation ranges, then AdaRound, then mixed precision: per-layer formats above int8 where the
target runs them), keeping a step only where it improved the verdict, until the tolerance holds or
the time budget is spent. What each attempt bought (worst check and figures before and after,
seconds) goes into report.json's `auto`. Mixed precision comes last because it is the one rung that
buys accuracy with latency and size; its trade-off table stays in the report even where the attempt
was not kept. Where recovery alone does not reach the tolerance, the second half of --auto
(BlameLayers: the most sensitive layers kept in float, validated on the held-out data after each) starts
from the best attempt; mixed precision chose on calibration samples, so that float fallback remains the
last resort rather than being folded into it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from qconvert.recover import RECOVERY
from qconvert.recover.base import in_run_order
from qconvert.recover.defaults import LADDER, LAST_RUNGS, MSE_RANGES
from qconvert.stages.base import Stage, run_stages
from qconvert.stages.context import ExportContext
from qconvert.validation import ValidationResult


def score(validation: ValidationResult) -> float:
    """The worst check's slack relative to its bound, read where the verdict reads it (the interval's
    end on the passing side): >= 0 when every check's interval lies inside its bound."""
    return min((check.slack for check in validation.checks), default=0.0)


def _worst(validation: ValidationResult) -> str:
    failed = validation.failures
    return failed[0].describe() if failed else "every check passes"


def _figures(validation: ValidationResult) -> dict[str, dict[str, float]]:
    """The headline figures of each output (what an attempt bought, next to its worst check)."""
    keep = ("top1_agreement", "sqnr_db", "cosine")
    return {n: {k: m[k] for k in keep if k in m} for n, m in validation.outputs.items()}


def _attempt_record(
    recover: Sequence[str],
    method: str,
    validation: ValidationResult,
    seconds: float,
    kept: bool,
    score_before: float | None = None,
) -> dict[str, Any]:
    """One entry of report.json's `auto`: what was tried and what it bought (score_before: the best
    score when it was tried; absent for the starting point)."""
    return {
        "recover": list(recover),
        "calibration_method": method,
        "passed": bool(validation),
        "worst": _worst(validation),
        "score": score(validation),
        **({} if score_before is None else {"score_before": score_before}),
        "figures": _figures(validation),
        "seconds": seconds,
        "kept": kept,
    }


class AutoRecover(Stage[ExportContext]):
    """--auto: add the family ladder's recovery steps one at a time while validation fails."""

    name = "auto-recover"
    needs = ("validation", "defaults", "prepared_fp32", "notes_mark")
    gives = ("auto",)

    def __init__(self, retry: Sequence[Stage[ExportContext]]) -> None:
        self.retry = tuple(retry)  # the stages from Recover to CompareToReference (pipeline/exporting.py)

    def skip(self, ctx: ExportContext) -> bool:
        if not (ctx.config.auto and not ctx.validation and ctx.qc.mode in ("static", "dynamic")):
            ctx.auto = []
            return True
        if ctx.validation.data_limited:  # no recovery step can make up for too few samples
            ctx.auto = []
            ctx.notes.append(
                f"--auto: nothing to recover: the verdict is INCONCLUSIVE for want of held-out samples "
                f"({ctx.validation.samples}), not for accuracy; no model could pass on so few"
            )
            return True
        return False

    def message(self, ctx: ExportContext) -> str:
        return "--auto: trying accuracy-recovery steps"

    def _attempt(self, ctx: ExportContext, recover: tuple[str, ...], method: str) -> ValidationResult:
        ctx.prepared, ctx.recover, ctx.recovery, ctx.recovery_cache = ctx.prepared_fp32, recover, [], {}
        ctx.candidates = [replace(c, calibration_method=method) for c in ctx.candidates]
        ctx.qc = replace(ctx.qc, calibration_method=method)
        del ctx.notes[ctx.notes_mark :]
        run_stages(self.retry, ctx, ctx.progress)
        return ctx.validation

    def run(self, ctx: ExportContext) -> None:
        start = time.perf_counter()
        budget = ctx.config.auto_seconds
        best = (tuple(ctx.recover), ctx.qc.calibration_method)
        best_score = score(ctx.validation)
        attempts = [_attempt_record(best[0], best[1], ctx.validation, 0.0, kept=True)]
        ladder = (*LADDER.get(ctx.defaults["family"], LADDER["other"]), *LAST_RUNGS)
        tradeoff = None  # the last trade-off table an attempt made (mixed precision)
        rungs = [r for r in ladder if r == MSE_RANGES or (r in RECOVERY and r not in best[0])]
        passed = False
        for i, rung in enumerate(rungs):
            if time.perf_counter() - start > budget:
                break
            ctx.progress("auto-recover", f"--auto: {rung}", i, len(rungs))
            recover, method = best
            if rung == MSE_RANGES:
                if method == "mse" or ctx.qc.mode != "static":
                    continue
                method = "mse"
            else:
                steps = in_run_order([RECOVERY.get(n) for n in (*recover, rung)])
                recover = tuple(step.name for step in steps)  # as the Recover stage runs them
            tried = time.perf_counter()
            validation = self._attempt(ctx, recover, method)
            tradeoff = ctx.tradeoff or tradeoff
            now = score(validation)
            kept = bool(validation) or now > best_score
            seconds = time.perf_counter() - tried
            attempts.append(_attempt_record(recover, method, validation, seconds, kept, best_score))
            if kept:
                best, best_score = (recover, method), now
            if validation:
                passed = True
                break
        last = attempts[-1]
        if not passed and (tuple(last["recover"]), last["calibration_method"]) != best:
            self._attempt(ctx, *best)  # the last attempt was worse: rebuild the best one
        if ctx.tradeoff is None and tradeoff is not None:  # tried, not kept: the table stays
            ctx.tradeoff = {**tradeoff, "shipped": False}
        ctx.auto = attempts
        ctx.notes.append(
            f"--auto: accuracy recovery {'reached the tolerance' if passed else 'did not reach the tolerance'}"
            f" with {', '.join(best[0]) or 'no steps'} (ranges {best[1]}); {len(attempts) - 1} attempt(s), "
            f"{time.perf_counter() - start:.0f} s (report.json: auto)"
        )
