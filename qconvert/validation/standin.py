"""The one stand-in decision: can this machine run the graph the way the target will, and if not,
what validation runs instead, and how. `qconvert export`, `qconvert validate` and `qconvert sweep`'s
collapse probe all decide here (tests/unit/validation/test_standin.py checks that export and validate
of one folder decide alike for every target).

- `not_here(target, providers)`: why this machine cannot run the graph as the target will (None: it
  can). The target decides (an arm64 graph on x86 runs on the CPU provider, but x86's fused int8
  kernels are not ARM64's); without a known target, only whether the first provider is installed.
  Where it says why, validation runs the graph's exact Q/DQ arithmetic (graph optimizations off).
- `emulation(mode, calibration_table, not_here, layer_formats)`: the graph validated instead of
  model.onnx, as report.json's `stand_in` names it: implicit (an explicit Q/DQ twin with the table's
  ranges), fp16 or bf16 (an fp32 graph rounding to that type where there are no such kernels; also
  for an int8 graph with fp16 layers), or None.
- `runs_native(why_not_here, stand_in)`: whether validation runs the graph through the provider's
  own fused kernels (graph optimizations on), or its exact Q/DQ arithmetic (optimizations off).
- `for_folder(out_dir, manifest)`: the decision for an export's folder on this machine, from what
  its manifest records (`qconvert validate`, and `qconvert sweep`'s collapse probe).
- `emulated(kind, model, work, external_data)`: the fp16/bf16 stand-in graph and its note.
- `reference_onnx(spec, out_dir)`: the fp32 ONNX `qconvert validate` probes and times against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qconvert.results import Manifest
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


def runs_native(why_not_here: str | None, stand_in: bool) -> bool:
    """Whether validation runs the graph through the provider's own fused kernels, graph optimizations
    on: only where this machine runs model.onnx itself (`stand_in` False: not a stand-in graph) the way
    the target will. Otherwise the graph's Q/DQ arithmetic runs exactly as written (optimizations off):
    an arm64 graph on x86 is not judged by x86's fused int8 kernels."""
    return why_not_here is None and not stand_in


@dataclass(frozen=True)
class FolderDecision:
    """How this machine validates an export's folder: on which providers, why not as the target will
    (None: it can), and the stand-in (`emulation`) for model.onnx."""

    providers: list[Provider]
    not_here: str | None
    stand_in: str | None  # implicit | fp16 | bf16 | None

    @property
    def emulated(self) -> str | None:
        """fp16 or bf16 where validation runs an fp32 graph rounding to that type instead of model.onnx."""
        return self.stand_in if self.stand_in in ("fp16", "bf16") else None

    @property
    def native(self) -> bool:
        """`runs_native` for the graph validated: an implicit-int8 model.onnx is checked itself."""
        return runs_native(self.not_here, self.emulated is not None)


def for_folder(out_dir: Path | None, manifest: Manifest | None) -> FolderDecision:
    """The decision for a folder `qconvert export` wrote, from its manifest (the CPU provider and no
    stand-in for a bare .onnx without one)."""
    from qconvert.runtime import CPU, manifest_providers

    recorded = manifest_providers(out_dir, manifest) if out_dir is not None and manifest is not None else []
    providers = recorded or [CPU]
    if manifest is None:
        return FolderDecision(providers, not_here(None, providers), None)
    q = manifest.quantization
    why = not_here(manifest.target.name, providers)
    return FolderDecision(providers, why, emulation(q.mode, bool(q.calibration_table), why, q.layer_formats))


def emulated(kind: str, model_path: Path, work: Path, external_data: bool) -> tuple[Path, str]:
    """An fp32 graph in `work` that rounds each tensor to `kind` (fp16 or bf16) where model.onnx
    produces it, and the note that says the figures are for it."""
    if kind == "fp16":
        from qconvert.quantize.float16 import emulate_fp16

        # onnxruntime's CPU provider runs most fp16 nodes in fp32 and drops the casts between
        # them: it would neither round to fp16 nor overflow. Validate a stand-in that does both.
        return emulate_fp16(model_path, work / "fp16_emulated.onnx", external_data), (
            "fp16: no fp16 kernels here, so the figures are for an fp32 stand-in that rounds each tensor "
            "to fp16 where the fp16 graph produces it (overflow included); onnxruntime's CPU provider "
            "would run most of model.onnx in fp32 instead."
        )
    from qconvert.quantize.bf16 import emulate_bf16

    # the CPU provider has no bf16 MatMul/Gemm/Conv: the bf16 graph would not even load here
    return emulate_bf16(model_path, work / "bf16_emulated.onnx", external_data), (
        "bf16: no bf16 kernels here, so the figures are for an fp32 stand-in that rounds each tensor to "
        "bfloat16 (round to nearest even) where the bf16 graph produces it; the CPU provider cannot run "
        "model.onnx itself."
    )


def reference_onnx(spec: str, out_dir: Path | None) -> Path | None:
    """The fp32 ONNX `qconvert validate` probes and times the candidate against: --reference REF.onnx
    itself, else the OUT_DIR's reference.onnx; None where there is neither (a torch SOURCE reference
    of a bare .onnx candidate)."""
    if Path(spec).suffix == ".onnx":
        return Path(spec)
    if out_dir is not None and (out_dir / "reference.onnx").is_file():
        return out_dir / "reference.onnx"
    return None
