"""PrepareOnnx: shape inference and graph clean-up, with the transformer fusions where the target's
first provider runs onnxruntime's contrib ops."""

from __future__ import annotations

from pathlib import Path

from qconvert.prepare import TransformerFusion, prepared_from_onnx, prepared_transformer
from qconvert.sources import LoadedModel
from qconvert.stages._shared import in_folder
from qconvert.stages.base import Stage
from qconvert.stages.context import ExportContext
from qconvert.targets import Provider

# providers that run onnxruntime's com.microsoft contrib ops (the transformer fusions' output)
CONTRIB_OP_PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider")


def _fusion(loaded: LoadedModel, providers: list[Provider]) -> TransformerFusion | None:
    """The transformer fusions to run in prepare: only where the target's first provider runs
    onnxruntime's contrib ops (CPU, CUDA); TensorRT, OpenVINO, QNN and CoreML take plain ONNX."""
    if loaded.fusion is None or not providers or providers[0].name not in CONTRIB_OP_PROVIDERS:
        return None
    return loaded.fusion


class PrepareOnnx(Stage[ExportContext]):
    name = "prepare"
    needs = ("exported", "qc", "inputs", "target")
    gives = ("prepared", "fusions")

    def message(self, ctx: ExportContext) -> str:
        return "shape inference and graph clean-up"

    def run(self, ctx: ExportContext) -> None:
        src, work = ctx.exported.path.resolve(), ctx.art.work.resolve()  # absolute: the directory changes
        with in_folder(work):  # onnxruntime's failure dumps land in the work folder
            self._prepare(ctx, src, work / "prepared.onnx")

    def _prepare(self, ctx: ExportContext, src: Path, dest: Path) -> None:
        large = ctx.qc.external_data
        fusion = _fusion(ctx.loaded, ctx.target.providers(ctx.inputs))
        ctx.fusions = None
        if fusion is None:
            ctx.prepared = prepared_from_onnx(src, dest, external_data=large)
        else:
            fused = prepared_transformer(src, dest, fusion, large)
            ctx.prepared, ctx.fusions = fused.path, {"model_type": fused.model_type, "fused": fused.fused}
            ctx.notes.append(fused.note)
