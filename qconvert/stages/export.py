"""OnnxFromTorch: the loaded model -> an fp32 ONNX file in the work folder."""

from __future__ import annotations

from dataclasses import replace

from qconvert import artifacts
from qconvert.artifacts import onnx_size
from qconvert.onnx_export import onnx_from_torch
from qconvert.stages.base import Stage
from qconvert.stages.context import ExportContext
from qconvert.trust import check_data_vocab


class OnnxFromTorch(Stage[ExportContext]):
    name = "export"
    needs = ("loaded", "art", "candidates", "heldout", "calibration")
    gives = ("exported",)

    def message(self, ctx: ExportContext) -> str:
        return "exporting to ONNX"

    def run(self, ctx: ExportContext) -> None:
        ctx.exported = exported = onnx_from_torch(ctx.loaded, ctx.config.opset, ctx.art.work)
        check_data_vocab(exported.path, ("--data", ctx.heldout), ("--calibration", ctx.calibration))
        large = artifacts.needs_external_data(onnx_size(exported.path))
        ctx.candidates = [replace(c, external_data=large) for c in ctx.candidates]
        ctx.qc = ctx.candidates[0]
