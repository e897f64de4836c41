"""fp16: every float tensor and op converted to float16, except the ops kept in fp32.

onnxruntime's `convert_float_to_float16` does the conversion. By default the graph's inputs and
outputs stay fp32 (a Cast at each edge), so callers feed and read the same arrays as for fp32. Ops
in `QuantizeConfig.keep_fp32_ops` (default `FP16_KEEP_FP32_OPS`, below) and nodes named in
`nodes_to_exclude` stay fp32, with Casts around them. Constants beyond fp16's range are clamped to
+-65504 by the converter; activations that overflow at run time become Inf, which validation's
always-on `nonfinite` check reports.

onnxruntime's CPU provider has few fp16 kernels. It runs the other fp16 nodes in fp32 and drops the
casts between them, so an fp16 graph run there mostly computes in fp32: it does not round to fp16
between ops and does not overflow. `emulate_fp16` writes an fp32 stand-in that does both, for
validating where no fp16 hardware is present.

bf16 (quantize/bf16.py) reuses both halves: `fp16_graph` for the conversion (it then retypes the
float16 tensors as bfloat16) and `emulate_narrow_float` for its stand-in.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Iterable
from itertools import count
from pathlib import Path
from typing import TYPE_CHECKING

from qconvert.artifacts import save_onnx
from qconvert.calibrate import Dataset
from qconvert.errors import ConfigError, QuantizationError
from qconvert.quantize._common import check_output
from qconvert.types import QuantizeConfig

# fp16: op types kept in fp32 unless a target says otherwise. It is onnxruntime's
# float16.DEFAULT_OP_BLOCK_LIST (ops with no fp16 kernels: classical-ML ops, TopK, NonMaxSuppression,
# RoiAlign, Range, CumSum, Min/Max, Upsample, random ops; a test keeps this a superset of it), plus:
# - ops whose ONNX schema has no float16 at common opsets: Celu, IsInf;
# - ops whose result is in range but whose inner sum or exponential leaves fp16's range (max 65504)
#   on ordinary inputs: ReduceL2, ReduceLogSum, ReduceLogSumExp, LpNormalization, Softplus.
# An op whose *output* leaves the range (a large MatMul, say) cannot be fixed by blocking that op
# alone, since its output is cast back to fp16; the always-on `nonfinite` check catches those.
FP16_KEEP_FP32_OPS = frozenset(
    {
        "ArrayFeatureExtractor",
        "Binarizer",
        "CastMap",
        "CategoryMapper",
        "DictVectorizer",
        "FeatureVectorizer",
        "Imputer",
        "LabelEncoder",
        "LinearClassifier",
        "LinearRegressor",
        "Normalizer",
        "OneHotEncoder",
        "RandomUniformLike",
        "SVMClassifier",
        "SVMRegressor",
        "Scaler",
        "TreeEnsembleClassifier",
        "TreeEnsembleRegressor",
        "TreeEnsemble",
        "ZipMap",
        "NonMaxSuppression",
        "TopK",
        "RoiAlign",
        "Range",
        "CumSum",
        "Min",
        "Max",
        "Upsample",
        "Celu",
        "IsInf",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "LpNormalization",
        "Softplus",
    }
)

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)


def _reads(node: onnx.NodeProto) -> set[str]:
    """Every name `node` reads, including what its subgraphs (If/Loop/Scan bodies) read."""
    names = set(node.input)
    for attr in node.attribute:
        for g in [attr.g] if attr.HasField("g") else list(attr.graphs):
            for inner in g.node:
                names |= _reads(inner)
    return names


def sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder `graph.node` so that every node comes after the nodes it reads from, keeping the
    original order wherever it is already valid."""
    nodes = list(graph.node)
    producer = {out: i for i, n in enumerate(nodes) for out in n.output if out}
    deps = [
        {producer[x] for x in _reads(n) if x in producer and producer[x] != i} for i, n in enumerate(nodes)
    ]
    readers: dict[int, list[int]] = {}
    for i, d in enumerate(deps):
        for j in d:
            readers.setdefault(j, []).append(i)
    waiting = [len(d) for d in deps]
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for r in readers.get(i, []):
            waiting[r] -= 1
            if waiting[r] == 0:
                heapq.heappush(ready, r)
    if len(order) != len(nodes):
        raise QuantizationError("the fp16 graph has a cycle; cannot order its nodes")
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)


def _cast_to(node: onnx.NodeProto) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _rename_reads(graph: onnx.GraphProto, rename: dict[str, str]) -> None:
    for node in graph.node:
        node.input[:] = [rename.get(name, name) for name in node.input]
        for attr in node.attribute:
            for g in [attr.g] if attr.HasField("g") else list(attr.graphs):
                _rename_reads(g, rename)


def drop_fp16_round_trips(graph: onnx.GraphProto) -> int:
    """Remove the float32 -> float16 -> float32 Cast pairs the converter puts between two ops that
    both stay fp32 (it also puts them between a kept graph input and a kept op): the tensor then
    stays fp32, as the keep list asks, instead of being rounded and clipped to fp16 on the way.
    Also drops value_info entries of initializers, which the converter leaves with stale types.
    Returns the number of round trips removed."""
    from onnx import TensorProto

    initializers = {t.name for t in graph.initializer}
    kept_info = [v for v in graph.value_info if v.name not in initializers]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    types = {t.name: t.data_type for t in graph.initializer}
    types.update({v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info]})
    producer = {out: n for n in graph.node for out in n.output}
    outputs = {v.name for v in graph.output}
    rename: dict[str, str] = {}
    for node in graph.node:
        first = producer.get(node.input[0]) if node.op_type == "Cast" else None
        if (
            first is not None
            and _cast_to(node) == TensorProto.FLOAT
            and first.op_type == "Cast"
            and _cast_to(first) == TensorProto.FLOAT16
            and types.get(first.input[0]) == TensorProto.FLOAT
            and node.output[0] not in outputs
        ):
            rename[node.output[0]] = first.input[0]
    if not rename:
        return 0
    for name in rename:  # resolve chains of round trips
        while rename[name] in rename:
            rename[name] = rename[rename[name]]
    _rename_reads(graph, rename)
    rest = [n for n in graph.node if not (n.op_type == "Cast" and n.output[0] in rename)]
    read = set().union(*(_reads(n) for n in rest)) | outputs
    # the second Casts go; a first Cast goes too when nothing else reads its float16 output
    kept = [n for n in rest if n.op_type != "Cast" or n.output[0] in read]
    gone = {out for n in graph.node for out in n.output} - {out for n in kept for out in n.output}
    del graph.node[:]
    graph.node.extend(kept)
    kept_info = [v for v in graph.value_info if v.name not in gone]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    return len(rename)


def fp16_graph(
    src: Path, keep_io_types: bool, keep_fp32_ops: Iterable[str], keep_nodes: Iterable[str]
) -> onnx.ModelProto:
    """onnxruntime's `convert_float_to_float16` on `src`, with its nodes put back in topological order
    and the fp16 round trips between two fp32 ops removed. Shared by fp16 and bf16 (which retypes
    the result)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # a path (not a ModelProto) lets the converter run shape inference on models over 2 GB
    model = convert_float_to_float16(
        str(src),
        keep_io_types=keep_io_types,
        op_block_list=sorted(keep_fp32_ops),
        node_block_list=list(keep_nodes) or None,
    )
    sort_topologically(model.graph)  # the converter appends the input Casts after their readers
    dropped = drop_fp16_round_trips(model.graph)
    log.info("%d fp16 round trips between fp32 ops removed", dropped)
    return model


def check_types(path: Path, what: str) -> Path:
    """onnx.checker with strict type inference: a Cast the converter got wrong shows up only there."""
    import onnx

    check_output(path)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:
        raise QuantizationError(f"the {what} model's types do not check: {e}") from e
    return path


def quantize_fp16(
    src: Path,
    dest: Path,
    qc: QuantizeConfig,
    calibration: Dataset | None,
    on_batch: Callable[[int, int], None] | None = None,
) -> Path:
    """Calibration data is not used: fp16 needs no ranges."""
    if qc.bits != 16:
        raise ConfigError(f"--mode fp16 needs --bits 16 (got --bits {qc.bits}).")
    log.info(
        "fp16: %d op types kept in fp32, fp32 inputs/outputs: %s", len(qc.keep_fp32_ops), qc.keep_io_types
    )
    try:
        model = fp16_graph(src, qc.keep_io_types, qc.keep_fp32_ops, qc.nodes_to_exclude)
        save_onnx(model, dest, qc.external_data)
    except Exception as e:
        raise QuantizationError(f"fp16 conversion failed: {type(e).__name__}: {e}") from e
    return check_types(dest, "fp16")


def emulate_fp16(src: Path, dest: Path, external_data: bool = False) -> Path:
    """Write an fp32 stand-in for the fp16 model `src` that any fp32 kernel computes faithfully.

    Every op reads and computes in fp32, and every tensor that the fp16 graph holds in float16 is
    rounded to float16 (a Cast to float16 and back) where it is produced: values beyond +-65504
    become Inf and the rest keep fp16 precision, as on hardware whose fp16 kernels accumulate in
    fp32. Float16 initializers and constants become the same values in fp32 (exactly)."""
    from onnx import TensorProto

    return emulate_narrow_float(src, dest, TensorProto.FLOAT16, external_data)


def emulate_narrow_float(src: Path, dest: Path, narrow: int, external_data: bool = False) -> Path:
    """`emulate_fp16` for a graph whose narrow float type is `narrow` (TensorProto.FLOAT16 or
    BFLOAT16): the same fp32 stand-in, rounding each narrow tensor with a Cast to `narrow` and back.
    onnxruntime's CPU provider has Cast to and from both types (round to nearest even), and few
    other kernels for them."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper, shape_inference

    half, full = narrow, TensorProto.FLOAT
    model = onnx.load(str(src))
    try:
        typed = shape_inference.infer_shapes(model).graph
    except Exception:  # over 2 GB: the converter's own value_info has the types
        typed = model.graph
    types = {t.name: t.data_type for t in typed.initializer}
    for v in [*typed.input, *typed.output, *typed.value_info]:
        types[v.name] = v.type.tensor_type.elem_type
    for n in typed.node:
        for a in n.attribute:
            if n.op_type == "Cast" and a.name == "to":
                types[n.output[0]] = a.i
            elif n.op_type == "Constant" and a.name == "value":
                types[n.output[0]] = a.t.data_type

    def to_fp32(t: onnx.TensorProto) -> None:
        if t.data_type == half:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))

    graph = model.graph
    for t in graph.initializer:
        to_fp32(t)
    ids = count()
    taken = set(types) | {o for n in graph.node for o in n.output} | {n.name for n in graph.node}

    def fresh(name: str) -> str:
        out = name
        while out in taken:
            out = f"{name}_{next(ids)}"
        taken.add(out)
        return out

    def rounding(raw: str, rounded: str) -> list[onnx.NodeProto]:
        mid = fresh(f"{rounded}_as_{'fp16' if half == TensorProto.FLOAT16 else 'bf16'}")
        return [
            helper.make_node("Cast", [raw], [mid], name=fresh(f"{mid}_Cast"), to=half),
            helper.make_node("Cast", [mid], [rounded], name=fresh(f"{rounded}_Cast"), to=full),
        ]

    nodes: list[onnx.NodeProto] = []
    renamed: dict[str, str] = {}
    for value in graph.input:
        if value.type.tensor_type.elem_type == half:
            value.type.tensor_type.elem_type = full
            renamed[value.name] = fresh(f"{value.name}_rounded")
            nodes += rounding(value.name, renamed[value.name])
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
        for a in node.attribute:
            if node.op_type == "Cast" and a.name == "to" and a.i == half:
                a.i = full  # the rounding below does the narrowing
            elif a.type == onnx.AttributeProto.TENSOR:
                to_fp32(a.t)  # Constant, ConstantOfShape
        after: list[onnx.NodeProto] = []
        for j, name in enumerate(node.output):
            if name and types.get(name) == half:
                node.output[j] = fresh(f"{name}_fp32")
                after += rounding(node.output[j], name)
        nodes += [node, *after]
    for value in graph.output:
        if value.type.tensor_type.elem_type == half:
            value.type.tensor_type.elem_type = full
    del graph.value_info[:]  # re-inferred by whoever loads it
    del graph.node[:]
    graph.node.extend(nodes)
    save_onnx(model, dest, external_data)
    return check_output(dest)
