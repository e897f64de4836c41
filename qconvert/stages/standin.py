"""StandInForHere: the graph validation runs when it cannot be model.onnx itself (implicit int8's
Q/DQ twin; fp16/bf16 emulated in fp32 where this machine has no such kernels)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from qconvert.calibrate import Dataset
from qconvert.config import QuantizeConfig
from qconvert.quantize import QUANTIZERS
from qconvert.quantize.bf16 import emulate_bf16
from qconvert.quantize.float16 import emulate_fp16
from qconvert.stages.base import Stage
from qconvert.stages.context import ExportContext
from qconvert.validation.standin import emulation


def _stand_in(
    qc: QuantizeConfig,
    model_path: Path,
    prepared: Path,
    work: Path,
    calibration: Dataset | None,
    not_here: str | None,
) -> tuple[Path, str | None]:
    """The graph validation runs, and a note when it is not model.onnx itself."""
    stand_in = emulation(qc.mode, bool(qc.calibration_table), not_here, qc.layer_formats)
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
    if stand_in == "fp16":
        # onnxruntime's CPU provider runs most fp16 nodes in fp32 and drops the casts between
        # them: it would neither round to fp16 nor overflow. Validate a stand-in that does both.
        path = emulate_fp16(model_path, work / "fp16_emulated.onnx", qc.external_data)
        return path, (
            "fp16: no fp16 kernels here, so the figures are for an fp32 stand-in that rounds each tensor "
            "to fp16 where the fp16 graph produces it (overflow included); onnxruntime's CPU provider "
            "would run most of model.onnx in fp32 instead."
        )
    if stand_in == "bf16":
        # the CPU provider has no bf16 MatMul/Gemm/Conv: the bf16 graph would not even load here
        path = emulate_bf16(model_path, work / "bf16_emulated.onnx", qc.external_data)
        return path, (
            "bf16: no bf16 kernels here, so the figures are for an fp32 stand-in that rounds each tensor to "
            "bfloat16 (round to nearest even) where the bf16 graph produces it; the CPU provider cannot run "
            "model.onnx itself."
        )
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
