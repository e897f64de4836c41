"""OpenOutput: the artifact folder (a temporary folder moved into place by WriteArtifacts)."""

from __future__ import annotations

from qconvert.artifacts import ArtifactDir
from qconvert.stages.base import Stage
from qconvert.stages.context import ExportContext


class OpenOutput(Stage[ExportContext]):
    """Enters the ArtifactDir on the run's exit stack, so any later failure rolls it back."""

    name = "output"
    needs = ("out_dir", "user_files")
    gives = ("art",)

    def run(self, ctx: ExportContext) -> None:
        folder = ArtifactDir(ctx.out_dir, force=ctx.config.force, inputs=ctx.user_files)
        ctx.art = ctx.stack.enter_context(folder)
