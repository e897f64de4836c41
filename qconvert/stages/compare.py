"""CompareToReference: the candidate against the original on held-out data; CompareOnCpuKernels: the
same graph on this CPU's own kernels where the verdict ran the exact Q/DQ arithmetic."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qconvert.calibrate import Dataset
from qconvert.runtime import make_session
from qconvert.sources import LoadedModel
from qconvert.stages._shared import reference_outputs
from qconvert.stages.base import Stage
from qconvert.stages.context import ExportContext
from qconvert.tolerance import Tolerance
from qconvert.validation import TokenOutputs, ValidationResult, evaluate
from qconvert.validation.standin import runs_native


def _token_outputs(loaded: LoadedModel, data: Dataset) -> TokenOutputs | None:
    """Which outputs of a text model get embedding_cosine / next_token_agreement, with the mask of `data`."""
    mask = data.feeds.get("attention_mask")
    if not loaded.token_outputs or mask is None:
        return None
    return TokenOutputs(mask=mask, kinds=loaded.token_outputs)


def _cpu_kernel_gap(exact: ValidationResult, cpu: ValidationResult) -> list[str]:
    """A note when this machine's CPU int8 kernels compute something visibly different from the
    graph's exact Q/DQ arithmetic (e.g. saturation in the AVX2 int8 path without VNNI)."""
    lines = []
    for name, m in exact.outputs.items():
        c = cpu.outputs[name]
        key = "top1_agreement" if "top1_agreement" in m else "cosine"
        if m[key] - c[key] > 0.005:
            lines.append(
                f"run on this machine's CPU provider (fused int8 kernels), this graph gives {key} "
                f"{c[key]:.4f} for {name!r} instead of {m[key]:.4f}: the CPU's int8 path differs from the "
                "graph's arithmetic here (report.json: on_cpu_kernels). Use the cpu target for CPU deployment."
            )
    return lines


class CompareToReference(Stage[ExportContext]):
    name = "validate"
    needs = ("checked_path", "model_path", "reference_path", "providers", "not_here", "heldout", "tolerance")
    gives = ("native", "candidate", "validation", "fidelity", "evaluate_run", "validate_graph")

    def message(self, ctx: ExportContext) -> str:
        return f"validating on {len(ctx.heldout)} held-out samples"

    def run(self, ctx: ExportContext) -> None:
        heldout, tolerance = ctx.heldout, ctx.tolerance
        # Where this machine cannot run the graph the way the target will, the graph's quantized
        # arithmetic is run exactly (Q/DQ as written), not through this CPU's integer kernels.
        ctx.native = native = runs_native(ctx.not_here, stand_in=ctx.checked_path != ctx.model_path)
        ctx.candidate = make_session(ctx.checked_path, ctx.providers, optimize=native)
        fp32_out = make_session(ctx.reference_path).run(heldout)
        ref_out = reference_outputs(ctx.loaded, heldout, fp32_out)
        names = ctx.candidate.output_names
        tokens = _token_outputs(ctx.loaded, heldout)
        level = ctx.config.confidence

        def evaluate_run(outputs: list[np.ndarray], against: Tolerance = tolerance) -> ValidationResult:
            """Outputs on the held-out data against the original (against=Tolerance(()): figures only)."""
            return evaluate(names, ref_out, outputs, against, heldout.labels, tokens, level)

        ctx.validation = evaluate_run(ctx.candidate.run(heldout))
        ctx.fidelity = evaluate_run(fp32_out, Tolerance(()))
        providers = ctx.providers

        def validate_graph(path: Path) -> ValidationResult:
            """A graph validated as model.onnx was."""
            return evaluate_run(make_session(path, providers, optimize=native).run(heldout))

        ctx.evaluate_run, ctx.validate_graph = evaluate_run, validate_graph


class CompareOnCpuKernels(Stage[ExportContext]):
    name = "cpu-kernels"
    needs = ("validation", "native", "checked_path", "validate_graph")
    gives = ("on_cpu_kernels",)

    def run(self, ctx: ExportContext) -> None:
        ctx.on_cpu_kernels = None
        if not ctx.native:
            cpu_run = make_session(ctx.checked_path).run(ctx.heldout)
            ctx.on_cpu_kernels = ctx.evaluate_run(cpu_run, Tolerance(()))
        if ctx.not_here is not None:
            ctx.notes.append(
                f"{ctx.not_here}: the verdict comes from the CPU provider with graph optimizations off, so "
                "the graph's arithmetic runs as written. Latency on this machine says nothing about "
                f"{ctx.target.name} speed."
            )
            if ctx.checked_path == ctx.model_path and ctx.on_cpu_kernels is not None:
                ctx.notes.extend(_cpu_kernel_gap(ctx.validation, ctx.on_cpu_kernels))
