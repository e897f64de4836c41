"""The graph validation runs when it cannot be model.onnx itself (implicit int8's Q/DQ twin; fp16/bf16
emulated in fp32 where this machine has no such kernels): StandInForHere for `qconvert export`, and
StandInFromManifest for `qconvert validate`, which decides the same way (validation/standin.py) from what
the manifest records."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from qconvert.calibrate import Dataset
from qconvert.config import QuantizeConfig
from qconvert.quantize import QUANTIZERS
from qconvert.quantize.bf16 import emulate_bf16
from qconvert.quantize.float16 import emulate_fp16
from qconvert.stages.base import Stage
from qconvert.stages.context import ExportContext, ValidateContext
from qconvert.validation.standin import emulation, not_here


def emulated(kind: str, model_path: Path, work: Path, external_data: bool) -> tuple[Path, str]:
    """An fp32 graph in `work` that rounds each tensor to `kind` (fp16 or bf16) where model.onnx
    produces it, and the note that says the figures are for it."""
    if kind == "fp16":
        # onnxruntime's CPU provider runs most fp16 nodes in fp32 and drops the casts between
        # them: it would neither round to fp16 nor overflow. Validate a stand-in that does both.
        return emulate_fp16(model_path, work / "fp16_emulated.onnx", external_data), (
            "fp16: no fp16 kernels here, so the figures are for an fp32 stand-in that rounds each tensor "
            "to fp16 where the fp16 graph produces it (overflow included); onnxruntime's CPU provider "
            "would run most of model.onnx in fp32 instead."
        )
    # the CPU provider has no bf16 MatMul/Gemm/Conv: the bf16 graph would not even load here
    return emulate_bf16(model_path, work / "bf16_emulated.onnx", external_data), (
        "bf16: no bf16 kernels here, so the figures are for an fp32 stand-in that rounds each tensor to "
        "bfloat16 (round to nearest even) where the bf16 graph produces it; the CPU provider cannot run "
        "model.onnx itself."
    )


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
        from qconvert.runtime import CPU, manifest_providers

        manifest = ctx.manifest or {}
        recorded = manifest_providers(ctx.out_dir, manifest) if ctx.out_dir is not None and manifest else []
        ctx.providers = recorded or [CPU]
        quantization = manifest.get("quantization", {})
        ctx.not_here = not_here(manifest.get("target", {}).get("name"), ctx.providers)
        ctx.native = ctx.not_here is None
        kind = emulation(
            quantization.get("mode"),
            bool(quantization.get("calibration_table")),
            ctx.not_here,
            quantization.get("layer_formats") or (),
        )
        ctx.checked_path = ctx.model_path
        if kind in ("fp16", "bf16"):
            work = Path(ctx.stack.enter_context(tempfile.TemporaryDirectory(prefix="qconvert-validate-")))
            external = quantization.get("external_data", False)
            ctx.checked_path, note = emulated(kind, ctx.model_path, work, external)
            ctx.notes.append(note)
        if kind == "implicit":
            ctx.notes.append(
                "implicit int8: model.onnx is the fp32 graph plus a calibration table, and that is what was "
                "checked here; TensorRT quantizes it on the GPU. `qconvert export` measures an explicit Q/DQ "
                "stand-in with the same ranges."
            )
