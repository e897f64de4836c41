"""x86 CPU through onnxruntime's CPU provider.

Fastest with unsigned 8-bit activations and signed per-channel weights (U8S8). On CPUs without
VNNI, the AVX2 u8 x s8 multiply-add can saturate, so weights use a reduced 7-bit range there.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from qconvert.config import QuantizeConfig
from qconvert.targets.base import Options, Provider, Target

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


class CpuTarget(Target):
    def quantize_config(
        self, bits: int, mode: str, calibration_method: str, opts: Options | None = None
    ) -> QuantizeConfig:
        return QuantizeConfig(
            bits=bits,
            mode=mode,
            format="qdq" if mode == "static" else "qoperator",
            activation_type="uint8",
            weight_type="int8",
            per_channel=True,
            activation_symmetric=False,
            weight_symmetric=True,
            reduce_range=not has_vnni(),
            calibration_method=calibration_method,
        )

    def providers(self, inputs: Sequence[ModelInput], opts: Options | None = None) -> list[Provider]:
        return [Provider("CPUExecutionProvider")]

    def facts(self) -> dict[str, object]:
        flags = cpu_flags()
        return {
            "machine": platform.machine(),
            "vnni": has_vnni(),
            "avx2": "avx2" in flags,
            "avx512f": "avx512f" in flags,
            "reduce_range": not has_vnni(),
        }


CPU = CpuTarget(
    name="cpu",
    description="x86 CPU, onnxruntime CPU provider: U8S8 Q/DQ (static) or dynamic int8",
    modes={8: ("static", "dynamic")},
)
