"""Latency, measured interleaved: TimeAgainstFp32 (export: model.onnx against the fp32 export, and both
sizes) and TimeAgainstReference (validate, for a speedup bound: the candidate against the reference ONNX)."""

from __future__ import annotations

from collections.abc import Callable

from qconvert.artifacts import onnx_size
from qconvert.benchmark import interleaved_latency
from qconvert.results import Speed
from qconvert.runtime import make_session
from qconvert.stages._shared import MODEL_CHECKS, add_checks, latency_feed
from qconvert.stages.base import Stage
from qconvert.stages.context import ExportContext, ValidateContext
from qconvert.validation import Check


class TimeAgainstFp32(Stage[ExportContext]):
    name = "benchmark"
    needs = ("reference_path", "model_path", "checked_path", "providers", "all_int8_path")
    gives = ("lat", "bench_provider", "sizes")

    def message(self, ctx: ExportContext) -> str:
        return "measuring latency against fp32 (interleaved)"

    def run(self, ctx: ExportContext) -> None:
        config, providers = ctx.config, ctx.providers
        batch = latency_feed(ctx.heldout, config.latency_batch)
        fp32_bench = make_session(ctx.reference_path, providers)
        # a bf16 graph does not load without bf16 kernels: time its stand-in (the notes say that
        # latency here says nothing about the target's)
        unloadable = ctx.qc.mode == "bf16" and ctx.not_here is not None
        model_bench = make_session(ctx.checked_path if unloadable else ctx.model_path, providers)
        runners: dict[str, Callable[[], object]] = {
            "fp32": lambda: fp32_bench.inner.run(None, batch),
            "model": lambda: model_bench.inner.run(None, batch),
        }
        if ctx.all_int8_path is not None:  # what keeping nodes in float cost, measured alongside
            int8_bench = make_session(ctx.all_int8_path, providers)
            runners["all_int8"] = lambda: int8_bench.inner.run(None, batch)
        ctx.lat = lat = interleaved_latency(runners, repeats=config.latency_repeats)
        ctx.bench_provider = model_bench.used
        ctx.sizes = {"fp32_bytes": onnx_size(ctx.reference_path), "model_bytes": onnx_size(ctx.model_path)}
        latency_ratio = lat["model"].p50_ms / lat["fp32"].p50_ms
        if latency_ratio >= 1.0 and ctx.checked_path == ctx.model_path:
            ctx.notes.append(
                f"the quantized model is slower than fp32 on {model_bench.used} "
                f"({latency_ratio:.2f}x fp32 latency at batch {config.latency_batch}): here, quantization "
                "buys size, not speed"
            )
        if unloadable:
            ctx.notes.append(
                "bf16: model.onnx cannot run here, so the latency row times its fp32 stand-in on the CPU"
            )


class TimeAgainstReference(Stage[ValidateContext]):
    name = "benchmark"
    needs = ("model_path", "reference_onnx", "providers", "heldout", "validation", "model_bounds")
    gives = ("speed",)

    def message(self, ctx: ValidateContext) -> str | None:
        if not any(b.metric == "speedup" for b in ctx.model_bounds):
            return None
        return "timing candidate and reference (interleaved)"

    def run(self, ctx: ValidateContext) -> None:
        ctx.speed = None
        bounds = [b for b in ctx.model_bounds if b.metric == "speedup"]
        if not bounds:
            return
        assert ctx.reference_onnx is not None  # PlanChecks refused a speedup bound without one
        cand_bench = make_session(ctx.model_path, ctx.providers)
        ref_bench = make_session(ctx.reference_onnx, ctx.providers)
        fixed = [i.shape[0] for i in cand_bench.inner.get_inputs() if isinstance(i.shape[0], int)]
        size = fixed[0] if fixed else ctx.config.latency_batch
        batch = latency_feed(ctx.heldout, size)  # repeats samples where the fixed batch is larger
        lat = interleaved_latency(
            {
                "reference": lambda: ref_bench.inner.run(None, batch),
                "candidate": lambda: cand_bench.inner.run(None, batch),
            },
            repeats=ctx.config.latency_repeats,
        )
        ratio = lat["reference"].p50_ms / lat["candidate"].p50_ms
        ctx.speed = Speed(
            provider=cand_bench.used,
            batch=size,
            reference=lat["reference"],
            candidate=lat["candidate"],
            speedup=ratio,
        )
        ctx.validation = add_checks(ctx.validation, *(Check(MODEL_CHECKS, b, ratio) for b in bounds))
        ctx.notes.append(
            f"latency p50 at batch {size} on {cand_bench.used}: candidate {lat['candidate'].p50_ms:.3f} ms, "
            f"reference {lat['reference'].p50_ms:.3f} ms; speedup {ratio:.2f}x (reference time / candidate "
            "time, measured interleaved)"
        )
