"""NVIDIA TensorRT through onnxruntime's TensorRT provider.

Two ways to give TensorRT int8, never both on one graph:

- explicit (default): Q/DQ nodes with symmetric signed int8 (zero point 0), per-channel weights,
  float bias and no integer-only operators. The provider must have int8 enabled and must not be
  given a calibration table ("setting dynamic range is only allowed when there are no Q/DQ
  layers").
- implicit: the graph stays fp32, and a calibration table written by onnxruntime's
  `write_calibration_table` gives TensorRT the activation ranges; TensorRT picks each layer's
  precision itself.

16 bits: model.onnx is the same fp16 (default) or bf16 (`--mode bf16`) graph as for `--target
cuda` (fp32 inputs and outputs; ops without a CUDA kernel for the type kept fp32, since TensorRT
hands what it does not take to the CUDA provider). The provider runs it with `trt_fp16_enable`, or
with `trt_bf16_enable` (added in onnxruntime 1.23; off on GPUs below compute capability 8.0) and
fp16 off, which would give up bf16's range; int8 is off in both.

4 bits is refused: MatMulNBits is an onnxruntime contrib op that TensorRT does not build (the
provider would leave those nodes to the CUDA provider); TensorRT's own 4-bit weights are symmetric
block-quantized INT4 DequantizeLinear (opset 21), which qconvert does not write yet.

Per-layer formats inside the explicit int8 graph (`--recover mixed_precision`): int8, fp16 (the
layer between Casts, with float16 weights; the provider builds it with `trt_fp16_enable`, which this
target sets) and fp32. No a16w8: TensorRT's Q/DQ layers take INT8, FP8, INT4 and FP4, never 16-bit
integers. A layer left fp32 in the graph is built in fp16 or fp32 as TensorRT finds faster while
`trt_fp16_enable` is on (option fp16=false keeps it fp32).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from qconvert.errors import ConfigError
from qconvert.targets import presets
from qconvert.targets.base import (
    COMMON_INT8_OPS,
    INTEGER_ONLY_OPS,
    QDQ_OPS,
    Options,
    Provider,
    Target,
    TargetOption,
    Violation,
    has_qdq,
    missing_provider,
)
from qconvert.types import QuantizeConfig

if TYPE_CHECKING:
    import onnx

    from qconvert.calibrate import ModelInput

CACHE_DIR = "trt_cache"  # relative to the artifact folder
CALIBRATION_TABLE = "calibration.flatbuffers"  # inside the cache folder, where the provider looks
PROFILE_BATCH = "1,8,64"  # min / opt / max for the dynamic batch axis
PROFILE_OTHER = "1,128,512"  # min / opt / max for other dynamic axes (e.g. sequence length)

OPTIONS = (
    TargetOption(
        "quantization",
        "explicit",
        "explicit Q/DQ int8, or implicit (fp32 graph + calibration table)",
        ("explicit", "implicit"),
    ),
    TargetOption("fp16", "true", "let TensorRT run layers it keeps out of int8 in fp16", ("true", "false")),
    TargetOption("workspace_gb", "2", "TensorRT builder workspace, in GiB"),
    TargetOption("cache_dir", CACHE_DIR, "engine/timing cache folder, relative to OUT_DIR"),
    TargetOption("profile_batch", PROFILE_BATCH, "min,opt,max of the dynamic batch axis"),
    TargetOption("profile_other", PROFILE_OTHER, "min,opt,max of other dynamic axes"),
)


def _triple(opts: Options, key: str) -> tuple[int, int, int]:
    text = opts[key]
    try:
        lo, opt, hi = (int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(
            f"--target-option {key}={text}: give three integers min,opt,max, e.g. 1,8,64"
        ) from None
    if not 1 <= lo <= opt <= hi:
        raise ConfigError(f"--target-option {key}={text}: needs 1 <= min <= opt <= max")
    return lo, opt, hi


def _profile(inputs: Sequence[ModelInput], opts: Options, which: int) -> str:
    """One TensorRT profile (which: 0 = min, 1 = opt, 2 = max) covering every dynamic axis."""
    batch, other = _triple(opts, "profile_batch"), _triple(opts, "profile_other")
    shapes = []
    for inp in inputs:
        dims = [d if d is not None else (batch if i == 0 else other)[which] for i, d in enumerate(inp.dims)]
        shapes.append(f"{inp.name}:{'x'.join(map(str, dims))}")
    return ",".join(shapes)


def _bool(value: str) -> str:
    return "True" if value == "true" else "False"


class TensorRTTarget(Target):
    def why_not(self, bits: int, mode: str) -> str:
        if mode == "dynamic":
            return " (dynamic int8 inserts DynamicQuantizeLinear/MatMulInteger, which TensorRT cannot run)"
        return ""

    def quantize_config(self, bits: int, mode: str, calibration_method: str, opts: Options) -> QuantizeConfig:
        if mode == "bf16":
            return presets.bf16(bits)
        if mode == "fp16":
            return presets.fp16(bits, mode)
        explicit = presets.s8s8_symmetric(bits, mode, calibration_method)
        if opts["quantization"] != "implicit":
            return explicit
        # the same ranges, handed to TensorRT as a calibration table on the fp32 graph
        return replace(
            explicit,
            mode="implicit",
            format="fp32+table",
            forbidden_ops=INTEGER_ONLY_OPS | QDQ_OPS,
            calibration_table=f"{opts['cache_dir']}/{CALIBRATION_TABLE}",
        )

    def providers(self, inputs: Sequence[ModelInput], opts: Options) -> list[Provider]:
        options = {
            "trt_int8_enable": "True",
            "trt_fp16_enable": _bool(opts["fp16"]),
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": opts["cache_dir"],
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": opts["cache_dir"],
            "trt_max_workspace_size": str(int(float(opts["workspace_gb"]) * (1 << 30))),
        }
        if opts["quantization"] == "implicit":
            options["trt_int8_calibration_table_name"] = CALIBRATION_TABLE
            options["trt_int8_use_native_calibration_table"] = "False"
        if any(d is None for inp in inputs for d in inp.dims):
            for which, key in enumerate(("min", "opt", "max")):
                options[f"trt_profile_{key}_shapes"] = _profile(inputs, opts, which)
        return [
            Provider("TensorrtExecutionProvider", options),
            Provider("CUDAExecutionProvider"),
            Provider("CPUExecutionProvider"),
        ]

    def providers_for(
        self, inputs: Sequence[ModelInput], opts: Options, qc: QuantizeConfig
    ) -> list[Provider]:
        """16-bit float graphs: trt_fp16_enable or trt_bf16_enable, with int8 off (and fp16 off for
        bf16, which would give up bf16's range)."""
        providers = self.providers(inputs, opts)
        if qc.mode not in ("fp16", "bf16"):
            return providers
        trt = providers[0]
        options = {k: v for k, v in trt.options.items() if not k.startswith("trt_int8_calibration")}
        options.pop("trt_int8_use_native_calibration_table", None)
        bf16 = qc.mode == "bf16"
        options.update({"trt_fp16_enable": "False" if bf16 else "True", "trt_int8_enable": "False"})
        if bf16:
            options["trt_bf16_enable"] = "True"
        return [Provider(trt.name, options), *providers[1:]]

    def provider_violations(self, model: onnx.ModelProto, providers: Sequence[Provider]) -> list[Violation]:
        trt = next((p for p in providers if p.name == "TensorrtExecutionProvider"), None)
        if trt is None:
            return [missing_provider("TensorRT")]
        if trt.options.get("trt_bf16_enable") == "True":
            problems = _bf16_provider_problems(model, trt)
        elif _has_float16(model) and not has_qdq(model):
            problems = _fp16_provider_problems(model, trt)
        else:  # int8; a Q/DQ graph with float16 layers (--recover mixed_precision) needs fp16 on too
            problems = _int8_provider_problems(model, trt)
            if _has_float16(model) and trt.options.get("trt_fp16_enable") != "True":
                problems.append(
                    "the int8 graph has float16 layers (--recover mixed_precision) but trt_fp16_enable is "
                    "not True: set --target-option fp16=true"
                )
        return [Violation("provider-option", None, reason) for reason in problems]


def _has_float16(model: onnx.ModelProto) -> bool:
    from onnx import TensorProto

    return any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)


def _int8_provider_problems(model: onnx.ModelProto, trt: Provider) -> list[str]:
    problems = []
    qdq = has_qdq(model)
    table = trt.options.get("trt_int8_calibration_table_name") or (
        trt.options.get("trt_int8_use_native_calibration_table") == "True"
    )
    if trt.options.get("trt_int8_enable") != "True":
        problems.append("trt_int8_enable is not True, so TensorRT would build this int8 model in float")
    if qdq and table:
        problems.append("a calibration table is set on a Q/DQ graph; TensorRT refuses both together")
    if not qdq and not table:
        problems.append("int8 on a graph without Q/DQ needs a calibration table (implicit quantization)")
    return problems


def _fp16_provider_problems(model: onnx.ModelProto, trt: Provider) -> list[str]:
    problems = []
    if has_qdq(model):
        problems.append("an fp16 graph carries no Q/DQ; this one has both")
    if trt.options.get("trt_fp16_enable") != "True":
        problems.append("trt_fp16_enable is not True, so TensorRT would build this fp16 graph in fp32")
    if trt.options.get("trt_int8_enable") == "True":
        problems.append("trt_int8_enable is on for an fp16 graph without Q/DQ or a calibration table")
    return problems


def _bf16_provider_problems(model: onnx.ModelProto, trt: Provider) -> list[str]:
    problems = []
    if has_qdq(model):
        problems.append("trt_bf16_enable is set on a Q/DQ graph; bf16 graphs carry no Q/DQ")
    for flag in ("trt_int8_enable", "trt_fp16_enable"):
        if trt.options.get(flag) == "True":
            problems.append(f"{flag} is on with bf16; TensorRT could then run layers outside bf16")
    return problems


TENSORRT = TensorRTTarget(
    name="tensorrt",
    description="NVIDIA TensorRT EP: explicit symmetric int8 Q/DQ (per-channel weights, float bias), "
    "or implicit int8 from a calibration table; fp16 (trt_fp16_enable) or bf16 (trt_bf16_enable, Ampere+)",
    modes={16: ("fp16", "bf16"), 8: ("static",)},
    refused_bits={
        4: "MatMulNBits is an onnxruntime contrib op TensorRT does not build, so those nodes would fall to "
        "the CUDA provider; TensorRT's own 4-bit weights are symmetric block-quantized INT4 "
        "DequantizeLinear (opset 21), which qconvert does not write yet. Use --target cuda for 4 bits",
    },
    options=OPTIONS,
    int8_ops=COMMON_INT8_OPS | {"ConvTranspose", "Sigmoid", "LeakyRelu", "Softmax"},
    layer_formats=("int8", "fp16", "fp32"),
)
