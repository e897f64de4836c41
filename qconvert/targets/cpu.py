"""x86 CPU through onnxruntime's CPU provider.

Fastest with unsigned 8-bit activations and signed per-channel weights (U8S8). On CPUs without
VNNI, the AVX2 u8 x s8 multiply-add can saturate, so weights use a reduced 7-bit range there.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from qconvert.config import QuantizeConfig
from qconvert.targets.base import ORT_CPU_INT8_OPS, Options, Provider, Target, TargetOption

if TYPE_CHECKING:
    from qconvert.calibrate import ModelInput


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def has_vnni() -> bool:
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags())


OPTIONS = (
    TargetOption(
        "format",
        "auto",
        "static int8 graph format; auto quantizes both and keeps the faster one here",
        ("auto", "qdq", "qoperator"),
    ),
    TargetOption(
        "reduce_range",
        "auto",
        "7-bit weights; auto turns it on for CPUs without VNNI",
        ("auto", "true", "false"),
    ),
)


class CpuTarget(Target):
    def quantize_config(
        self, bits: int, mode: str, calibration_method: str, opts: Options | None = None
    ) -> QuantizeConfig:
        return self.quantize_candidates(bits, mode, calibration_method, opts)[0]

    def quantize_candidates(
        self, bits: int, mode: str, calibration_method: str, opts: Options | None = None
    ) -> list[QuantizeConfig]:
        o = self.resolve_options(opts)
        reduce = not has_vnni() if o["reduce_range"] == "auto" else o["reduce_range"] == "true"
        base = QuantizeConfig(
            bits=bits,
            mode=mode,
            format="qoperator",
            activation_type="uint8",
            weight_type="int8",
            per_channel=True,
            activation_symmetric=False,
            weight_symmetric=True,
            reduce_range=reduce,
            calibration_method=calibration_method,
        )
        if mode != "static":
            return [base]
        formats = ("qdq", "qoperator") if o["format"] == "auto" else (o["format"],)
        return [replace(base, format=f) for f in formats]

    def providers(self, inputs: Sequence[ModelInput], opts: Options | None = None) -> list[Provider]:
        return [Provider("CPUExecutionProvider")]

    def facts(self) -> dict[str, object]:
        flags = cpu_flags()
        return {
            "machine": platform.machine(),
            "vnni": has_vnni(),
            "avx2": "avx2" in flags,
            "avx512f": "avx512f" in flags,
            "reduce_range": not has_vnni(),  # what reduce_range=auto chooses on this CPU
        }


CPU = CpuTarget(
    name="cpu",
    description="x86 CPU, onnxruntime CPU provider: U8S8 static int8 (Q/DQ or QOperator, whichever "
    "measures faster here) or dynamic int8",
    modes={8: ("static", "dynamic")},
    options=OPTIONS,
    int8_ops=ORT_CPU_INT8_OPS,
)
