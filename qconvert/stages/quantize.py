"""Quantize: the prepared fp32 graph -> model.onnx, racing the target's formats where it lists several."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from qconvert.artifacts import ArtifactDir
from qconvert.benchmark import interleaved_latency
from qconvert.calibrate import Dataset
from qconvert.errors import QuantizationError
from qconvert.prepare import lost_dynamic_axes
from qconvert.quantize import QUANTIZERS
from qconvert.quantize.bf16 import bf16_notes
from qconvert.quantize.int4 import int4_notes
from qconvert.recover import RECOVERY
from qconvert.runtime import make_session
from qconvert.settings import RunConfig
from qconvert.stages._shared import latency_feed
from qconvert.stages.base import Stage
from qconvert.stages.context import ExportContext
from qconvert.targets import Provider
from qconvert.types import QuantizeConfig

FORMAT_MARGIN = 0.95  # a candidate format must be 5% faster than the default one to be kept


def _fastest(
    candidates: list[QuantizeConfig],
    prepared: Path,
    art: ArtifactDir,
    calibration: Dataset | None,
    heldout: Dataset,
    providers: list[Provider],
    config: RunConfig,
    on_batch: Callable[[int, int], None],
) -> tuple[QuantizeConfig, Path, dict[str, float], list[str]]:
    """Quantize with every candidate, time them interleaved, keep the fastest as model.onnx. The
    first candidate is the default and must work; another that fails to quantize, load or run is
    left out of the race, with a note saying why (the 4th item of the returned tuple)."""
    batch = latency_feed(heldout, config.latency_batch)
    runners: dict[str, Callable[[], object]] = {}
    paths: dict[str, Path] = {}
    dropped: list[str] = []
    for i, qc in enumerate(candidates):
        dest = art.work / f"candidate-{i}.onnx"
        try:
            path = QUANTIZERS.get(qc.mode)(prepared, dest, qc, calibration, on_batch)
            run = functools.partial(make_session(path, providers).inner.run, None, batch)
            if i:
                run()  # a graph that loads may still fail in its first run
        except Exception as e:  # an alternative format, not the run's default: race without it
            if i == 0:
                raise
            reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            dropped.append(f"format {qc.format} left out of the race: {type(e).__name__}: {reason}")
            continue
        paths[qc.format], runners[qc.format] = path, run
    timed = interleaved_latency(runners, repeats=max(10, config.latency_repeats // 2))
    # the first candidate is the portable default; another must be clearly faster to replace it
    first = candidates[0].format
    best = min(timed, key=lambda fmt: timed[fmt].p50_ms)
    if timed[best].p50_ms > FORMAT_MARGIN * timed[first].p50_ms:
        best = first
    chosen = next(c for c in candidates if c.format == best)
    times = {f: t.p50_ms for f, t in timed.items()}
    return chosen, art.copy_onnx(paths[best], "model.onnx"), times, dropped


class Quantize(Stage[ExportContext]):
    name = "quantize"
    needs = ("prepared", "candidates", "calibration", "heldout", "art", "recover")
    gives = ("model_path", "reference_path")

    def message(self, ctx: ExportContext) -> str:
        return f"quantizing ({ctx.qc.mode}, {ctx.config.bits} bits)"

    def run(self, ctx: ExportContext) -> None:
        config, qc, candidates = ctx.config, ctx.qc, ctx.candidates
        # a format that a named post step cannot take is not raced (mixed precision needs Q/DQ)
        post = [s for s in (RECOVERY.get(n) for n in ctx.recover) if s.phase == "post"]
        usable = [c for c in candidates if all(s.why_not(c) is None for s in post)]
        if usable and len(usable) < len(candidates):
            ctx.notes.append(
                f"format {usable[0].format}: --recover {', '.join(s.name for s in post)} needs it"
            )
            candidates, qc = usable, usable[0]

        def on_batch(done: int, total: int) -> None:
            ctx.progress("calibrate", "calibrating", done, total)

        if len(candidates) == 1:
            model_path = QUANTIZERS.get(qc.mode)(
                ctx.prepared, ctx.art.path("model.onnx"), qc, ctx.calibration, on_batch
            )
        else:
            providers = ctx.target.providers(ctx.inputs)
            qc, model_path, format_choice, dropped = _fastest(
                candidates, ctx.prepared, ctx.art, ctx.calibration, ctx.heldout, providers, config, on_batch
            )
            ctx.notes.extend(dropped)
            ctx.notes.append(
                "format chosen by measurement here: "
                + ", ".join(f"{f} {ms:.3f} ms" for f, ms in format_choice.items())
                + f" (p50, batch {config.latency_batch}); kept {qc.format} (another format must be 5% "
                "faster to replace qdq)"
            )
        ctx.qc, ctx.model_path = qc, model_path
        if qc.format == "matmulnbits":  # how many MatMuls went to 4 bits
            ctx.notes.extend(int4_notes(model_path))
        elif qc.mode == "bf16":  # which ops stay fp32 for want of a bf16 kernel
            ctx.notes.extend(bf16_notes(model_path))
        exported = ctx.exported.path
        lost = lost_dynamic_axes(exported, model_path) if ctx.loaded.kind == "huggingface" else []
        if lost:
            raise QuantizationError(f"quantizing fixed dynamic axes of the model: {'; '.join(lost)}")
        ctx.reference_path = ctx.art.copy_onnx(exported, "reference.onnx")
