"""The one stand-in decision: can this machine run the graph the way the target will, and if not,
what validation runs instead. `qconvert export`, `qconvert validate` and `qconvert sweep` (which
reads export's `stand_in` / `validation_exact_qdq`) all reach their verdicts through it.

- `not_here(target, providers)`: why this machine cannot run the graph as the target will (None: it
  can). The target decides (an arm64 graph on x86 runs on the CPU provider, but x86's fused int8
  kernels are not ARM64's); without a known target, only whether the first provider is installed.
  Where it says why, validation runs the graph's exact Q/DQ arithmetic (graph optimizations off).
- `emulation(mode, calibration_table, not_here, layer_formats)`: the graph validated instead of
  model.onnx, as report.json's `stand_in` names it: implicit (an explicit Q/DQ twin with the table's
  ranges), fp16 or bf16 (an fp32 graph rounding to that type where there are no such kernels; also
  for an int8 graph with fp16 layers), or None.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qconvert.targets import Provider


def not_here(target: str | None, providers: Sequence[Provider]) -> str | None:
    """Why this machine cannot run `providers` the way `target` will; None when it can."""
    if target is not None:
        from qconvert.targets import TARGETS

        if target in TARGETS:
            return TARGETS.get(target).not_here(providers)
    from qconvert.runtime import available

    first = providers[0].name if providers else "CPUExecutionProvider"
    return None if available(first) else f"{first} is not installed here"


def emulation(
    mode: str | None,
    calibration_table: bool,
    why_not_here: str | None,
    layer_formats: Sequence[Sequence[str]] = (),
) -> str | None:
    """The stand-in validation runs instead of model.onnx (None: model.onnx itself). `layer_formats`:
    the (node, format) pairs of a mixed-precision graph; fp16 layers need the fp16 stand-in too."""
    if calibration_table:
        return "implicit"
    if mode in ("fp16", "bf16") and why_not_here is not None:
        return mode
    if any(fmt == "fp16" for _, fmt in layer_formats) and why_not_here is not None:
        return "fp16"
    return None
