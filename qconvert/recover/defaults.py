"""What a run does when the user names no mode and no --recover: defaults per model family.

The family comes from the prepared fp32 graph (so every SOURCE form gets the same answer), and each
default below is there because it measured better on real trained networks
(benchmarks/bench_accuracy.py, benchmarks/bench_accuracy_text.py; figures in the README):

- conv nets (static Q/DQ or QOperator int8): bias correction, which removes the mean shift weight
  rounding leaves in every convolution, and the stem kept in float (its output activation alone
  costs EfficientNet-Lite1 27.6 dB). Together: top-1 agreement 86.5% -> 95.9%, logits SQNR
  15.5 -> 23.5 dB on held-out photographs, at no measured latency cost. Only for nets with depthwise
  convolutions, where this was measured: on a (random-init) ResNet-18 in the zoo test it lost
  agreement against plain onnxruntime, so other conv nets get the plain quantizer.
- transformers on the `cpu` target at 8 bits: dynamic int8 (activations quantized per batch, so no
  range has to hold every sentence's outliers) after SmoothQuant. On all-MiniLM-L6-v2 static int8
  reaches worst cosine 0.91, dynamic 0.988, dynamic after SmoothQuant 0.997, at 0.38x fp32 latency.
- a transformer quantized statically (another target, or --mode static): SmoothQuant; on cpu also
  only the MatMuls quantized, their outputs left in float (0.997 worst cosine on MiniLM, where
  static int8 of every op gives 0.91).
- anything else (MLPs, recurrent nets): nothing; the plain quantizer is already the cheap best.

A user's explicit --mode or --recover always wins; `--recover none` turns the defaults off.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import onnx

FAMILIES = ("conv", "transformer", "other")
ATTENTION_OPS = frozenset({"Attention", "MultiHeadAttention", "GroupQueryAttention"})
NORM_OPS = frozenset(
    {
        "LayerNormalization",
        "SkipLayerNormalization",
        "SimplifiedLayerNormalization",
        "EmbedLayerNormalization",
    }
)


def model_family(model: onnx.ModelProto) -> str:
    """conv | transformer | other, from the ops of the fp32 graph.

    A transformer has attention (a fused attention op, or Softmax next to MatMuls) and normalises
    with LayerNorm; a ViT's patch embedding (one Conv) does not make it a conv net."""
    ops = Counter(n.op_type for n in model.graph.node)
    matmuls = ops["MatMul"] + ops["Gemm"] + ops["FusedMatMul"]
    convs = ops["Conv"] + ops["ConvTranspose"]
    attention = any(ops[o] for o in ATTENTION_OPS) or (ops["Softmax"] > 0 and matmuls >= 2)
    normalised = any(ops[o] for o in NORM_OPS) or ops["ReduceMean"] >= 2
    if attention and normalised and matmuls + 4 * ops["Attention"] > convs:
        return "transformer"
    if convs:
        return "conv"
    return "other"


@dataclass(frozen=True)
class Defaults:
    """What the run uses where the user left it to qconvert, and why (a note for the report)."""

    family: str
    mode: str | None  # None: keep the target's default mode
    recover: tuple[str, ...]
    why: str
    # static int8 of a transformer on cpu: quantize only the MatMuls and leave their outputs in float
    # (the FFN down-projection's quantized output into the residual stream is most of static's loss)
    matmuls_only: bool = False
    # a conv net: the stem (first Conv, and the Conv reading its output) stays float, so the stem's
    # output activation, the one tensor whose rounding costs EfficientNet-Lite1 most, is never quantized
    float_stem: bool = False


def choose(
    family: str, target: str, bits: int, mode: str, mode_given: bool = False, depthwise: bool = True
) -> Defaults:
    """The defaults for a `family` model quantized for `target` at `bits` in `mode`: the target's
    default mode, or the user's own (`mode_given`: then the mode is never changed). `depthwise`: the
    conv net has depthwise convolutions (MobileNet/EfficientNet-style), where the conv defaults were
    measured to pay; on other conv nets (a ResNet) they were not, so they get none."""
    if bits != 8:
        return Defaults(family, None, (), "")
    if family == "transformer":
        if target == "cpu" and mode == "static" and not mode_given:
            return Defaults(
                family,
                "dynamic",
                ("smoothquant",),
                "a transformer on the cpu target: dynamic int8 after SmoothQuant (per-batch activation "
                "ranges cope with each sentence's outliers; measured ahead of static int8 on real encoders)",
            )
        if mode in ("static", "dynamic"):
            lean = target == "cpu" and mode == "static"
            return Defaults(
                family,
                None,
                ("smoothquant",),
                "a transformer: SmoothQuant before quantizing"
                + (", and static int8 on the MatMuls only, their outputs left float" if lean else ""),
                matmuls_only=lean,
            )
    if family == "conv" and mode == "static" and depthwise:
        return Defaults(
            family,
            None,
            ("bias_correction",),
            "a conv net: the stem convolution(s) kept float, and bias correction after weight rounding "
            "(the mean shift each convolution's rounding causes is folded into its bias)",
            float_stem=True,
        )
    return Defaults(family, None, (), "")


def has_depthwise(model: onnx.ModelProto) -> bool:
    return any(n.op_type == "Conv" and _group(n) > 1 for n in model.graph.node)


def float_stem(model: onnx.ModelProto) -> tuple[str, ...]:
    """The first Conv, and the depthwise Conv that reads its output (directly or through one
    activation) where there is one: the stem of a MobileNet-style net."""
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    if not convs:
        return ()
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    first = convs[0]
    after = consumers.get(first.output[0], [])
    if len(after) == 1 and after[0].op_type != "Conv":
        after = consumers.get(after[0].output[0], [])
    depthwise = [n for n in after if n.op_type == "Conv" and _group(n) > 1]
    return tuple(n.name for n in (first, *depthwise) if n.name)


def _group(node: onnx.NodeProto) -> int:
    return next((int(a.i) for a in node.attribute if a.name == "group"), 1)
