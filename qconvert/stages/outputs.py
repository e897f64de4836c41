"""RunCandidate and CompareOutputs: `qconvert validate` runs the candidate (or its stand-in) on the
held-out data and compares its outputs with the reference's, output by output, against the tolerance."""

from __future__ import annotations

from qconvert.errors import ConfigError
from qconvert.runtime import make_session
from qconvert.stages.base import Stage
from qconvert.stages.context import ValidateContext
from qconvert.validation import TokenOutputs, evaluate


class RunCandidate(Stage[ValidateContext]):
    name = "candidate"
    needs = ("checked_path", "providers", "not_here", "native", "heldout")
    gives = ("candidate", "cand_out")

    def message(self, ctx: ValidateContext) -> str:
        return f"running the candidate on {len(ctx.heldout)} samples"

    def run(self, ctx: ValidateContext) -> None:
        # StandInFromManifest decided (validation/standin.py), as export did
        ctx.candidate = make_session(ctx.checked_path, ctx.providers, optimize=ctx.native)
        ctx.cand_out = ctx.candidate.run(ctx.heldout)
        if not ctx.native:
            ctx.notes.append(
                f"{ctx.not_here}: the candidate ran on {ctx.candidate.used} with graph "
                "optimizations off, so the graph's arithmetic runs as written."
            )


class CompareOutputs(Stage[ValidateContext]):
    name = "validate"
    needs = (
        "names",
        "heldout",
        "ref_out",
        "cand_out",
        "per_output",
        "token_kinds",
        "tolerance_source",
        "reference_spec",
    )
    gives = ("validation",)

    def message(self, ctx: ValidateContext) -> str:
        return "comparing outputs"

    def requires(self, ctx: ValidateContext) -> None:
        super().requires(ctx)
        for name, r, c in zip(ctx.names, ctx.ref_out, ctx.cand_out, strict=True):
            if r.shape != c.shape:
                raise ConfigError(
                    f"--reference {ctx.reference_spec}: output {name!r} has shape {list(r.shape)} in the "
                    f"reference and {list(c.shape)} in the candidate. Give the reference the candidate was "
                    "made from."
                )

    def run(self, ctx: ValidateContext) -> None:
        heldout = ctx.heldout
        mask = heldout.feeds.get("attention_mask")
        tokens = TokenOutputs(mask, ctx.token_kinds) if ctx.token_kinds and mask is not None else None
        try:
            ctx.validation = evaluate(
                ctx.names,
                ctx.ref_out,
                ctx.cand_out,
                ctx.per_output,
                heldout.labels,
                tokens,
                ctx.config.confidence,
            )
        except ConfigError as e:
            if ctx.tolerance_source is None:
                raise
            raise ConfigError(
                f"{e} (the tolerance comes from --tolerance and {ctx.tolerance_source})"
            ) from None
