"""Recover and Correct: the accuracy-recovery steps named by --recover (qconvert.recover.RECOVERY).

Recover runs the `pre` steps on the prepared fp32 graph before Quantize (each step's output becomes
the graph that is quantized); Correct runs the `post` steps on (fp32, model.onnx) after it. Steps run
in pipeline order (`Recovery.order`: rewrites, then rounding, then bias correction), whatever order
--recover names them in. A step
that does not apply to this run's format is skipped with its reason. Every step's notes, details and
seconds go into report.json's `recovery` list, in run order.

Each step gets a RecoveryInput whose `quantize` quantizes a candidate fp32 graph exactly as the run
will (same QuantizeConfig, same calibration data), so a step can measure its effect; and, for a step
that chooses per-layer formats, the target's formats, the run's tolerance, the graph before any
step, and a timer on the target's provider where it is on this machine. A post step's `settings`
(e.g. the layer formats it wrote) go into the run's QuantizeConfig; a trade-off table it made
(`details["tradeoff"]`) becomes report.json's `tradeoff`.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import onnx

from qconvert import artifacts
from qconvert.benchmark import interleaved_latency
from qconvert.recover import RECOVERY, Recovery, RecoveryInput
from qconvert.recover.base import in_run_order, quantizer_for
from qconvert.runtime import make_session
from qconvert.stages._shared import latency_feed
from qconvert.stages.base import Stage
from qconvert.stages.context import ExportContext
from qconvert.validation.standin import not_here


def _steps(names: tuple[str, ...], phase: str) -> list[Recovery]:
    steps = [RECOVERY.get(name) for name in names]  # registered instances
    return in_run_order([step for step in steps if step.phase == phase])


def _timer(ctx: ExportContext) -> Callable[[Sequence[onnx.ModelProto]], list[float]] | None:
    """p50 latency (ms) of graphs on the target's provider, timed interleaved on held-out samples at the
    run's latency batch; None where that provider is not on this machine."""
    providers = ctx.target.providers(ctx.inputs, ctx.qc)
    if not_here(ctx.target.name, providers) is not None:
        return None
    feed = latency_feed(ctx.heldout, ctx.config.latency_batch)
    repeats = max(10, ctx.config.latency_repeats // 2)

    def time(models: Sequence[onnx.ModelProto]) -> list[float]:
        with tempfile.TemporaryDirectory(prefix="timing-", dir=ctx.art.work) as tmp:
            runners: dict[str, Callable[[], object]] = {}
            for i, model in enumerate(models):
                path = artifacts.save_onnx(model, Path(tmp) / f"{i}.onnx")
                runners[str(i)] = functools.partial(make_session(path, providers).inner.run, None, feed)
            timed = interleaved_latency(runners, repeats)
        return [timed[str(i)].p50_ms for i in range(len(models))]

    return time


def _run(ctx: ExportContext, phase: str, quantized: Path | None) -> Path | None:
    """Run the `phase` steps in order; the path of the last changed graph (None: nothing changed)."""
    if not hasattr(ctx, "recovery"):
        ctx.recovery = []
    if not hasattr(ctx, "recovery_cache"):
        ctx.recovery_cache = {}
    changed: Path | None = None
    for i, step in enumerate(_steps(ctx.recover, phase)):
        entry: dict[str, Any] = {"name": step.name, "phase": phase}
        reason = step.why_not(ctx.qc)
        if reason is not None:
            ctx.recovery.append({**entry, "applied": False, "reason": reason})
            ctx.notes.append(f"--recover {step.name} skipped: {reason}")
            continue

        def on_step(done: int, total: int, name: str = step.name) -> None:
            ctx.progress("recover", f"--recover {name}", done, total)

        inp = RecoveryInput(
            ctx.qc,
            ctx.calibration,
            ctx.art.work,
            on_step,
            quantize=quantizer_for(ctx.qc, ctx.calibration, ctx.art.work),
            cache=ctx.recovery_cache,
            formats=ctx.target.layer_formats,
            tolerance=ctx.tolerance,
            original=ctx.prepared_fp32,
            time=_timer(ctx) if phase == "post" else None,
        )
        fp32 = onnx.load(str(ctx.prepared))
        result = step(fp32, None if quantized is None else onnx.load(str(quantized)), inp)
        if "tradeoff" in result.details:  # one table per run, at report.json's top level
            ctx.tradeoff = result.details.pop("tradeoff")
        ctx.recovery.append(
            {
                **entry,
                "applied": True,
                "changed": result.changed,
                "notes": list(result.notes),
                "details": result.details,
                "seconds": result.seconds,
            }
        )
        ctx.notes.extend(f"--recover {step.name}: {note}" for note in result.notes)
        if result.changed:
            dest = quantized or ctx.art.work / f"recovered-{i}-{step.name}.onnx"
            changed = artifacts.save_onnx(result.model, dest, ctx.qc.external_data or None)
            if quantized is None:
                ctx.prepared = changed  # the next pre step, and Quantize, take this graph
            else:
                quantized = changed
                ctx.qc = replace(ctx.qc, **result.settings)
    return changed


class Recover(Stage[ExportContext]):
    """`pre` steps: fp32 -> fp32 before quantization."""

    name = "recover"
    needs = ("prepared", "qc", "calibration", "art", "recover", "tolerance", "prepared_fp32")
    gives = ("recovery",)

    def message(self, ctx: ExportContext) -> str:
        return "accuracy recovery before quantization: " + ", ".join(ctx.recover)

    def skip(self, ctx: ExportContext) -> bool:
        if not _steps(ctx.recover, "pre"):
            ctx.recovery = []
            return True
        return False

    def run(self, ctx: ExportContext) -> None:
        _run(ctx, "pre", None)


class Correct(Stage[ExportContext]):
    """`post` steps: (fp32, quantized) -> quantized, rewriting model.onnx."""

    name = "correct"
    needs = ("prepared", "model_path", "recovery")
    gives = ("tradeoff",)  # the mixed-precision table, the one post step that makes one

    def skip(self, ctx: ExportContext) -> bool:
        ctx.tradeoff = None
        return not _steps(ctx.recover, "post")

    def message(self, ctx: ExportContext) -> str:
        return "accuracy corrections after quantization"

    def run(self, ctx: ExportContext) -> None:
        _run(ctx, "post", ctx.model_path)
