"""NVIDIA TensorRT through onnxruntime's TensorRT provider, with explicit quantization.

TensorRT takes explicit Q/DQ with symmetric signed int8 (zero point 0), per-channel weights and
float bias, and no integer-only operators. The provider must have int8 enabled for a Q/DQ graph
and must never be given a calibration table for one ("setting dynamic range is only allowed when
there are no Q/DQ layers").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from qconvert.config import QuantizeConfig
from qconvert.targets.base import INTEGER_ONLY_OPS, Options, Provider, Target, has_qdq

if TYPE_CHECKING:
    import onnx

    from qconvert.calibrate import ModelInput

CACHE_DIR = "trt_cache"  # relative to the artifact folder
PROFILE_BATCH = (1, 8, 64)  # min / opt / max for the dynamic batch axis
PROFILE_OTHER = (1, 128, 512)  # min / opt / max for other dynamic axes (e.g. sequence length)
WORKSPACE_BYTES = 2 << 30


def _profile(inputs: Sequence[ModelInput], which: int) -> str:
    """One TensorRT profile (which: 0 = min, 1 = opt, 2 = max) covering every dynamic axis."""
    shapes = []
    for inp in inputs:
        dims = [
            d if d is not None else (PROFILE_BATCH if i == 0 else PROFILE_OTHER)[which]
            for i, d in enumerate(inp.dims)
        ]
        shapes.append(f"{inp.name}:{'x'.join(map(str, dims))}")
    return ",".join(shapes)


class TensorRTTarget(Target):
    def why_not(self, bits: int, mode: str) -> str:
        if mode == "dynamic":
            return " (dynamic int8 inserts DynamicQuantizeLinear/MatMulInteger, which TensorRT cannot run)"
        return ""

    def quantize_config(
        self, bits: int, mode: str, calibration_method: str, opts: Options | None = None
    ) -> QuantizeConfig:
        return QuantizeConfig(
            bits=bits,
            mode=mode,
            format="qdq",
            activation_type="int8",
            weight_type="int8",
            per_channel=True,
            activation_symmetric=True,
            weight_symmetric=True,
            reduce_range=False,
            quantize_bias=False,
            calibration_method=calibration_method,
            forbidden_ops=INTEGER_ONLY_OPS,
        )

    def providers(self, inputs: Sequence[ModelInput], opts: Options | None = None) -> list[Provider]:
        options = {
            "trt_int8_enable": "True",
            "trt_fp16_enable": "True",
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": CACHE_DIR,
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": CACHE_DIR,
            "trt_max_workspace_size": str(WORKSPACE_BYTES),
        }
        if any(d is None for inp in inputs for d in inp.dims):
            for which, key in enumerate(("min", "opt", "max")):
                options[f"trt_profile_{key}_shapes"] = _profile(inputs, which)
        return [
            Provider("TensorrtExecutionProvider", options),
            Provider("CUDAExecutionProvider"),
            Provider("CPUExecutionProvider"),
        ]

    def provider_violations(self, model: onnx.ModelProto, providers: Sequence[Provider]) -> list[str]:
        trt = next((p for p in providers if p.name == "TensorrtExecutionProvider"), None)
        if trt is None:
            return ["the TensorRT provider is missing from the provider list"]
        problems = []
        qdq = has_qdq(model)
        if qdq and trt.options.get("trt_int8_enable") != "True":
            problems.append("the graph has Q/DQ nodes but trt_int8_enable is not True")
        if qdq and (
            trt.options.get("trt_int8_calibration_table_name")
            or trt.options.get("trt_int8_use_native_calibration_table") == "True"
        ):
            problems.append("a calibration table is set on a Q/DQ graph; TensorRT refuses both together")
        return problems


TENSORRT = TensorRTTarget(
    name="tensorrt",
    description="NVIDIA TensorRT EP: explicit symmetric int8 Q/DQ, per-channel weights, float bias",
    modes={8: ("static",)},
)
