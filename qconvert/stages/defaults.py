"""ChooseDefaults: where the user named no --mode or no --recover, the defaults for the model's family
(qconvert.recover.defaults: conv nets get bias correction, transformers on cpu dynamic int8 after
SmoothQuant). Runs on the prepared graph, after the selectors, before the recovery steps."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, replace

import onnx

from qconvert.benchmark import interleaved_latency
from qconvert.errors import ConfigError
from qconvert.quantize import QUANTIZERS
from qconvert.quantize.placement import choose_measured, gated, placed, race, takes
from qconvert.recover import RECOVERY
from qconvert.recover.defaults import (
    MEASURED_PLACEMENTS,
    Defaults,
    choose,
    float_stem,
    has_depthwise,
    model_family,
    output_layers,
)
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

    @staticmethod
    def _ranges_and_outputs(ctx: ExportContext, chosen: Defaults, graph: onnx.ModelProto) -> None:
        """The family's activation-range method (where the user named none), and its logits left
        unquantized (where the matmuls_only default or a plugin chose output rules, they stand)."""
        if chosen.calibration_method and ctx.config.calibration_method is None:
            ctx.candidates = [
                replace(c, calibration_method=chosen.calibration_method) for c in ctx.candidates
            ]
        if chosen.float_outputs and (kinds := output_layers(graph)):
            logits_float = ("OpTypesToExcludeOutputQuantization", kinds)
            ctx.candidates = [
                c
                if "OpTypesToExcludeOutputQuantization" in dict(c.extra_options)
                else replace(c, extra_options=(*c.extra_options, logits_float))
                for c in ctx.candidates
            ]
        ctx.qc = ctx.candidates[0]

    @staticmethod
    def _place(ctx: ExportContext, graph: onnx.ModelProto, placement: str, given: bool) -> None:
        """Q/DQ pairs where `placement` puts them (quantize.placement), on the candidates that can
        hold it; the user's --placement on a format that cannot is refused."""
        if ctx.mode != "static":
            if given:
                ctx.notes.append(f"--placement {placement} ignored: it applies to static int8 only")
            return
        usable = [c for c in ctx.candidates if takes(c, placement)]
        if not usable:
            raise ConfigError(
                f"--placement {placement} needs the Q/DQ format, and the {ctx.target.name} target "
                f"quantizes to {', '.join(c.format for c in ctx.candidates)} here: use --placement compute "
                "or all, or --target-option format=qdq where the target has it."
            )
        ctx.candidates = [placed(c, graph, placement) for c in usable]
        ctx.qc = ctx.candidates[0]
        if placement != "all":
            ctx.notes.append(
                f"Q/DQ placement {placement}: {len(ctx.qc.nodes_to_include)} compute op(s) quantized"
                + (", their outputs float" if placement == "inputs" else "")
                + "; elementwise ops float"
            )

    @staticmethod
    def _measure_placement(
        ctx: ExportContext, graph: onnx.ModelProto, options: tuple[str, ...]
    ) -> tuple[str, dict[str, object]]:
        """The family's placement choices raced on calibration samples (quantize.placement.race):
        the better SQNR, unless over 10% slower. Latency counts on the cpu target only (for arm64
        this CPU's kernels are not the target's). The figures go into report.json's defaults and a
        note."""
        config, qc = ctx.config, ctx.candidates[0]
        assert ctx.calibration is not None
        ctx.progress("defaults", "measuring Q/DQ placements", 0, len(options))

        def time(runners: Mapping[str, Callable[[], object]]) -> dict[str, float]:
            timed = interleaved_latency(runners, repeats=max(10, config.latency_repeats // 2))
            return {name: t.p50_ms for name, t in timed.items()}

        measured = race(
            ctx.prepared,
            {p: placed(qc, graph, p) for p in options if takes(qc, p)},
            ctx.calibration,
            ctx.art.work,
            ctx.target.providers(ctx.inputs),
            time if ctx.target.name == "cpu" else None,
            config.latency_batch,
        )
        chosen = choose_measured(measured)
        figures = ", ".join(
            f"{m.placement} {m.sqnr_db:.2f} dB" + (f" {m.p50_ms:.3f} ms" if m.p50_ms is not None else "")
            for m in measured
        )
        ctx.notes.append(
            f"Q/DQ placement chosen by measurement on calibration samples (worst output SQNR against "
            f"fp32{', p50 latency' if ctx.target.name == 'cpu' else ''}): {figures}; kept {chosen.placement}"
        )
        return chosen.placement, {"chosen": chosen.placement, "measured": [m.as_json() for m in measured]}

    def _choose_placement(
        self, ctx: ExportContext, chosen: Defaults, graph: onnx.ModelProto
    ) -> dict[str, object]:
        """The user's --placement, else the family's (raced where MEASURED_PLACEMENTS lists several
        for the target), applied to the candidates; what a race chose and measured, for the report."""
        config = ctx.config
        placement = config.placement or (chosen.placement if config.recover is None else None)
        options = MEASURED_PLACEMENTS.get(ctx.target.name, ())
        measured: dict[str, object] = {}
        raced = config.placement is None and placement in options and ctx.mode == "static"
        if raced and ctx.calibration is not None:
            placement, measured["placement_measured"] = self._measure_placement(ctx, graph, options)
            measured["placement"] = placement
        if placement:
            self._place(ctx, graph, placement, config.placement is not None)
        return measured

    def run(self, ctx: ExportContext) -> None:
        config = ctx.config
        graph = onnx.load(str(ctx.prepared), load_external_data=False)
        family, depthwise = model_family(graph), has_depthwise(graph)
        given = config.mode is not None
        gate = gated(graph)
        chosen = choose(family, ctx.target.name, config.bits, ctx.mode, given, depthwise, gate)
        mode = chosen.mode
        if mode is not None and mode != ctx.mode:
            try:
                ctx.target.resolve_mode(config.bits, mode)
            except ConfigError:  # this target does not run it: keep its own default
                mode = None
                chosen = choose(family, ctx.target.name, config.bits, ctx.mode, True, depthwise, gate)
        if mode is not None and mode != ctx.mode:
            external = ctx.qc.external_data  # and the selectors' choice, made before
            ctx.mode = mode
            excluded, included = ctx.qc.nodes_to_exclude, ctx.qc.nodes_to_include
            ctx.candidates = [
                replace(c, external_data=external, nodes_to_exclude=excluded, nodes_to_include=included)
                for c in ctx.target.candidates(config.bits, mode, config.calibration_method or "minmax")
            ]
            ctx.qc = ctx.candidates[0]
        lean = chosen.matmuls_only and config.placement is None
        if lean and config.recover is None and not ctx.qc.nodes_to_include:
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
        if config.recover is None:
            self._ranges_and_outputs(ctx, chosen, graph)
        measured = self._choose_placement(ctx, chosen, graph)
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
            config.recover is None
            and (
                bool(recover)
                or chosen.matmuls_only
                or chosen.float_stem
                or chosen.float_outputs
                or chosen.placement is not None
            )
        ) or mode is not None
        ctx.defaults = {**asdict(chosen), "mode": ctx.mode, "recover": list(recover), "applied": used}
        ctx.defaults.update(measured)  # a placement raced on calibration samples, and its figures
        if used and chosen.why:
            ctx.notes.append(
                f"defaults for {chosen.why}; --mode / --recover choose otherwise (--recover none)"
            )
        # where --auto starts again from: the graph before recovery, the notes before its stages
        ctx.prepared_fp32, ctx.notes_mark = ctx.prepared, len(ctx.notes)
