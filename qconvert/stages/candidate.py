"""The candidate of `qconvert validate`: FindCandidate (the .onnx file, or an OUT_DIR and its manifest),
VerifyManifest (every hash the manifest records, before anything reads the files) and LoadCandidate (the
graph's inputs and outputs)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from qconvert.errors import SourceError
from qconvert.stages._shared import onnx_io
from qconvert.stages.base import Stage
from qconvert.stages.context import ValidateContext

if TYPE_CHECKING:
    from qconvert.results import Manifest


def resolve_candidate(spec: str | Path) -> tuple[Path, Path | None, Manifest | None]:
    """CANDIDATE as (model file, OUT_DIR or None, manifest or None)."""
    from qconvert.runtime import read_manifest

    path = Path(spec)
    if path.is_dir():
        manifest = read_manifest(path)
        model = path / "model.onnx"
        if not model.is_file():
            raise SourceError(f"CANDIDATE {spec}: the folder has no model.onnx. Give a complete OUT_DIR.")
        return model, path, manifest
    if path.is_file() and path.suffix == ".onnx":
        return path, None, None
    if path.is_file():
        raise SourceError(f"CANDIDATE {spec}: not an .onnx file. Give an .onnx file or an OUT_DIR.")
    raise SourceError(
        f"CANDIDATE {spec}: no such file or folder. Give an .onnx file or a folder written by `qconvert export`."
    )


class FindCandidate(Stage[ValidateContext]):
    name = "find"
    gives = ("model_path", "out_dir", "manifest")

    def run(self, ctx: ValidateContext) -> None:
        ctx.model_path, ctx.out_dir, ctx.manifest = resolve_candidate(ctx.config.candidate)


class VerifyManifest(Stage[ValidateContext]):
    """An OUT_DIR's files must match the SHA-256 its qconvert.json records before anything reads them."""

    name = "verify"
    needs = ("out_dir", "manifest")
    gives = ("verified",)

    def run(self, ctx: ValidateContext) -> None:
        from qconvert.trust import verify_artifact

        ctx.verified = None
        if ctx.out_dir is not None and ctx.manifest is not None:
            ctx.verified = verify_artifact(ctx.out_dir, ctx.manifest)
            ctx.notes.append(ctx.verified.note())


class LoadCandidate(Stage[ValidateContext]):
    name = "open"
    needs = ("model_path", "verified")
    gives = ("inputs", "names")

    def run(self, ctx: ValidateContext) -> None:
        ctx.inputs, ctx.names = onnx_io(ctx.model_path, "CANDIDATE")
