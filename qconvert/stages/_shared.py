"""What the stages of both pipelines (export, validate) share: the progress callback, how held-out data is
fed, the original model's outputs obtained and an ONNX file's inputs and outputs read."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qconvert.calibrate import Dataset, ModelInput
from qconvert.errors import TargetError

if TYPE_CHECKING:
    from qconvert.sources import LoadedModel
    from qconvert.targets import BoundTarget, Provider
    from qconvert.types import QuantizeConfig
    from qconvert.validation import Check, ValidationResult


# progress(stage, message, done, total): done/total are None for stages without a count
Progress = Callable[[str, str, "int | None", "int | None"], None]


def no_progress(stage: str, message: str, done: int | None = None, total: int | None = None) -> None:
    return None


@contextlib.contextmanager
def in_folder(folder: Path) -> Iterator[None]:
    """Run with the process's directory at `folder`: onnxruntime's symbolic shape inference, when it
    fails, dumps sym_shape_infer_temp.onnx and a UUID-named .data file into the current directory
    (also from inside the transformer optimizer), and a run writes nothing outside OUT_DIR and its
    temporary folder."""
    import os

    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def model_inputs(loaded: LoadedModel) -> list[ModelInput]:
    return [
        ModelInput(name, dims, str(example.dtype))
        for name, dims, example in zip(
            loaded.input_names, loaded.input_dims, loaded.example_inputs, strict=True
        )
    ]


def onnx_io(path: Path, flag: str) -> tuple[list[ModelInput], list[str]]:
    """The graph inputs (as ModelInput, batch axis included) and output names of an ONNX file; `flag`
    names it in the error when it is not a valid model."""
    import onnx

    from qconvert.errors import SourceError, brief

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise SourceError(
            f"{flag} {path}: not a valid ONNX model ({type(e).__name__}: {brief(e)}). Check the file is complete."
        ) from e
    init = {i.name for i in proto.graph.initializer}
    inputs = []
    for i in proto.graph.input:
        if i.name in init:
            continue
        t = i.type.tensor_type
        dims = tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim
        )
        dtype = str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)))
        inputs.append(ModelInput(i.name, dims, dtype))
    return inputs, [o.name for o in proto.graph.output]


def latency_feed(data: Dataset, batch: int) -> dict[str, np.ndarray]:
    """Exactly `batch` held-out samples (repeated in order when there are fewer) for timing."""
    index = np.arange(batch) % len(data)
    return {name: values[index] for name, values in data.feeds.items()}


def reference_outputs(loaded: LoadedModel, data: Dataset, fp32_out: list[np.ndarray]) -> list[np.ndarray]:
    """The original model's outputs: PyTorch itself for torch sources, else the fp32 ONNX."""
    if not loaded.is_torch:
        return fp32_out
    parts = [loaded.run_torch(batch) for batch in data.batches(256)]
    return [np.concatenate(p) for p in zip(*parts, strict=True)]


def check_target_rules(
    target: BoundTarget, qc: QuantizeConfig, model_path: Path, providers: list[Provider]
) -> list[str]:
    """Raise TargetError when the graph or the provider options break the target's rules; return
    the nodes the provider would run in float between Q/DQ pairs."""
    import onnx

    quantized = onnx.load(str(model_path))
    problems = target.violations(quantized, qc, providers)
    if problems:
        shown = "; ".join(str(v) for v in problems[:10])
        raise TargetError(f"the quantized graph breaks the {target.name} rules: {shown}")
    return target.float_nodes(quantized)


def float_nodes_note(float_nodes: list[str], provider: str) -> list[str]:
    if not float_nodes:
        return []
    return [
        f"{len(float_nodes)} node(s) sit between Q/DQ pairs but are not among the ops "
        f"{provider} runs in int8, so they run in float with a dequantize/quantize round "
        f"trip: {', '.join(float_nodes[:8])}{' ...' if len(float_nodes) > 8 else ''}"
    ]


def op_counts(path: Path) -> dict[str, int]:
    """Op type -> node count of the graph at `path` (sorted by op type)."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


MODEL_CHECKS = "model"  # the Check.output of whole-model checks (task_drop, speedup, collapse_rate)


def add_checks(validation: ValidationResult, *checks: Check) -> ValidationResult:
    """`validation` with `checks` after its own (the verdict reads them all)."""
    from dataclasses import replace

    return replace(validation, checks=(*validation.checks, *checks))
