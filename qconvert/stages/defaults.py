"""ChooseDefaults: where the user named no --mode or no --recover, the defaults for the model's family
(qconvert.recover.defaults: conv nets get bias correction, transformers on cpu dynamic int8 after
SmoothQuant). Runs on the prepared graph, after the selectors, before the recovery steps."""

from __future__ import annotations

from dataclasses import asdict, replace

import onnx

from qconvert.errors import ConfigError
from qconvert.quantize import QUANTIZERS
from qconvert.recover import RECOVERY
from qconvert.recover.defaults import choose, float_stem, has_depthwise, model_family
from qconvert.stages.base import Stage
from qconvert.stages.context import ExportContext


class ChooseDefaults(Stage[ExportContext]):
    name = "defaults"
    needs = ("prepared", "candidates", "target", "mode", "calibration")
    gives = ("recover", "defaults", "prepared_fp32", "notes_mark")

    @staticmethod
    def _reads_calibration(ctx: ExportContext) -> bool:
        qc, config = ctx.qc, ctx.config
        if QUANTIZERS.get(qc.mode).needs_calibration or qc.weight_algorithm == "gptq" or config.auto:
            return True
        return any(RECOVERY.get(name).needs_calibration for name in ctx.recover)

    def run(self, ctx: ExportContext) -> None:
        config = ctx.config
        graph = onnx.load(str(ctx.prepared), load_external_data=False)
        family, depthwise = model_family(graph), has_depthwise(graph)
        given = config.mode is not None
        chosen = choose(family, ctx.target.name, config.bits, ctx.mode, given, depthwise)
        mode = chosen.mode
        if mode is not None and mode != ctx.mode:
            try:
                ctx.target.resolve_mode(config.bits, mode)
            except ConfigError:  # this target does not run it: keep its own default
                mode = None
                chosen = choose(family, ctx.target.name, config.bits, ctx.mode, True, depthwise)
        if mode is not None and mode != ctx.mode:
            external = ctx.qc.external_data  # and the selectors' choice, made before
            ctx.mode = mode
            excluded, included = ctx.qc.nodes_to_exclude, ctx.qc.nodes_to_include
            ctx.candidates = [
                replace(c, external_data=external, nodes_to_exclude=excluded, nodes_to_include=included)
                for c in ctx.target.candidates(config.bits, mode, config.calibration_method)
            ]
            ctx.qc = ctx.candidates[0]
        if chosen.matmuls_only and config.recover is None and not ctx.qc.nodes_to_include:
            matmuls = tuple(n.name for n in graph.graph.node if n.op_type == "MatMul" and n.name)
            outputs_float = (("OpTypesToExcludeOutputQuantization", ("MatMul",)),)
            ctx.candidates = [
                replace(c, nodes_to_include=matmuls, extra_options=(*c.extra_options, *outputs_float))
                for c in ctx.candidates
                if c.format == "qdq"  # QOperator has no int8 MatMul with a float output
            ] or ctx.candidates
            ctx.qc = ctx.candidates[0]
        if chosen.float_stem and config.recover is None and not ctx.qc.nodes_to_include:
            stem = float_stem(graph)
            ctx.candidates = [
                replace(
                    c,
                    nodes_to_exclude=(*c.nodes_to_exclude, *(n for n in stem if n not in c.nodes_to_exclude)),
                )
                for c in ctx.candidates
            ]
            ctx.qc = ctx.candidates[0]
            if stem:
                ctx.notes.append(f"stem kept in float: {', '.join(stem)}")
        recover = chosen.recover if config.recover is None else config.recover
        if config.recover is None and ctx.calibration is None:
            needing = [r for r in recover if RECOVERY.get(r).needs_calibration]
            if needing:
                ctx.notes.append(
                    f"default step(s) {', '.join(needing)} left out: they need calibration data "
                    "(pass --calibration DATA)"
                )
                recover = tuple(r for r in recover if r not in needing)
        ctx.recover = recover
        if ctx.calibration is not None and not self._reads_calibration(ctx):
            ctx.calibration = None  # kept for recovery steps this run does not take
        used = (
            config.recover is None and (bool(recover) or chosen.matmuls_only or chosen.float_stem)
        ) or mode is not None
        ctx.defaults = {**asdict(chosen), "mode": ctx.mode, "recover": list(recover), "applied": used}
        if used and chosen.why:
            ctx.notes.append(
                f"defaults for {chosen.why}; --mode / --recover choose otherwise (--recover none)"
            )
        # where --auto starts again from: the graph before recovery, the notes before its stages
        ctx.prepared_fp32, ctx.notes_mark = ctx.prepared, len(ctx.notes)
