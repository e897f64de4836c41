"""Per-layer precision in a static Q/DQ graph: the rewrites that raise chosen layers above int8.

`apply(quantized, fp32, formats)` takes the graph the run's quantizer wrote and a format per node
(targets.base.LAYER_FORMATS) and returns the graph in which those nodes compute in that format:

- a16w8: each activation input the node reads through an int8 QuantizeLinear -> DequantizeLinear
  pair is read through a 16-bit pair instead (onnxruntime's com.microsoft Q/DQ, which take 16-bit
  types below opset 21), on the *same* range: the 16-bit scale and zero point follow exactly from the
  8-bit ones, (qmin8 - zp8) * s8 .. (qmax8 - zp8) * s8, so nothing is recalibrated. Weights stay int8
  (bias correction and AdaRound edits kept); an int32 bias is re-quantized to the new input scale
  times the weight scale, the Q/DQ convention integer kernels rely on.
- fp32: the node reads float activations (fallback.rewire_float: through pass-through ops, with a
  folded Relu/Clip restored) and its float weights and bias from the fp32 graph the run quantized.
- fp16: as fp32, then the node computes in float16: a Cast to float16 on each activation input,
  float16 weights and bias, and a Cast back to float on its output. With `emulate=True` the node
  instead computes in fp32 on values rounded to float16 (Cast to float16 and back on every input and
  on the output, weights rounded), which onnxruntime's CPU provider runs faithfully (it has no fp16
  Conv on x86 and would drop the rounding): the same figures as `quantize.float16.emulate_fp16` of the
  explicit graph.

Nothing here executes a model; the int8 pairs nobody reads any more are removed.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qconvert.fallback import prune_qdq, rewire_float
from qconvert.quantize._common import unique_name
from qconvert.quantize.float16 import sort_topologically

MS_DOMAIN = "com.microsoft"
FLOAT_FORMATS = frozenset({"fp16", "fp32"})
# ops that have float16 kernels where fp16 is a layer format (CUDA, TensorRT, QNN HTP); a node of
# another op is never given fp16
HALF_OPS = frozenset(
    {
        "Conv",
        "ConvTranspose",
        "Gemm",
        "MatMul",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "AveragePool",
        "GlobalAveragePool",
        "ReduceMean",
        "Relu",
        "Clip",
        "Sigmoid",
        "HardSigmoid",
        "HardSwish",
        "Softmax",
        "Concat",
    }
)
# 8-bit zero-point type -> (its 16-bit counterpart, qmin8, qmax8, qmin16, qmax16)
_WIDEN: dict[int, tuple[int, int, int, int, int]] = {
    TensorProto.UINT8: (TensorProto.UINT16, 0, 255, 0, 65535),
    TensorProto.INT8: (TensorProto.INT16, -128, 127, -32768, 32767),
}
INT32_MAX = 2**31 - 1


def widened(
    scale: np.ndarray, zero_point: np.ndarray, zp_type: int, symmetric: bool
) -> tuple[np.ndarray, np.ndarray, int]:
    """(scale, zero point, type) of the 16-bit quantization of the range an 8-bit (`scale`,
    `zero_point`) covers. A symmetric signed range (zero point 0, qmin -127) stays symmetric."""
    wide, lo8, hi8, lo16, hi16 = _WIDEN[zp_type]
    s8 = scale.astype(np.float64)
    zp8 = zero_point.astype(np.float64)
    if symmetric:  # [-127 s, 127 s] -> [-32767 s16, 32767 s16], zero point 0
        s16 = s8 * 127.0 / 32767.0
        return s16.astype(np.float32), np.zeros_like(zero_point, dtype=_np_type(wide)), wide
    lo, hi = (lo8 - zp8) * s8, (hi8 - zp8) * s8
    s16 = (hi - lo) / (hi16 - lo16)
    zp16 = np.clip(np.round(lo16 - lo / s16), lo16, hi16)
    return s16.astype(np.float32), zp16.astype(_np_type(wide)), wide


def _np_type(onnx_type: int) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(onnx_type))


class _Graph:
    """Lookups over a graph being edited, kept current by the helpers that edit it."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.init = {t.name: t for t in self.graph.initializer}
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.names = set(self.init) | set(self.producer) | {i.name for i in self.graph.input}
        self.names |= {n.name for n in self.graph.node if n.name}

    def fresh(self, name: str) -> str:
        return unique_name(name, self.names)

    def add_init(self, array: np.ndarray, name: str) -> str:
        name = self.fresh(name)
        self.graph.initializer.append(numpy_helper.from_array(array, name))
        self.init[name] = self.graph.initializer[-1]
        return name

    def add_node(self, *args: object, **kwargs: object) -> onnx.NodeProto:
        node = helper.make_node(*args, **kwargs)  # type: ignore[arg-type]
        self.graph.node.append(node)
        for o in node.output:
            self.producer[o] = node
        return node

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.init[name])

    def dequantized_constant(self, tensor: str) -> onnx.NodeProto | None:
        """The DequantizeLinear that makes `tensor` from an initializer (a weight or bias), if any."""
        dq = self.producer.get(tensor)
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in self.init:
            return dq
        return None

    def zero_point_type(self, q: onnx.NodeProto) -> int | None:
        zp = self.init.get(q.input[2]) if len(q.input) > 2 else None
        return None if zp is None else int(zp.data_type)

    def qdq_pair(self, tensor: str) -> tuple[onnx.NodeProto, onnx.NodeProto] | None:
        """(QuantizeLinear, DequantizeLinear) that `tensor` (an activation) comes through, if any."""
        dq = self.producer.get(tensor)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in self.init:
            return None
        q = self.producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or len(q.input) < 3:
            return None
        return q, dq


def raisable(quantized: onnx.ModelProto, formats: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """node name -> the `formats` (above int8) raising it to would change what it computes: a16w8
    where it reads an 8-bit Q/DQ activation, fp32 where it reads any dequantized input, fp16 as fp32
    for the HALF_OPS. Nodes with none are left out."""
    g = _Graph(quantized)
    out: dict[str, tuple[str, ...]] = {}
    for node in quantized.graph.node:
        if not node.name or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        pairs = [p for p in map(g.qdq_pair, node.input) if p is not None]
        wide = any(g.zero_point_type(q) in _WIDEN for q, _ in pairs)
        dequantized = bool(pairs) or any(g.dequantized_constant(i) is not None for i in node.input)
        can = {
            "a16w8": wide,
            "fp16": dequantized and node.op_type in HALF_OPS,
            "fp32": dequantized,
        }
        chosen = tuple(f for f in formats if can.get(f, False))
        if chosen:
            out[node.name] = chosen
    return out


def apply(
    quantized: onnx.ModelProto,
    fp32: onnx.ModelProto,
    formats: Mapping[str, str],
    emulate: bool = False,
    symmetric: bool = False,
) -> onnx.ModelProto:
    """A copy of the Q/DQ graph `quantized` (quantized from `fp32`) with each node named in `formats`
    computing in its format (a16w8, fp16, fp32; int8 leaves it as it is). `symmetric`: the run's
    activations are symmetric (a signed 8-bit range -127..127 with zero point 0)."""
    out = onnx.ModelProto()
    out.CopyFrom(quantized)
    raised = {n: f for n, f in formats.items() if f != "int8"}
    if not raised:
        return out
    floating = [n for n, f in raised.items() if f in FLOAT_FORMATS]
    rewire_float(out, fp32, floating)
    g = _Graph(out)
    by_name = {n.name: n for n in out.graph.node if n.name}
    ref_nodes = {n.name: n for n in fp32.graph.node if n.name}
    ref_init = {t.name: t for t in fp32.graph.initializer}
    wide_pairs: dict[str, str] = {}
    for name, fmt in raised.items():
        node = by_name[name]
        if fmt in FLOAT_FORMATS:
            _float_constants(g, node, ref_nodes.get(name), ref_init)
            _model_output(g, node, None, symmetric)
            if fmt == "fp16":
                _half(g, node, emulate)
        elif fmt == "a16w8":
            _wide_inputs(g, node, wide_pairs, symmetric)
            _model_output(g, node, wide_pairs, symmetric)
        else:
            raise ValueError(f"unknown layer format {fmt!r}")
    if wide_pairs and not any(o.domain == MS_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    prune_qdq(out)
    sort_topologically(out.graph)
    return out


def _float_constants(
    g: _Graph, node: onnx.NodeProto, ref: onnx.NodeProto | None, ref_init: dict[str, onnx.TensorProto]
) -> None:
    """Each dequantized constant input of `node` (weight, bias) replaced by the fp32 graph's own."""
    for i, tensor in enumerate(node.input):
        if g.dequantized_constant(tensor) is None:
            continue
        source = ref.input[i] if ref is not None and i < len(ref.input) else ""
        if source not in ref_init:
            raise ValueError(f"node {node.name}: input {i} has no float counterpart in the fp32 graph")
        if source in g.init and g.init[source].SerializeToString() == ref_init[source].SerializeToString():
            node.input[i] = source
        else:
            node.input[i] = g.add_init(numpy_helper.to_array(ref_init[source]), source)


def _wide_inputs(g: _Graph, node: onnx.NodeProto, made: dict[str, str], symmetric: bool) -> None:
    """Each int8 Q/DQ activation input of `node` read through a 16-bit pair on the same range."""
    old_scale: float | None = None
    new_scale: float | None = None
    for i, tensor in enumerate(node.input):
        pair = g.qdq_pair(tensor)
        if pair is None:
            continue
        q = pair[0]
        zp_type = g.zero_point_type(q)
        if zp_type not in _WIDEN:
            continue
        source = q.input[0]
        if source not in made:
            made[source] = _wide_pair(g, q, symmetric, g.fresh(f"{source}_DequantizeLinear16"))
        if i == 0:
            old_scale = float(g.array(q.input[1]).reshape(-1)[0])
            new_scale = float(g.array(g.producer[made[source]].input[1]).reshape(-1)[0])
        node.input[i] = made[source]
    if old_scale is not None and new_scale is not None and len(node.input) > 2:
        _requantize_bias(g, node, new_scale / old_scale)


def _wide_pair(g: _Graph, q: onnx.NodeProto, symmetric: bool, out: str) -> str:
    """A 16-bit QuantizeLinear -> DequantizeLinear (writing `out`) of what the 8-bit `q` quantizes,
    on the same range."""
    source = q.input[0]
    s16, zp16, _ = widened(g.array(q.input[1]), g.array(q.input[2]), g.zero_point_type(q) or 0, symmetric)
    scale = g.add_init(s16, f"{source}_scale16")
    zero = g.add_init(zp16, f"{source}_zero_point16")
    quant = g.fresh(f"{source}_QuantizeLinear16")
    g.add_node("QuantizeLinear", [source, scale, zero], [quant], name=quant, domain=MS_DOMAIN)
    g.add_node("DequantizeLinear", [quant, scale, zero], [out], name=g.fresh(f"{out}_node"), domain=MS_DOMAIN)
    return out


def _model_output(g: _Graph, node: onnx.NodeProto, made: dict[str, str] | None, symmetric: bool) -> None:
    """Where `node` writes a model output through an 8-bit Q/DQ pair that nothing else reads, that
    pair goes (a float format: the node writes the output itself) or becomes 16-bit (a16w8, `made`:
    the 16-bit pairs written so far). Every other quantized output is its readers' input, at their
    format."""
    graph_outputs = {o.name for o in g.graph.output}
    readers = [n for n in g.graph.node if node.output[0] in n.input]
    if len(readers) != 1 or readers[0].op_type != "QuantizeLinear" or node.output[0] in graph_outputs:
        return
    q = readers[0]
    after = [n for n in g.graph.node if q.output[0] in n.input]
    if len(after) != 1 or after[0].op_type != "DequantizeLinear" or after[0].output[0] not in graph_outputs:
        return
    dq, final = after[0], after[0].output[0]
    if made is not None and g.zero_point_type(q) not in _WIDEN:
        return
    g.graph.node.remove(dq)
    if made is None:
        g.graph.node.remove(q)
        node.output[0] = final
        g.producer[final] = node
    else:
        made[q.input[0]] = _wide_pair(g, q, symmetric, final)
        g.graph.node.remove(q)


def _requantize_bias(g: _Graph, node: onnx.NodeProto, factor: float) -> None:
    """An int32 bias (scale = input scale x weight scale) re-quantized after the input scale was
    multiplied by `factor` (< 1); left as it is where the new integers would not fit int32."""
    dq = g.dequantized_constant(node.input[2])
    if dq is None or g.init[dq.input[0]].data_type != TensorProto.INT32:
        return
    values = g.array(dq.input[0]).astype(np.float64)
    scale = g.array(dq.input[1]).astype(np.float64)
    ints = np.round(values / factor)
    if np.abs(ints).max(initial=0) > INT32_MAX:
        return
    new_values = g.add_init(ints.astype(np.int32), f"{dq.input[0]}16")
    new_scale = g.add_init((scale * factor).astype(np.float32), f"{dq.input[1]}16")
    out = g.fresh(f"{node.input[2]}16")
    g.add_node("DequantizeLinear", [new_values, new_scale, *dq.input[2:]], [out], name=out, **_axis(dq))
    node.input[2] = out


def _axis(node: onnx.NodeProto) -> dict[str, int]:
    return {a.name: int(a.i) for a in node.attribute if a.name == "axis"}


def _half(g: _Graph, node: onnx.NodeProto, emulate: bool) -> None:
    """`node` (reading float inputs) computes in float16, or in fp32 on float16-rounded values."""
    half, full = TensorProto.FLOAT16, TensorProto.FLOAT
    for i, tensor in enumerate(node.input):
        if not tensor:
            continue
        if tensor in g.init:
            t = g.init[tensor]
            if t.data_type != full:
                continue  # e.g. ReduceMean's int64 axes
            rounded = numpy_helper.to_array(t).astype(np.float16)
            node.input[i] = g.add_init(rounded.astype(np.float32) if emulate else rounded, f"{tensor}_fp16")
            continue
        cast = g.fresh(f"{tensor}_fp16")
        g.add_node("Cast", [tensor], [cast], name=cast, to=half)
        if emulate:
            back = g.fresh(f"{tensor}_fp16_rounded")
            g.add_node("Cast", [cast], [back], name=back, to=full)
            cast = back
        node.input[i] = cast
    result = node.output[0]
    raw = g.fresh(f"{result}_fp16")
    node.output[0] = raw
    g.producer[raw] = node
    if emulate:
        mid = g.fresh(f"{result}_fp16_rounded")
        g.add_node("Cast", [raw], [mid], name=mid, to=half)
        raw = mid
    g.add_node("Cast", [raw], [result], name=g.fresh(f"{result}_Cast"), to=full)
