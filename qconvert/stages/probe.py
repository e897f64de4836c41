"""ProbeCollapse: `qconvert validate --probe collapse` counts the held-out pairs the reference tells apart
and the candidate no longer does (and, for token models, the copy and count sequences it still
separates); with a collapse_rate bound, the rate's confidence interval is a check."""

from __future__ import annotations

from pathlib import Path

from qconvert.stages._shared import MODEL_CHECKS, add_checks
from qconvert.stages.base import Stage
from qconvert.stages.context import ValidateContext
from qconvert.validation import Check


class ProbeCollapse(Stage[ValidateContext]):
    name = "probe"
    needs = (
        "probe_kwargs",
        "model_bounds",
        "reference_spec",
        "reference_onnx",
        "heldout",
        "providers",
        "checked_path",
        "candidate",
        "validation",
    )
    gives = ("collapse",)

    def message(self, ctx: ValidateContext) -> str | None:
        if ctx.probe_kwargs is None:
            return None
        return "collapse probe: held-out pairs, copy and count sequences"

    def run(self, ctx: ValidateContext) -> None:
        from qconvert.validation.collapse import probe_collapse

        ctx.collapse = None
        if ctx.probe_kwargs is None:
            return
        reference = ctx.reference_onnx  # PlanChecks': --reference itself when it is an .onnx
        assert reference is not None  # PlanChecks refused the probe without an ONNX reference
        if reference != Path(ctx.reference_spec):
            ctx.notes.append(f"--probe collapse ran the fp32 export {reference} as the reference")
        ctx.collapse = collapse = probe_collapse(
            reference,
            ctx.checked_path,
            ctx.heldout,
            optimize=ctx.candidate.optimized,
            providers=ctx.providers,
            **ctx.probe_kwargs,
        )
        bounds = [b for b in ctx.model_bounds if b.metric == "collapse_rate"]
        level = ctx.config.confidence
        checks = [Check(MODEL_CHECKS, b, collapse.rate, collapse.interval(level)) for b in bounds]
        ctx.validation = add_checks(ctx.validation, *checks)
        if not bounds:
            ctx.notes.append(
                "--probe collapse: reported, not checked; add a bound with --tolerance 'collapse_rate<=X' to "
                "gate on it"
            )
