"""RunReference: the reference `qconvert validate` compares against (an fp32 .onnx, or a torch or ONNX
SOURCE) run on the held-out data, its outputs matched to the candidate's."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qconvert.calibrate import Dataset, ModelInput
from qconvert.errors import ConfigError, QConvertError, SourceError, brief
from qconvert.runtime import make_session
from qconvert.sources import load_source
from qconvert.stages._shared import model_inputs, onnx_io, reference_outputs
from qconvert.stages.base import Stage
from qconvert.stages.context import ValidateContext


def check_same_inputs(candidate: list[ModelInput], reference: list[ModelInput], ref: str) -> None:
    """The reference takes the candidate's inputs: the same names, sample shapes and dtypes."""
    cand_names, ref_names = [i.name for i in candidate], [i.name for i in reference]
    if sorted(cand_names) != sorted(ref_names):
        raise ConfigError(
            f"--reference {ref}: its inputs {ref_names} are not the candidate's {cand_names}. Give the "
            "reference the candidate was made from (the same inputs, by name)."
        )
    by_name = {i.name: i for i in reference}
    for c in candidate:
        r = by_name[c.name]
        shape_ok = len(r.dims) == len(c.dims) and all(
            a is None or b is None or a == b for a, b in zip(r.dims[1:], c.dims[1:], strict=True)
        )
        if not shape_ok or r.dtype != c.dtype:
            raise ConfigError(
                f"--reference {ref}: input {c.name!r} takes samples of shape {r.sample_shape()} ({r.dtype}); "
                f"the candidate's takes {c.sample_shape()} ({c.dtype}). Give the reference the candidate was "
                "made from."
            )


def run_reference(
    spec: str, candidate_inputs: list[ModelInput], data: Dataset
) -> tuple[str, list[str], list[np.ndarray], Path | None]:
    """Run the reference on `data`: (what it is, output names, outputs, its ONNX file if it is one)."""
    path = Path(spec)
    if path.is_dir():
        raise SourceError(
            f"--reference {spec}: is a folder. Give the fp32 .onnx (an OUT_DIR's reference.onnx) or a torch "
            "SOURCE (file.py:factory)."
        )
    if path.suffix == ".onnx":
        if not path.is_file():
            raise SourceError(f"--reference {spec}: no such .onnx file.")
        ref_inputs, ref_outputs = onnx_io(path, "--reference")
        check_same_inputs(candidate_inputs, ref_inputs, spec)
        return str(path), ref_outputs, make_session(path).run(data), path
    loaded = load_source(spec)
    check_same_inputs(candidate_inputs, model_inputs(loaded), spec)
    if not loaded.is_torch:
        assert loaded.onnx_path is not None
        return loaded.origin, list(loaded.output_names), make_session(loaded.onnx_path).run(data), None
    try:
        outs = reference_outputs(loaded, data, [])
    except QConvertError:
        raise
    except Exception as e:
        raise SourceError(
            f"--reference {spec}: the model's forward raised {type(e).__name__}: {brief(e)} on the --data inputs."
        ) from e
    return loaded.origin, list(loaded.output_names), outs, None


def match_outputs(
    names: list[str], ref_names: list[str], ref_out: list[np.ndarray], ref: str, by_position: bool
) -> tuple[list[np.ndarray], list[str]]:
    """The reference's outputs in the candidate's order: by name, else (same count) by position."""
    if sorted(ref_names) == sorted(names):
        by_name = dict(zip(ref_names, ref_out, strict=True))
        return [by_name[n] for n in names], []
    if len(ref_names) == len(names) and (by_position or len(names) == 1):
        return ref_out, [
            f"the reference's outputs ({', '.join(ref_names)}) are named differently from the candidate's "
            f"({', '.join(names)}): matched by position"
        ]
    raise ConfigError(
        f"--reference {ref}: its outputs ({', '.join(ref_names)}) do not match the candidate's "
        f"({', '.join(names)}). Give the reference the candidate was made from."
    )


class RunReference(Stage[ValidateContext]):
    name = "reference"
    needs = ("reference_spec", "inputs", "names", "heldout")
    gives = ("reference", "ref_out")

    def message(self, ctx: ValidateContext) -> str:
        return f"running the reference on {len(ctx.heldout)} samples"

    def run(self, ctx: ValidateContext) -> None:
        spec = ctx.reference_spec
        ctx.reference, ref_names, ref_out, onnx_file = run_reference(spec, ctx.inputs, ctx.heldout)
        ctx.ref_out, matched = match_outputs(
            ctx.names, ref_names, ref_out, spec, by_position=onnx_file is None
        )
        ctx.notes.extend(matched)
