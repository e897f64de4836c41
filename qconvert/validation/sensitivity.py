"""Per-layer blame: which quantized node loses the most, measured against the fp32 graph.

For every quantized node of a Q/DQ graph (a compute node fed by a DequantizeLinear) this measures
the SQNR of the value the node hands on (its output after its own output Q/DQ, where it has one)
against the same-named tensor of the fp32 graph the quantizer started from:

- cumulative: in the whole quantized model, so the error of everything upstream is included;
- isolated: in a graph where only that node is quantized (every other node is passed to the
  quantizer's `nodes_to_exclude`), so it is that node's own loss. This costs one quantization per
  node, so it is measured only for the `isolated` nodes with the worst cumulative SQNR.

Names map between the graphs because onnxruntime's Q/DQ insertion keeps the float nodes' names and
output names. Two renamings are undone: a graph output `y` is produced as `y_QuantizeLinear_Input`
(its DequantizeLinear then outputs `y`), and a Relu/Clip folded into the node before it leaves that
node with the activation's output name (whose fp32 tensor is then the activation's output).

This module never quantizes by itself (a stage does not import a sibling stage): the caller passes
`quantize(exclude, dest)`, which quantizes the fp32 graph with `exclude` as `nodes_to_exclude`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx

    from qconvert.calibrate import Dataset

from qconvert.calibrate.streaming import FOLDED_ACTIVATIONS
from qconvert.settings import DEFAULT_SENSITIVITY_ISOLATED as DEFAULT_ISOLATED
from qconvert.settings import DEFAULT_SENSITIVITY_SAMPLES as DEFAULT_SAMPLES

GRAPH_OUTPUT_SUFFIX = "_QuantizeLinear_Input"
# Ops that only move or select values: quantizing their output loses nothing their input's Q/DQ had
# not already lost, so they are not ranked (and keeping one in float buys nothing).
DATA_MOVEMENT_OPS = frozenset(
    {
        "Reshape",
        "Flatten",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Identity",
        "Slice",
        "Split",
        "Gather",
        "Pad",
        "MaxPool",
        "Expand",
        "Tile",
        "DepthToSpace",
        "SpaceToDepth",
    }
)
_QDQ = ("QuantizeLinear", "DequantizeLinear")
# exposed tensors held at once per session run: the cumulative pass exposes every quantized node's
# output, which for a CNN at 240x240 is ~40 MB per sample (a batch of 32 peaked at 13 GB RSS)
EXPOSED_BYTES = 256 << 20
MAX_BATCH = 32

# quantize(nodes_to_exclude, dest) -> path of the quantized Q/DQ graph
Quantize = Callable[[tuple[str, ...], Path], Path]


@dataclass(frozen=True)
class QuantizedNode:
    name: str
    op_type: str
    tensor: str  # the fp32 graph's name for the value this node hands on


@dataclass(frozen=True)
class LayerSensitivity:
    node: str
    op_type: str
    tensor: str
    cumulative_db: float  # SQNR of the node's output in the whole quantized model
    isolated_db: float | None  # ... with only this node quantized (None: not measured)
    # with only this node quantized: the worst SQNR over the model's outputs
    isolated_model_output_db: float | None
    depth: int | None = None  # its place among the quantized nodes, in graph order (0: nearest the input)
    module: str | None = None  # the PyTorch module it came from (features.3.conv), when the export says

    def as_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "module": self.module,
            "depth": self.depth,
            "op_type": self.op_type,
            "tensor": self.tensor,
            "cumulative_sqnr_db": finite_or_none(self.cumulative_db),
            "isolated_sqnr_db": None if self.isolated_db is None else finite_or_none(self.isolated_db),
            "isolated_model_output_sqnr_db": None
            if self.isolated_model_output_db is None
            else finite_or_none(self.isolated_model_output_db),
        }


def finite_or_none(x: float) -> float | str:
    """JSON has no Infinity: a lossless tensor is written as "inf"."""
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")


@dataclass(frozen=True)
class Sensitivity:
    """The ranking, worst first (see `_rank_key`)."""

    samples: int
    layers: tuple[LayerSensitivity, ...]
    isolated_measured: int
    unmapped: tuple[str, ...] = ()  # quantized nodes whose output has no fp32 counterpart

    def fallback_order(self) -> list[str]:
        """The order in which to keep nodes in float: the ranking's order."""
        return [layer.node for layer in self.layers]

    def as_json(self) -> dict[str, Any]:
        return {
            "available": True,
            "samples": self.samples,
            "isolated_measured": self.isolated_measured,
            "quantized_nodes": len(self.layers),
            "ranking": [layer.as_json() for layer in self.layers],
            "unmapped": list(self.unmapped),
            "method": "SQNR of each quantized node's output (after its own output Q/DQ) against the "
            "same-named fp32 tensor; cumulative: whole quantized model; isolated: only that node "
            "quantized, at the node's output and at the model's outputs. Ranked worst first by the "
            "isolated model-output SQNR, then the isolated node SQNR; nodes without an isolated figure "
            "follow, by cumulative SQNR.",
        }


def sqnr_db(signal: float, noise: float) -> float:
    if noise <= 1e-30:
        return float("inf")
    return float(10 * np.log10(max(signal, 1e-30) / noise))


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def handed_on(model: onnx.ModelProto, tensor: str) -> str:
    """The name, in a quantized graph, of the value consumers read for the fp32 tensor `tensor`:
    its DequantizeLinear output where the tensor is quantized, else the tensor itself."""
    consumers = _consumers(model)
    for q in consumers.get(tensor, []):
        if q.op_type == "QuantizeLinear":
            for dq in consumers.get(q.output[0], []):
                if dq.op_type == "DequantizeLinear":
                    return str(dq.output[0])
    return tensor


# ops whose output is an integer or boolean tensor whatever their input
_NON_FLOAT_OUTPUT_OPS = frozenset(
    {
        "Shape",
        "Size",
        "ArgMax",
        "ArgMin",
        "NonZero",
        "Equal",
        "Greater",
        "Less",
        "GreaterOrEqual",
        "LessOrEqual",
        "IsNaN",
        "IsInf",
        "Not",
    }
)


def module_paths(model: onnx.ModelProto) -> dict[str, str]:
    """node name -> the PyTorch module path it was exported from (`features.3`), read from the torch
    exporter's `pkg.torch.onnx.name_scopes` metadata: its scopes, then the op's own name."""
    import ast

    paths: dict[str, str] = {}
    for node in model.graph.node:
        for prop in node.metadata_props:
            if prop.key != "pkg.torch.onnx.name_scopes":
                continue
            try:
                scopes = [s for s in ast.literal_eval(prop.value) if s]
            except (ValueError, SyntaxError):
                continue
            if len(scopes) >= 2:
                paths[node.name] = str(scopes[-2])
    return paths


def quantized_nodes(model: onnx.ModelProto, fp32_tensors: set[str]) -> tuple[list[QuantizedNode], list[str]]:
    """(nodes fed by a DequantizeLinear whose output maps to an fp32 tensor, names that do not map).

    Nodes whose output is not a float tensor (Shape, ArgMax, ...) are neither."""
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    found, unmapped = [], []
    for node in model.graph.node:
        if node.op_type in _QDQ or node.op_type in DATA_MOVEMENT_OPS or not node.output:
            continue
        if node.op_type in _NON_FLOAT_OUTPUT_OPS:
            continue
        if not any(i in dequantized for i in node.input):
            continue
        out = node.output[0]
        fp32_name = out[: -len(GRAPH_OUTPUT_SUFFIX)] if out.endswith(GRAPH_OUTPUT_SUFFIX) else out
        if fp32_name in fp32_tensors:
            found.append(QuantizedNode(node.name, node.op_type, fp32_name))
        else:
            unmapped.append(node.name or f"? ({node.op_type})")
    return found, unmapped


_FLOAT_TYPES = frozenset({1, 10, 11, 16})  # onnx.TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16


def _produced(model: onnx.ModelProto) -> set[str]:
    """Float tensors the fp32 graph produces: a node with an integer output fed by a dequantized
    tensor (Shape, ArgMax, ...) has no SQNR to measure and is left out of the ranking."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    kinds = {
        v.name: v.type.tensor_type.elem_type
        for v in (*inferred.graph.value_info, *inferred.graph.output)
        if v.type.HasField("tensor_type")
    }
    produced = {o for n in model.graph.node for o in n.output} | {o.name for o in model.graph.output}
    return {t for t in produced if kinds.get(t, 1) in _FLOAT_TYPES}


def _exposing(src: Path, dest: Path, names: Sequence[str]) -> Path:
    """A copy of `src` with `names` added as graph outputs (float tensors)."""
    import onnx

    from qconvert.artifacts import save_onnx

    model = onnx.load(str(src))
    have = {o.name for o in model.graph.output}
    for name in dict.fromkeys(names):
        if name not in have:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return save_onnx(model, dest)


def _session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # graph optimizations off: Q/DQ run exactly as written and no exposed tensor is fused away
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _run(
    session: Any, data: Dataset, names: Sequence[str], batch: int = MAX_BATCH
) -> Iterator[dict[str, np.ndarray]]:
    fixed = {i.name: i.shape[0] for i in session.get_inputs() if isinstance(i.shape[0], int)}
    size = min(fixed.values()) if fixed else batch
    for feeds in data.batches(size):
        n = len(next(iter(feeds.values())))
        if fixed and n < size:
            feeds = {k: np.concatenate([v, np.repeat(v[-1:], size - n, axis=0)]) for k, v in feeds.items()}
        yield {name: value[:n] for name, value in zip(names, session.run(list(names), feeds), strict=True)}


def _sqnrs(
    fp32: Path, quantized: Path, pairs: dict[str, str], data: Dataset, work: Path, tag: str
) -> dict[str, float]:
    """SQNR per fp32 tensor name: `pairs` maps it to the quantized graph's name for the same value."""
    ref_names, q_names = list(pairs), list(pairs.values())
    ref = _session(_exposing(fp32, work / f"{tag}-fp32.onnx", ref_names))
    cand = _session(_exposing(quantized, work / f"{tag}-q.onnx", q_names))
    signal = dict.fromkeys(ref_names, 0.0)
    noise = dict.fromkeys(ref_names, 0.0)
    # as many samples per run as keep the exposed tensors of one session under EXPOSED_BYTES
    per_sample = sum(v.nbytes for v in next(_run(ref, data.subset(slice(0, 1)), ref_names, 1)).values())
    batch = int(np.clip(EXPOSED_BYTES // max(per_sample, 1), 1, MAX_BATCH))
    for r, c in zip(_run(ref, data, ref_names, batch), _run(cand, data, q_names, batch), strict=True):
        for name, q_name in pairs.items():
            a, b = r[name].astype(np.float64), c[q_name].astype(np.float64)
            if a.shape != b.shape:
                raise ValueError(f"tensor {name!r}: fp32 shape {a.shape}, quantized shape {b.shape}")
            signal[name] += float((a**2).sum())
            noise[name] += float(((a - b) ** 2).sum())
    return {name: sqnr_db(signal[name], noise[name]) for name in ref_names}


def _rank_key(s: LayerSensitivity) -> tuple[int, float, float]:
    """Worst first: by the isolated SQNR at the model's outputs (what validation checks), then at
    the node's own output; nodes without an isolated figure after them, by cumulative SQNR.

    The model-output figure leads because a node's own SQNR can hide the damage: a tensor with one
    outlier channel keeps a high SQNR when per-tensor quantization flattens every other channel,
    since the outlier carries nearly all of its energy."""
    if s.isolated_model_output_db is None or s.isolated_db is None:
        return (1, s.cumulative_db, 0.0)
    return (0, s.isolated_model_output_db, s.isolated_db)


def analyze(
    fp32: Path,
    quantized: Path,
    data: Dataset,
    quantize: Quantize,
    work: Path,
    isolated: int = DEFAULT_ISOLATED,
    samples: int = DEFAULT_SAMPLES,
    on_node: Callable[[int, int], None] | None = None,
) -> Sensitivity:
    """Rank the quantized nodes of the Q/DQ graph `quantized` (quantized from `fp32`) by SQNR.

    `data`: held-out inputs (the first `samples` are used). `quantize(exclude, dest)` re-quantizes
    `fp32` with `exclude` as nodes_to_exclude, for the isolated measurements."""
    import onnx

    work.mkdir(parents=True, exist_ok=True)
    subset = data.subset(slice(0, samples))
    ref_model = onnx.load(str(fp32), load_external_data=False)
    q_model = onnx.load(str(quantized), load_external_data=False)
    nodes, unmapped = quantized_nodes(q_model, _produced(ref_model))
    if not nodes:
        return Sensitivity(len(subset), (), 0, tuple(unmapped))
    cumulative = _sqnrs(
        fp32, quantized, {n.tensor: handed_on(q_model, n.tensor) for n in nodes}, subset, work, "cumulative"
    )
    # onnxruntime quantizes a Relu/Clip only where its input already is: alone it stays float
    alone_capable = [n for n in nodes if n.op_type not in FOLDED_ACTIVATIONS]
    worst = sorted(alone_capable, key=lambda n: cumulative[n.tensor])[: max(0, isolated)]
    all_names = tuple(n.name for n in ref_model.graph.node if n.name)
    # a Relu/Clip folded into the node before it in the quantized graph stays with that node
    producer = {o: n.name for n in ref_model.graph.node for o in n.output}
    outputs = [o.name for o in ref_model.graph.output]
    alone: dict[str, tuple[float, float]] = {}
    for i, node in enumerate(worst):
        if on_node is not None:
            on_node(i, len(worst))
        keep = {node.name, producer.get(node.tensor, node.name)}
        path = quantize(tuple(n for n in all_names if n not in keep), work / f"isolated-{i}.onnx")
        iso_model = onnx.load(str(path), load_external_data=False)
        if not any(n.op_type == "QuantizeLinear" for n in iso_model.graph.node):
            continue  # e.g. a Relu: onnxruntime quantizes it only where its input already is
        pairs = {node.tensor: handed_on(iso_model, node.tensor)}
        pairs.update({o: o for o in outputs if o not in pairs})
        measured = _sqnrs(fp32, path, pairs, subset, work, f"isolated-{i}")
        alone[node.name] = (measured[node.tensor], min(measured[o] for o in outputs))
    if on_node is not None:
        on_node(len(worst), len(worst))
    modules = module_paths(ref_model)
    layers = [
        LayerSensitivity(
            n.name,
            n.op_type,
            n.tensor,
            cumulative[n.tensor],
            alone[n.name][0] if n.name in alone else None,
            alone[n.name][1] if n.name in alone else None,
            depth=depth,
            module=modules.get(n.name) or modules.get(producer.get(n.tensor, n.name)),
        )
        for depth, n in enumerate(nodes)
    ]
    layers.sort(key=_rank_key)
    return Sensitivity(len(subset), tuple(layers), len(alone), tuple(unmapped))
