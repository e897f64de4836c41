"""LoadSource: SOURCE -> the loaded model, its inputs and where its artifacts go."""

from __future__ import annotations

from pathlib import Path

from qconvert.settings import DEFAULT_OUT_ROOT
from qconvert.sources import LoadedModel, load_source
from qconvert.stages._shared import model_inputs
from qconvert.stages.base import Stage
from qconvert.stages.context import ExportContext
from qconvert.tolerance import Tolerance


def default_out_dir(loaded: LoadedModel, target: str, bits: int, mode: str) -> Path:
    fmt = {16: "fp16", 8: "int8", 4: "int4"}[bits]
    if bits == 16 and mode in ("bf16", "static"):
        fmt = "bf16" if mode == "bf16" else "a16w8"
    suffix = "" if mode in ("static", "fp16", "bf16") else f"-{mode}"  # fp16/bf16 are already in `fmt`
    return DEFAULT_OUT_ROOT / f"{loaded.name}-{target}-{fmt}{suffix}"


class LoadSource(Stage[ExportContext]):
    name = "load"
    needs = ("target", "mode")
    gives = ("loaded", "out_dir", "inputs")

    def message(self, ctx: ExportContext) -> str:
        return "loading the model"

    def run(self, ctx: ExportContext) -> None:
        config = ctx.config
        ctx.loaded = loaded = load_source(config.source, config.inputs, task=config.task)
        if loaded.token_outputs:  # a text model: embedding_cosine / next_token_agreement defaults too
            ctx.tolerance = Tolerance.for_bits(config.bits, config.tolerance, text=True)
        ctx.out_dir = config.out_dir or default_out_dir(loaded, ctx.target.name, config.bits, ctx.mode)
        ctx.inputs = model_inputs(loaded)
