"""Intel CPUs, GPUs and NPUs through onnxruntime's OpenVINO provider.

The graph is what NNCF, OpenVINO's own quantizer, writes with its `mixed` preset: unsigned 8-bit
asymmetric activations and signed symmetric per-channel int8 weights (NNCF: "`mixed`: symmetric
quantization of weights and asymmetric quantization of activations"; NNCF's ONNX backend always
gives weights a signed range). NNCF's default preset for CNNs, `performance`, makes activations
symmetric too and picks their signedness per tensor (u8 after a ReLU, i8 elsewhere); onnxruntime's
quantizer has one activation type for the whole graph, so `mixed` is the NNCF layout it can
reproduce without wasting half the range of every post-ReLU tensor.

The weight rule matters in practice: with this layout OpenVINO's CPU plugin runs every Conv and
fully connected layer in int8, while the same model with unsigned asymmetric per-tensor weights (the
QNN layout) gets its Convs run in f32 (both checked in tests/e2e/test_openvino_crossrun.py by reading the
compiled model's runtime precisions).

No `reduce_range`: OpenVINO's CPU plugin does not saturate on this layout on an AVX2 CPU without
VNNI (its outputs match the graph's exact Q/DQ arithmetic; measured in the same test), unlike
onnxruntime's own fused x86 kernels.

Provider options: `device_type` (CPU, GPU or NPU) and `cache_dir` (compiled-model cache, which
matters most on GPU and NPU where compilation is slow; onnxruntime 1.23 deprecated the key in
favour of `load_config`'s CACHE_DIR but still parses it, and as a plain key the artifact loader can
resolve it against OUT_DIR). For NPU, `enable_qdq_optimizer` lets the
provider (or the NPU compiler, where it supports NPU_QDQ_OPTIMIZATION) keep Q/DQ only around the
ops the NPU runs in int8; the provider itself forces static shapes on NPU (`disable_dynamic_shapes`),
reshaping at the first inference of each new input shape. OpenVINO's docs also advise turning off
onnxruntime's own graph optimizations in front of this provider (a session option, not a provider
option, so it is not part of what this target declares).

Per-layer formats inside the int8 graph (`--recover mixed_precision`): int8 and fp32 (the layer left
float). No a16w8: OpenVINO's low-precision transformations take 8-bit Q/DQ. No explicit fp16: the
plugin picks the precision of float layers itself (its inference precision: fp16 on GPU/NPU, bf16 on
CPUs with AMX or AVX-512 BF16, else fp32), so a layer left float runs in that precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from qconvert.targets import presets
from qconvert.targets.base import (
    COMMON_INT8_OPS,
    Options,
    Provider,
    Target,
    TargetOption,
    Violation,
    missing_provider,
)
from qconvert.types import QuantizeConfig

if TYPE_CHECKING:
    import onnx

    from qconvert.calibrate import ModelInput

OPENVINO_EP = "OpenVINOExecutionProvider"
DEVICES = ("CPU", "GPU", "NPU")
CACHE_DIR = "ov_cache"  # relative to the artifact folder

OPTIONS = (
    TargetOption("device", "CPU", "the Intel device OpenVINO compiles the model for", DEVICES),
    TargetOption("cache_dir", CACHE_DIR, "compiled-model cache folder, relative to OUT_DIR ('' for none)"),
)


# beyond the common set, ops OpenVINO's low-precision transformations keep in int8
# fmt: off
LPT_EXTRA_OPS = frozenset({
    "ConvTranspose", "PRelu", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "DepthToSpace",
    "SpaceToDepth", "Sub"
})
# fmt: on


class OpenVINOTarget(Target):
    def why_not(self, bits: int, mode: str) -> str:
        if mode == "dynamic":
            return (
                " (OpenVINO has no DynamicQuantizeLinear; the provider would hand those nodes back to "
                "onnxruntime's CPU provider)"
            )
        return ""

    def quantize_config(self, bits: int, mode: str, calibration_method: str, opts: Options) -> QuantizeConfig:
        return presets.u8s8(bits, mode, calibration_method)  # NNCF's mixed preset

    def providers(self, inputs: Sequence[ModelInput], opts: Options) -> list[Provider]:
        options = {"device_type": opts["device"]}
        if opts["device"] == "CPU":
            # The CPU plugin's default inference precision is bf16 on CPUs with AMX/AVX512_BF16, so the
            # float layers would not compute what was validated; FP32 pins them on every CPU.
            options["precision"] = "FP32"
        if opts["cache_dir"]:
            options["cache_dir"] = opts["cache_dir"]
        if opts["device"] == "NPU":
            options["enable_qdq_optimizer"] = "True"
        return [Provider(OPENVINO_EP, options), Provider("CPUExecutionProvider")]

    def provider_violations(self, model: onnx.ModelProto, providers: Sequence[Provider]) -> list[Violation]:
        ov = next((p for p in providers if p.name == OPENVINO_EP), None)
        if ov is None:
            return [missing_provider("OpenVINO")]
        problems = []
        device = ov.options.get("device_type", "")
        if device.split(".")[0] not in DEVICES:
            reason = f"device_type {device!r} is not one of {', '.join(DEVICES)}"
            problems.append(Violation("provider-option", None, reason))
        # The provider refuses any precision but FP32 on CPU ("precision" is deprecated, but still parsed)
        precision = ov.options.get("precision")
        if precision and device == "CPU" and precision != "FP32":
            reason = f"precision {precision} on device_type CPU: OpenVINO's CPU plugin only takes FP32"
            problems.append(Violation("provider-option", None, reason))
        return problems


OPENVINO = OpenVINOTarget(
    name="openvino",
    description="Intel CPU/GPU/NPU through the OpenVINO EP: NNCF-style Q/DQ, u8 asymmetric activations, "
    "i8 symmetric per-channel weights",
    modes={8: ("static",)},
    refused_bits={
        4: "OpenVINO's 4-bit path is its own int4 weight compression (NNCF) in OpenVINO IR; whether an "
        "OpenVINO EP build claims onnxruntime's contrib MatMulNBits cannot be checked without the provider, "
        "and nodes it does not claim would run on the CPU provider",
        16: "qconvert writes no fp16/bf16 graph for OpenVINO: its plugins choose their inference precision "
        "(fp16 on GPU/NPU, bf16 on CPUs with AMX/AVX-512 BF16) from the fp32 graph",
    },
    options=OPTIONS,
    # OpenVINO's low-precision transformations cover the common set plus these
    int8_ops=COMMON_INT8_OPS | LPT_EXTRA_OPS,
    layer_formats=("int8", "fp32"),
)
