"""What a run does when the user names no mode and no --recover: defaults per model family.

The family comes from the prepared fp32 graph (so every SOURCE form gets the same answer), and each
default below is there because it measured better on real trained networks
(benchmarks/bench_accuracy.py, benchmarks/bench_accuracy_text.py; figures in the README):

- conv nets with depthwise convolutions (static Q/DQ or QOperator int8): GPTQ rounding of the
  weights (each layer's rounding error compensated within the layer), then bias correction (the
  mean shift the rounding leaves, against the fp32 weights), activation ranges by MSE instead of
  the extremes, the stem kept in float (its output activation alone costs EfficientNet-Lite1
  27.6 dB) and the logits (a Gemm/MatMul writing a graph output) left unquantized. Measured on
  EfficientNet-Lite1 (74 held-out photographs, benchmarks/bench_accuracy.py, whose "cli" variant is
  `qconvert export` itself): logits SQNR 15.5 dB (plain) -> 23.5 dB (the previous default: bias
  correction + float stem) -> 26.8 dB on cpu (top-1 agreement 94.6%; 97.3% with the Q/DQ arithmetic
  as written), and 14.3 -> 21.5 -> 24.8 dB on tensorrt, at no measured latency cost (0.47x fp32 in
  Q/DQ). Only for nets with depthwise convolutions, where this was measured: on a (random-init)
  ResNet-18 in the zoo test bias correction lost agreement against plain onnxruntime, so other conv
  nets get the plain quantizer.
- such a conv net whose activations are products (hard-swish, swish, squeeze-excite's gate:
  quantize.placement.gated) also gets Q/DQ pairs on its compute ops only (`--placement`): `compute`
  (their inputs and outputs) on cpu/arm64, `inputs` (their inputs only, TensorRT's own placement
  rule) on tensorrt/openvino; the elementwise products stay float. On PaddleOCR's PP-OCRv4 detector
  (benchmarks/bench_ocr_det.py, probability-map SQNR / text-mask IoU against fp32) with the steps
  above: cpu 10.6 dB / 0.897 (all) -> 12.8 dB / 0.930 (compute) at the same latency (0.97x against
  0.94-0.98x fp32 in one run under load, 0.89x against 0.65x in another); `inputs` reaches 17.8 dB /
  0.968, ahead of NNCF (16.7 dB / 0.962), but at 1.4x fp32 on onnxruntime's CPU provider (a Conv whose
  output is float runs in fp32 there), so it is the user's choice on cpu; tensorrt 10.3 -> 13.1 dB
  (inputs). `compute` costs other gated nets, though (SSDLite-MobileNetV3 cpu cosine 0.861 -> 0.827,
  LR-ASPP 10.9 -> 8.0 dB: `compute` rounds each conv output before its ReLU, over the conv's own
  range, where `all` rounds the ReLU's output once), so on cpu/arm64 the placement is raced per
  model (MEASURED_PLACEMENTS; quantize.placement.race): `compute` and `all` quantize the graph with
  ranges from 32 calibration samples and are scored on 32 more (held-out data is never read); the
  better worst-output SQNR wins unless it is over 10% slower (latency counts on cpu only, where
  these kernels are the target's); report.json's defaults.placement_measured keeps both figures.
  EfficientNet-Lite1 (ReLU6, no gate) keeps `all`: on cpu `compute` gave 18.0 dB (each
  ReLU6 output rounded twice) and `inputs` 27.2 dB at 0.82x against 26.8 dB at 0.51x; on tensorrt
  `inputs` gave 25.0 against 24.8 dB.
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
# --auto's ladder (pipeline/auto.py): the steps it adds one at a time, per family, while validation fails
MSE_RANGES = "ranges:mse"  # a ladder rung that changes the calibration method, not a recovery step
LADDER: dict[str, tuple[str, ...]] = {
    "conv": ("bias_correction", "gptq", MSE_RANGES, "clip_weights", "adaround"),
    "transformer": ("smoothquant", MSE_RANGES, "adaround"),
    "other": ("bias_correction", MSE_RANGES, "adaround"),
}
LAST_RUNGS = ("mixed_precision",)  # after every family's ladder: raises layers above int8
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
    # the activation-range method where the user named none (None: the target's, minmax)
    calibration_method: str | None = None
    # a Gemm/MatMul that writes a graph output (a classifier's logits) leaves its output unquantized:
    # rounding the logits themselves costs EfficientNet-Lite1 0.4 dB and saves nothing measurable
    float_outputs: bool = False
    # where the Q/DQ pairs go (quantize.placement: all | compute | inputs); None: all
    placement: str | None = None


# a gated conv net (hard-swish, swish, squeeze-excite): Q/DQ only on the compute ops, per target
GATED_PLACEMENT = {"cpu": "compute", "arm64": "compute", "tensorrt": "inputs", "openvino": "inputs"}
# ... where the placement is measured per model instead (quantize.placement.race on calibration
# samples): `compute` helps PP-OCRv4's detector and costs SSDLite/LR-ASPP (MobileNetV3), so neither
# is right for every gated net on the CPU provider; the first is the default when they measure alike
MEASURED_PLACEMENTS = {"cpu": ("compute", "all"), "arm64": ("compute", "all")}


def choose(
    family: str,
    target: str,
    bits: int,
    mode: str,
    mode_given: bool = False,
    depthwise: bool = True,
    gated: bool = False,
) -> Defaults:
    """The defaults for a `family` model quantized for `target` at `bits` in `mode`: the target's
    default mode, or the user's own (`mode_given`: then the mode is never changed). `depthwise`: the
    conv net has depthwise convolutions (MobileNet/EfficientNet-style), where the conv defaults were
    measured to pay; on other conv nets (a ResNet) they were not, so they get none. `gated`: its
    activations are products (quantize.placement.gated), where only the compute ops get Q/DQ pairs."""
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
        placement = GATED_PLACEMENT.get(target) if gated else None
        where = {
            "compute": "; hard-swish/squeeze-excite: int8 only in the convolutions, elementwise ops float",
            "inputs": "; hard-swish/squeeze-excite: only the convolutions' inputs quantized",
        }
        return Defaults(
            family,
            None,
            ("gptq", "bias_correction"),
            "a conv net: GPTQ weight rounding, then bias correction (the mean shift the rounding leaves "
            "is folded into each bias), activation ranges by MSE, the stem convolution(s) and the logits "
            "kept float" + where.get(placement or "", ""),
            float_stem=True,
            calibration_method="mse",
            float_outputs=True,
            placement=placement,
        )
    return Defaults(family, None, (), "")


def has_depthwise(model: onnx.ModelProto) -> bool:
    return any(n.op_type == "Conv" and _group(n) > 1 for n in model.graph.node)


def float_stem(model: onnx.ModelProto) -> tuple[str, ...]:
    """The stem of a MobileNet-style net: the first Conv, the depthwise Conv that reads its output
    (directly or through one activation), and the pointwise (1x1) Conv that reads the depthwise
    Conv's output the same way (the first block's projection), where they are there.

    The projection is included because its output, the first block's narrow linear-bottleneck
    tensor at full resolution, is the next most costly activation to round: on EfficientNet-Lite1
    keeping that block float too measured 24.1 -> 24.9 dB logits SQNR on tensorrt (symmetric
    activations) and 26.5 -> 26.9 dB on cpu, for ~1% of the model's multiply-adds."""
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    if not convs:
        return ()
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def next_convs(node: onnx.NodeProto) -> list[onnx.NodeProto]:
        after = consumers.get(node.output[0], [])
        if len(after) == 1 and after[0].op_type != "Conv":
            after = consumers.get(after[0].output[0], [])
        return [n for n in after if n.op_type == "Conv"]

    first = convs[0]
    stem = [first]
    depthwise = [n for n in next_convs(first) if _group(n) > 1]
    if len(depthwise) == 1:
        stem.append(depthwise[0])
        pointwise = [n for n in next_convs(depthwise[0]) if _group(n) == 1 and _pointwise(model, n)]
        stem.extend(pointwise[:1] if len(pointwise) == 1 else [])
    return tuple(n.name for n in stem if n.name)


def _pointwise(model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    shape = next((list(a.ints) for a in node.attribute if a.name == "kernel_shape"), None)
    if shape is None:
        weight = next((t for t in model.graph.initializer if t.name == node.input[1]), None)
        shape = list(weight.dims[2:]) if weight is not None else []
    return bool(shape) and all(k == 1 for k in shape)


def _group(node: onnx.NodeProto) -> int:
    return next((int(a.i) for a in node.attribute if a.name == "group"), 1)


OUTPUT_LAYERS = ("Gemm", "MatMul")


def output_layers(model: onnx.ModelProto) -> tuple[str, ...]:
    """The op types (of OUTPUT_LAYERS) of the nodes that write a graph output: a classifier's logits."""
    outputs = {o.name for o in model.graph.output}
    return tuple(
        sorted(
            {n.op_type for n in model.graph.node if n.op_type in OUTPUT_LAYERS and set(n.output) & outputs}
        )
    )
