"""The target's stages: FinalizeForTarget (its last edits and its providers) and CheckTargetRules."""

from __future__ import annotations

from qconvert.stages._shared import check_target_rules, float_nodes_note
from qconvert.stages.base import Stage
from qconvert.stages.context import ExportContext
from qconvert.validation.standin import not_here


class FinalizeForTarget(Stage[ExportContext]):
    name = "finalize"
    needs = ("model_path", "qc", "inputs", "target")
    gives = ("providers", "not_here")

    def run(self, ctx: ExportContext) -> None:
        finalized = ctx.target.finalize(ctx.model_path, ctx.inputs)
        if finalized:
            ctx.notes.append(finalized)
        ctx.providers = ctx.target.providers(ctx.inputs, ctx.qc)
        ctx.not_here = not_here(ctx.target.name, ctx.providers)  # the one stand-in decision


class CheckTargetRules(Stage[ExportContext]):
    name = "target"
    needs = ("model_path", "providers")
    gives = ("float_nodes", "float_note")

    def message(self, ctx: ExportContext) -> str:
        return f"checking the graph against the {ctx.target.name} rules"

    def run(self, ctx: ExportContext) -> None:
        ctx.float_nodes = check_target_rules(ctx.target, ctx.qc, ctx.model_path, ctx.providers)
        ctx.float_note = float_nodes_note(ctx.float_nodes, ctx.providers[0].name)
        ctx.notes.extend(ctx.float_note)
