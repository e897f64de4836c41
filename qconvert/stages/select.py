"""SelectNodes: --exclude / --include selectors resolved to node names of the prepared graph."""

from __future__ import annotations

from dataclasses import replace

from qconvert.quantize.selectors import node_infos, select
from qconvert.stages.base import Stage
from qconvert.stages.context import ExportContext


class SelectNodes(Stage[ExportContext]):
    name = "select"
    needs = ("prepared", "candidates")

    def skip(self, ctx: ExportContext) -> bool:
        return not (ctx.config.exclude or ctx.config.include)

    def run(self, ctx: ExportContext) -> None:
        nodes = node_infos(ctx.prepared)
        excluded = tuple(select(nodes, ctx.config.exclude, "--exclude"))
        included = tuple(select(nodes, ctx.config.include, "--include"))
        ctx.candidates = [
            replace(c, nodes_to_exclude=excluded, nodes_to_include=included) for c in ctx.candidates
        ]
        ctx.qc = ctx.candidates[0]
        ctx.notes.append(
            f"selectors: {len(excluded)} node(s) kept in float by --exclude"
            + (f", quantization limited to {len(included)} node(s) by --include" if included else "")
        )
