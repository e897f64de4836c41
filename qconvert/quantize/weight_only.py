"""Weight-only int8: weights stored as int8 with a float scale per output channel; activations stay float.

Each float weight initializer of a Conv, ConvTranspose, Gemm or MatMul is replaced by an int8
initializer and a DequantizeLinear node that gives back the float weight under the same name:

- symmetric: zero point 0, values in [-127, 127], scale = max|w| / 127 over each output channel;
- the channel axis is the one that indexes output channels: Conv weight [M, C/g, k...] -> 0,
  ConvTranspose weight [C, M/g, k...] -> 1, Gemm B -> 0 with transB=1 ([N, K]) else 1 ([K, N]),
  MatMul B [..., K, N] -> its last axis.

No calibration: nothing depends on activations. Weights with fewer than `MIN_ELEMENTS` values
(biases are never touched; tiny layers gain nothing) stay float, as do initializers shared with
anything that is not a weight input on the same channel axis, and graph inputs with a default value.
What was done is recorded in the model's metadata under `METADATA_KEY`.

4-bit weight-only (MatMulNBits) is not implemented here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qconvert.artifacts import save_onnx
from qconvert.calibrate import Dataset
from qconvert.errors import ConfigError, QuantizationError
from qconvert.quantize._common import check_output, unique_name
from qconvert.types import QuantizeConfig

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

MIN_ELEMENTS = 128
QMAX = 127  # symmetric int8: -128 is never used, so -w and w quantize alike
MIN_OPSET = 13  # DequantizeLinear with a per-axis scale
METADATA_KEY = "qconvert.weight_only"


def weight_axis(node: onnx.NodeProto, slot: int, ndim: int) -> int | None:
    """The output-channel axis of input `slot` of `node` when that input is a weight, else None."""
    if slot != 1:
        return None
    if node.op_type == "Conv" and ndim >= 3:
        return 0
    if node.op_type == "ConvTranspose" and ndim >= 3:
        return 1
    if node.op_type == "Gemm" and ndim == 2:
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "MatMul" and ndim >= 2:
        return ndim - 1
    return None


def quantize_symmetric(weight: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(int8 values, float32 scale): per channel along `axis`, or one scale for all (axis None)."""
    w = weight.astype(np.float32)
    if axis is None:
        amax = np.abs(w).max(keepdims=True).reshape(())
    else:
        amax = np.abs(np.moveaxis(w, axis, 0)).reshape(w.shape[axis], -1).max(axis=1)
    # an all-zero channel keeps scale 1 (its values are 0 whatever the scale)
    scale = np.where(amax > 0, np.maximum(amax / QMAX, np.finfo(np.float32).tiny), 1.0).astype(np.float32)
    shape = [1] * w.ndim
    if axis is not None:
        shape[axis] = -1
    q = np.clip(np.rint(w / scale.reshape(shape)), -QMAX, QMAX).astype(np.int8)
    return q, scale


def _subgraph_names(model: onnx.ModelProto) -> set[str]:
    """Every name a subgraph (If/Loop/Scan body) reads: those initializers are left alone."""
    names: set[str] = set()

    def walk(graphs: Iterator[onnx.GraphProto]) -> None:
        for g in graphs:
            for node in g.node:
                names.update(node.input)
                walk(_subgraphs(node))

    for node in model.graph.node:
        walk(_subgraphs(node))
    return names


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.HasField("g"):
            yield attr.g
        yield from attr.graphs


def quantize_weights(model: onnx.ModelProto, qc: QuantizeConfig) -> dict[str, int]:
    """Rewrite `model` in place; return counts: quantized, small (kept float), other (kept float)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    init = {t.name: t for t in graph.initializer}
    uses: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for slot, name in enumerate(node.input):
            uses.setdefault(name, []).append((node, slot))
    overridable = {i.name for i in graph.input}
    in_subgraphs = _subgraph_names(model)
    outputs = {o.name for o in graph.output}
    taken = set(init) | {o for n in graph.node for o in n.output} | {n.name for n in graph.node} | overridable

    counts = {"quantized": 0, "small": 0, "other": 0}
    dequantizers: list[onnx.NodeProto] = []
    for name, tensor in init.items():
        consumers = uses.get(name, [])
        axes = {weight_axis(node, slot, len(tensor.dims)) for node, slot in consumers}
        if not axes - {None}:
            continue  # not a weight
        if (
            len(axes) != 1  # also read as something other than a weight, or on another axis
            or name in overridable
            or name in in_subgraphs
            or name in outputs
            or tensor.data_type != TensorProto.FLOAT  # DequantizeLinear before opset 19 gives float32
        ):
            counts["other"] += 1
            continue
        if int(np.prod(tensor.dims)) < MIN_ELEMENTS:
            counts["small"] += 1
            continue
        weight = numpy_helper.to_array(tensor)
        axis = next(iter(axes)) if qc.per_channel else None
        q, scale = quantize_symmetric(weight, axis)
        q_name, s_name, z_name = (
            unique_name(f"{name}_{part}", taken) for part in ("quantized", "scale", "zero_point")
        )
        graph.initializer.remove(tensor)
        graph.initializer.extend(
            [
                numpy_helper.from_array(q, q_name),
                numpy_helper.from_array(scale, s_name),
                numpy_helper.from_array(np.zeros(scale.shape, np.int8), z_name),
            ]
        )
        dequantize = helper.make_node(
            "DequantizeLinear",
            [q_name, s_name, z_name],
            [name],
            name=unique_name(f"{name}_DequantizeLinear", taken),
        )
        if axis is not None:
            dequantize.attribute.append(helper.make_attribute("axis", axis))
        dequantizers.append(dequantize)
        counts["quantized"] += 1
    # initializers come first, so their DequantizeLinear nodes lead the (topologically sorted) node list
    for i, node in enumerate(dequantizers):
        graph.node.insert(i, node)
    return counts


def quantize_weight_only(
    src: Path,
    dest: Path,
    qc: QuantizeConfig,
    calibration: Dataset | None,
    on_batch: Callable[[int, int], None] | None = None,
) -> Path:
    """Calibration data is not used."""
    import onnx
    from onnx import helper

    if qc.bits == 4:
        raise ConfigError(
            "--mode weight-only at --bits 4 (MatMulNBits) is not implemented yet; "
            "use --bits 8 for int8 weights."
        )
    if qc.bits != 8:
        raise ConfigError(f"--mode weight-only takes --bits 8 (got --bits {qc.bits}).")
    if qc.weight_type != "int8" or not qc.weight_symmetric:
        raise ConfigError(
            f"weight-only quantization writes symmetric int8 weights; this target asks for "
            f"{'symmetric' if qc.weight_symmetric else 'asymmetric'} {qc.weight_type}."
        )
    try:
        model = onnx.load(str(src))
    except Exception as e:
        raise QuantizationError(f"cannot read the prepared model {src.name}: {e}") from e
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if qc.per_channel and opset < MIN_OPSET:
        raise ConfigError(
            f"--mode weight-only writes per-channel DequantizeLinear, which needs opset {MIN_OPSET} or "
            f"newer; this model is opset {opset}. Export with --opset {MIN_OPSET} or newer."
        )
    counts = quantize_weights(model, qc)
    log.info(
        "weight-only int8: %d weights quantized, %d under %d values and %d shared or non-float kept float",
        counts["quantized"],
        counts["small"],
        MIN_ELEMENTS,
        counts["other"],
    )
    if not counts["quantized"]:
        raise ConfigError(
            f"--mode weight-only found no weight to quantize: it takes Conv, Gemm and MatMul weights of "
            f"{MIN_ELEMENTS} values or more, and this model has none ({counts['small']} smaller, "
            f"{counts['other']} shared or not float). The result would be the fp32 model under an int8 "
            "label; keep the model in fp32, or use --bits 16."
        )
    props = {p.key: p.value for p in model.metadata_props}
    props[METADATA_KEY] = json.dumps({**counts, "min_elements": MIN_ELEMENTS, "per_channel": qc.per_channel})
    helper.set_model_props(model, props)
    try:
        save_onnx(model, dest, qc.external_data)
    except Exception as e:
        raise QuantizationError(f"writing the weight-only model failed: {type(e).__name__}: {e}") from e
    return check_output(dest)


def weight_only_record(model: onnx.ModelProto) -> dict[str, int] | None:
    """What `quantize_weight_only` recorded in the model's metadata, or None."""
    value = next((p.value for p in model.metadata_props if p.key == METADATA_KEY), None)
    return None if value is None else dict(json.loads(value))
