"""bf16: float tensors and ops in bfloat16 (fp32's 8-bit exponent, 8-bit significand), where the
target's kernels take it.

bfloat16 keeps fp32's range, so unlike fp16 nothing overflows that did not overflow in fp32; it keeps
less precision (about 3 significant digits against fp16's 3.3). The conversion reuses fp16's
(`float16.fp16_graph`, onnxruntime's `convert_float_to_float16`) and then retypes every float16
tensor, Cast and constant as bfloat16, taking each constant's value from the fp32 original (the fp16
converter clamps to fp16's range, which bf16 does not need). Model inputs and outputs stay fp32 by
default, with Casts at the edges, as for fp16.

Which ops stay fp32: onnxruntime runs a bf16 node only where a provider has a bf16 kernel for that op
*at the model's opset*, and the CUDA provider's bf16 coverage is partial (no bf16 MaxPool, BatchNorm
or GlobalAveragePool at all; Conv only from opset 22). A bf16 node without one would make the session
fail to load (the CPU provider has almost no bf16 kernels either). So every op type without a CUDA
bf16 kernel at the model's opset (`CUDA_BF16_KERNELS`, from onnxruntime's docs/OperatorKernels.md at
1.32) is kept in fp32, with Casts around it, on top of `QuantizeConfig.keep_fp32_ops`. Both bf16
targets use this list: cuda, and tensorrt, whose provider hands the nodes TensorRT does not take to
the CUDA provider.

Validation here runs `emulate_bf16`: an fp32 stand-in that rounds each tensor the bf16 graph holds
in bfloat16 (Cast to bfloat16 and back, round to nearest even, as CUDA's conversion does), since the
CPU provider cannot run the bf16 graph itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qconvert.artifacts import save_onnx
from qconvert.calibrate import Dataset
from qconvert.errors import ConfigError, QuantizationError
from qconvert.quantize.float16 import check_types, emulate_narrow_float, fp16_graph
from qconvert.types import QuantizeConfig

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

# ai.onnx op -> the first opset at which the CUDA provider registers a bfloat16 kernel for it
# (onnxruntime 1.32, docs/OperatorKernels.md). Ops not listed have none and stay fp32.
# fmt: off
CUDA_BF16_KERNELS: dict[str, int] = {
    "Abs": 13, "Add": 13, "Attention": 23, "AveragePool": 22, "Cast": 13, "Compress": 9, "Concat": 4,
    "ConstantOfShape": 9, "Conv": 22, "Div": 13, "Dropout": 13, "Erf": 13, "Exp": 13, "Expand": 8,
    "Flatten": 1, "Gather": 1, "GatherElements": 11, "GatherND": 13, "Gelu": 20, "Gemm": 13,
    "HardSigmoid": 22, "HardSwish": 22, "Identity": 1, "If": 1, "IsInf": 20, "IsNaN": 13,
    "LayerNormalization": 1, "Loop": 1, "MatMul": 13, "Max": 6, "Min": 6, "Mod": 13, "Mul": 13,
    "Neg": 13, "Pow": 13, "RMSNormalization": 23, "ReduceSum": 13, "Relu": 13, "Reshape": 1,
    "ReverseSequence": 10, "RotaryEmbedding": 23, "Scan": 8, "ScatterElements": 11, "ScatterND": 11,
    "Shape": 1, "Sigmoid": 13, "Sign": 13, "Size": 1, "Slice": 1, "Softmax": 13, "Split": 2,
    "Sqrt": 13, "Squeeze": 1, "Sub": 13, "Sum": 6, "Tanh": 13, "Tile": 13, "Transpose": 1,
    "Trilu": 14, "Unsqueeze": 1, "Where": 16,
}
# com.microsoft ops (the fusions prepare may write) with a bfloat16 CUDA kernel
CUDA_BF16_CONTRIB = frozenset({
    "Attention", "BiasGelu", "FastGelu", "FusedMatMul", "Gelu", "GroupQueryAttention", "MatMulNBits",
    "MultiHeadAttention", "QuickGelu", "RotaryEmbedding", "SimplifiedLayerNormalization",
    "SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "TransposeMatMul",
})
# fmt: on


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`graph` and every subgraph (If/Loop/Scan bodies) inside it."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                yield from _graphs(sub)


def has_bf16_kernel(op_type: str, domain: str, opset: int) -> bool:
    if domain == "com.microsoft":
        return op_type in CUDA_BF16_CONTRIB
    return domain in ("", "ai.onnx") and opset >= CUDA_BF16_KERNELS.get(op_type, 10**6)


def ops_without_bf16_kernel(model: onnx.ModelProto) -> set[str]:
    """Op types in `model` that the CUDA provider cannot run in bf16 at the model's opset."""
    opset = _opset(model)
    return {
        n.op_type
        for g in _graphs(model.graph)
        for n in g.node
        if not has_bf16_kernel(n.op_type, n.domain, opset)
    }


def _fp32_originals(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every fp32 constant of the source model, by initializer name or Constant output name."""
    from onnx import TensorProto, numpy_helper

    found: dict[str, np.ndarray] = {}
    for g in _graphs(model.graph):
        for t in g.initializer:
            if t.data_type == TensorProto.FLOAT:
                found[t.name] = numpy_helper.to_array(t)
        for n in g.node:
            for a in n.attribute:
                if a.HasField("t") and a.t.data_type == TensorProto.FLOAT:
                    found[f"{n.output[0]}/{a.name}"] = numpy_helper.to_array(a.t)
    return found


def _as_bf16(tensor: onnx.TensorProto, original: np.ndarray | None) -> None:
    """Rewrite a float16 tensor in place as bfloat16, from its fp32 original when there is one."""
    import ml_dtypes
    from onnx import numpy_helper

    values = original if original is not None else numpy_helper.to_array(tensor).astype(np.float32)
    tensor.CopyFrom(numpy_helper.from_array(values.astype(ml_dtypes.bfloat16), tensor.name))


def bf16_from_fp16_graph(model: onnx.ModelProto, originals: dict[str, np.ndarray]) -> int:
    """Retype, in place, every float16 tensor of the fp16 graph `model` as bfloat16: value types,
    Cast targets, initializers and constant attributes (values from `originals`, the fp32 source's
    constants). Returns the number of tensors retyped."""
    from onnx import TensorProto

    half, brain = TensorProto.FLOAT16, TensorProto.BFLOAT16
    retyped = 0
    for g in _graphs(model.graph):
        for t in g.initializer:
            if t.data_type == half:
                _as_bf16(t, originals.get(t.name))
                retyped += 1
        for v in [*g.input, *g.output, *g.value_info]:
            tt = (
                v.type.sequence_type.elem_type.tensor_type
                if v.type.HasField("sequence_type")
                else v.type.tensor_type
            )
            if tt.elem_type == half:
                tt.elem_type = brain
                retyped += 1
        for n in g.node:
            for a in n.attribute:
                if n.op_type == "Cast" and a.name == "to" and a.i == half:
                    a.i = brain
                elif a.HasField("t") and a.t.data_type == half:
                    _as_bf16(a.t, originals.get(f"{n.output[0]}/{a.name}"))
                    retyped += 1
                elif a.name == "dtype" and a.i == half:  # RandomNormal and friends
                    a.i = brain
    return retyped


def bf16_nodes_without_kernel(model: onnx.ModelProto) -> list[str]:
    """Nodes that read or write a bfloat16 tensor but have no CUDA bf16 kernel (must be none)."""
    from onnx import TensorProto, shape_inference

    try:
        typed = shape_inference.infer_shapes(model).graph
    except Exception:  # over 2 GB: the types the model carries
        typed = model.graph
    types = {t.name: t.data_type for t in typed.initializer}
    types.update(
        {v.name: v.type.tensor_type.elem_type for v in [*typed.input, *typed.output, *typed.value_info]}
    )
    opset = _opset(model)
    return [
        f"{n.name or '?'} ({n.op_type})"
        for n in model.graph.node
        if not has_bf16_kernel(n.op_type, n.domain, opset)
        and any(types.get(x) == TensorProto.BFLOAT16 for x in [*n.input, *n.output] if x)
    ]


def quantize_bf16(
    src: Path,
    dest: Path,
    qc: QuantizeConfig,
    calibration: Dataset | None,
    on_batch: Callable[[int, int], None] | None = None,
) -> Path:
    """Calibration data is not used: bf16 needs no ranges."""
    import onnx

    if qc.bits != 16:
        raise ConfigError(f"--mode bf16 needs --bits 16 (got --bits {qc.bits}).")
    try:
        source = onnx.load(str(src))
    except Exception as e:
        raise QuantizationError(f"cannot read the prepared model {src.name}: {e}") from e
    no_kernel = ops_without_bf16_kernel(source)
    keep = set(qc.keep_fp32_ops) | no_kernel
    log.info(
        "bf16 at opset %d: %d op type(s) kept in fp32 (no CUDA bf16 kernel: %s)",
        _opset(source),
        len(keep),
        ", ".join(sorted(no_kernel)) or "none",
    )
    try:
        model = fp16_graph(src, qc.keep_io_types, keep, qc.nodes_to_exclude)
        retyped = bf16_from_fp16_graph(model, _fp32_originals(source))
        log.info("bf16: %d tensors retyped from float16", retyped)
        save_onnx(model, dest, qc.external_data)
    except Exception as e:
        raise QuantizationError(f"bf16 conversion failed: {type(e).__name__}: {e}") from e
    check_types(dest, "bf16")
    missing = bf16_nodes_without_kernel(onnx.load(str(dest)))
    if missing:
        raise QuantizationError(
            f"the bf16 graph computes {len(missing)} node(s) in bf16 that have no CUDA bf16 kernel: "
            + ", ".join(missing[:8])
        )
    return dest


def emulate_bf16(src: Path, dest: Path, external_data: bool = False) -> Path:
    """An fp32 stand-in for the bf16 model `src` that the CPU provider runs: each tensor the bf16
    graph holds in bfloat16 is rounded to bfloat16 where it is produced (see float16.emulate_fp16)."""
    from onnx import TensorProto

    return emulate_narrow_float(src, dest, TensorProto.BFLOAT16, external_data)


def bf16_notes(path: Path) -> list[str]:
    """The run's note on a bf16 model: which op types compute in fp32 for want of a CUDA bf16 kernel,
    and whether a later opset would give them one."""
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(path), load_external_data=False)
    opset = _opset(model)
    float_tensors = {
        v.name
        for v in [*model.graph.input, *model.graph.output, *model.graph.value_info]
        if v.type.tensor_type.elem_type == TensorProto.FLOAT
    } | {t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT}
    fp32_ops = sorted(
        {
            n.op_type
            for n in model.graph.node
            if n.op_type != "Cast"
            and not has_bf16_kernel(n.op_type, n.domain, opset)
            and any(x in float_tensors for x in [*n.input, *n.output])
        }
    )
    if not fp32_ops:
        return []
    later = sorted(op for op in fp32_ops if opset < CUDA_BF16_KERNELS.get(op, 10**6) <= 23)
    newest = max((CUDA_BF16_KERNELS[op] for op in later), default=0)
    hint = f"; opset {newest} adds one for {', '.join(later)} (export with --opset {newest})" if later else ""
    return [
        f"bf16: kept in fp32, with Casts around them, for want of a CUDA bf16 kernel at opset {opset}: "
        f"{', '.join(fp32_ops)}{hint}"
    ]
