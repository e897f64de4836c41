"""The graph validation runs when it cannot be model.onnx itself (implicit int8's Q/DQ twin; fp16/bf16
emulated in fp32 where this machine has no such kernels): StandInForHere for `qconvert export`, and
StandInFromManifest for `qconvert validate`, which decides the same way (validation/standin.py) from what
the manifest records."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from qconvert.calibrate import Dataset
from qconvert.quantize import QUANTIZERS
from qconvert.stages.base import Stage
from qconvert.stages.context import ExportContext, ValidateContext
from qconvert.types import QuantizeConfig
from qconvert.validation.standin import emulated, emulation, for_folder


def _stand_in(
    qc: QuantizeConfig,
    model_path: Path,
    prepared: Path,
    work: Path,
    calibration: Dataset | None,
    why_not_here: str | None,
) -> tuple[Path, str | None]:
    """The graph validation runs, and a note when it is not model.onnx itself."""
    stand_in = emulation(qc.mode, bool(qc.calibration_table), why_not_here, qc.layer_formats)
    if stand_in == "implicit":
        # Implicit int8: model.onnx is fp32. Validate an explicit Q/DQ graph built from the same
        # calibration with the target's rules, the closest stand-in for what TensorRT runs.
        simulated = replace(qc, mode="static", format="qdq", calibration_table=None)
        path = QUANTIZERS.get("static")(prepared, work / "simulated.onnx", simulated, calibration, None)
        return path, (
            "implicit int8: model.onnx is the fp32 graph plus a calibration table; the figures are for an "
            "explicit Q/DQ graph with the same ranges. TensorRT chooses each layer's precision itself and "
            "may keep some in fp16/fp32, so measure on the GPU before shipping."
        )
    if stand_in in ("fp16", "bf16"):
        return emulated(stand_in, model_path, work, qc.external_data)
    return model_path, None


class StandInForHere(Stage[ExportContext]):
    name = "simulate"
    needs = ("model_path", "prepared", "not_here")
    gives = ("checked_path",)

    def message(self, ctx: ExportContext) -> str:
        return "preparing what validation runs"

    def run(self, ctx: ExportContext) -> None:
        ctx.checked_path, note = _stand_in(
            ctx.qc, ctx.model_path, ctx.prepared, ctx.art.work, ctx.calibration, ctx.not_here
        )
        if note:
            ctx.notes.append(note)


class StandInFromManifest(Stage[ValidateContext]):
    """The providers the manifest records and the same stand-in decision export made: an arm64 graph on
    x86 runs its exact Q/DQ arithmetic, not x86's fused kernels; an fp16/bf16 graph without such kernels
    here runs as its fp32 stand-in (in a temporary folder removed when the run ends)."""

    name = "simulate"
    needs = ("model_path", "out_dir", "manifest")
    gives = ("providers", "not_here", "native", "checked_path")

    def run(self, ctx: ValidateContext) -> None:
        decision = for_folder(ctx.out_dir, ctx.manifest)
        ctx.providers, ctx.not_here, ctx.native = decision.providers, decision.not_here, decision.native
        ctx.checked_path = ctx.model_path
        if decision.emulated is not None:
            work = Path(ctx.stack.enter_context(tempfile.TemporaryDirectory(prefix="qconvert-validate-")))
            external = ctx.manifest is not None and ctx.manifest.quantization.external_data
            ctx.checked_path, note = emulated(decision.emulated, ctx.model_path, work, external)
            ctx.notes.append(note)
        if decision.stand_in == "implicit":
            ctx.notes.append(
                "implicit int8: model.onnx is the fp32 graph plus a calibration table, and that is what was "
                "checked here; TensorRT quantizes it on the GPU. `qconvert export` measures an explicit Q/DQ "
                "stand-in with the same ranges."
            )
