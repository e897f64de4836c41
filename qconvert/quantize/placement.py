"""Where a static int8 graph gets its Q/DQ pairs (`--placement`).

- `all`: every op onnxruntime's quantizer takes (its own default): each Add, Mul, Div, Clip, pooling
  and resize of the graph reads and writes 8-bit tensors.
- `compute`: only the compute ops (Conv, ConvTranspose, Gemm, MatMul), their inputs and their
  outputs: integer kernels end to end (QLinearConv on onnxruntime's CPU provider), elementwise ops in
  float between them.
- `inputs`: only the inputs of the compute ops; their outputs, and every elementwise op, stay float
  unless a quantized op reads them. This is the placement TensorRT's Q/DQ rules ask for (quantize the
  inputs of weighted layers; the engine fuses the pointwise ops after them into the kernel) and the
  one OpenVINO's low-precision transformations start from; on onnxruntime's CPU provider a compute op
  whose output is float runs in fp32 after a DequantizeLinear, so it is slower there.

A net whose activations are products (hard-swish `x * relu6(x + 3) / 6`, swish, squeeze-excite's
gate) loses most of its int8 accuracy in those elementwise ops' own 8-bit outputs, which `all`
quantizes: on PaddleOCR's PP-OCRv4 detector (README, "Measured on real trained networks") `all` puts
293 Q/DQ pairs where `inputs` puts 59. recover/defaults.py chooses per family and target.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI's choices read PLACEMENTS: no onnx import for --help
    import onnx

    from qconvert.config import QuantizeConfig

PLACEMENTS = ("all", "compute", "inputs")
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_OUTPUTS_FLOAT = "OpTypesToExcludeOutputQuantization"


def compute_nodes(model: onnx.ModelProto) -> tuple[str, ...]:
    """The names of the graph's compute ops (COMPUTE_OPS), in graph order."""
    return tuple(n.name for n in model.graph.node if n.op_type in COMPUTE_OPS and n.name)


def placed(qc: QuantizeConfig, model: onnx.ModelProto, placement: str) -> QuantizeConfig:
    """`qc` with the Q/DQ pairs of `placement` on `model`. A selection the settings already hold
    (--include) is narrowed to its compute ops, never widened; excluded nodes stay out."""
    if placement == "all":
        return qc
    qc = replace(qc, nodes_to_include=tuple(n for n in compute_nodes(model) if qc.selects(n)))
    if placement == "inputs":
        extra = dict(qc.extra_options)
        kinds = tuple(dict.fromkeys((*extra.get(_OUTPUTS_FLOAT, ()), *COMPUTE_OPS)))  # type: ignore[misc]
        qc = replace(
            qc,
            extra_options=(
                *((k, v) for k, v in qc.extra_options if k != _OUTPUTS_FLOAT),
                (_OUTPUTS_FLOAT, kinds),
            ),
        )
    return qc


def takes(qc: QuantizeConfig, placement: str) -> bool:
    """Whether a candidate of format `qc.format` can hold `placement`: `inputs` leaves the compute
    ops' outputs float, which only the Q/DQ format can express (QOperator kernels write int8)."""
    return placement != "inputs" or qc.format == "qdq"


def gated(model: onnx.ModelProto) -> bool:
    """Whether the net's activations are products of two computed tensors (hard-swish, swish,
    squeeze-excite's gate: a Mul neither of whose inputs is a constant) or HardSwish ops, where `all`
    rounds each factor and each product to 8 bits."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    for n in model.graph.node:
        if n.op_type == "HardSwish":
            return True
        if n.op_type == "Mul" and len(n.input) == 2 and not constants & set(n.input):
            return True
    return False
