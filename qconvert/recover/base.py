"""The contract every accuracy-recovery algorithm follows (onnx-ir's passes, NNCF's PTQ algorithms).

A recovery step is a small class registered in `RECOVERY`. It declares as data when it runs
(`phase`), which quantization formats it applies to and whether it needs calibration data; it checks
what it requires before any expensive work, and its output must pass `onnx.checker` (`ensures`).

Phases, in pipeline order:
- ``pre``: fp32 -> fp32 before quantization (cross-layer equalization, SmoothQuant, weight clipping).
  A function-preserving step must leave the fp32 outputs unchanged.
- ``post``: (fp32, quantized) -> quantized, editing the quantized graph's initializers (bias
  correction, AdaRound).

Steps never import each other; statistics come from `qconvert.recover.activations`, collected once
per call and shared through `RecoveryInput.cache`.

Run order is data too (`order`): function-preserving rewrites first (equalization, SmoothQuant),
then the steps that choose how weights round (clipping, AdaRound, GPTQ), then bias correction,
which measures the mean error of the weights as they will finally be stored. A rounding step moves
a weight off the fp32 function on purpose (onto its integer grid); it records the value it replaced
(`keep_reference`), and the steps after it measure error against that (`reference_weight`), not
against the on-grid value, in which no rounding error would be left to see.
"""

from __future__ import annotations

import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import onnx

from qconvert.calibrate import Dataset
from qconvert.errors import CalibrationError, QConvertError, QuantizationError
from qconvert.tolerance import Tolerance
from qconvert.types import QuantizeConfig

if TYPE_CHECKING:
    from qconvert.validation import ValidationResult

PHASES = ("pre", "post")
# `Recovery.order`: where a step runs among the steps of its phase (ties keep the user's order)
TRANSFORM, ROUNDING, CORRECTION = 0, 1, 2
_REFERENCE = "reference_weights"  # RecoveryInput.cache key: {initializer: its fp32 value}


@dataclass(frozen=True)
class RecoveryInput:
    """What a step sees besides the graph(s): the quantization settings, calibration data, a work
    folder it may write temporary files into, and a progress callback (done, total)."""

    qc: QuantizeConfig
    calibration: Dataset | None
    work: Path
    progress: Callable[[int, int], None] | None = None
    # fp32 graph -> the graph the run's quantizer makes of it (same settings, calibrated on `calibration`);
    # None: `quantize_candidate` uses quantizer_for(qc, calibration, work)
    quantize: Callable[[onnx.ModelProto], onnx.ModelProto] | None = None
    # statistics shared between steps of one run (activations.collect keys); not part of the contract
    cache: dict[str, Any] = field(default_factory=dict, compare=False)
    # what a step that chooses per-layer precision needs (recover/mixed_precision.py): the target's
    # per-layer formats (Target.layer_formats), the run's tolerance (its goal), the prepared fp32 graph
    # before any recovery step (what the quantized model is measured against; None: the graph the
    # step is given), and `time(models)`: p50 latency in ms of each graph on the target's provider,
    # interleaved (None: that provider is not on this machine)
    formats: tuple[str, ...] = ()
    tolerance: Tolerance | None = None
    original: Path | None = None
    time: Callable[[Sequence[onnx.ModelProto]], list[float]] | None = None


@dataclass(frozen=True)
class StepResult:
    """The step's output graph, whether it changed anything, notes for the report, JSON-able details."""

    model: onnx.ModelProto
    changed: bool
    notes: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    # QuantizeConfig fields that describe the graph after a `post` step (e.g. layer_formats), which
    # the run's QuantizeConfig takes on
    settings: dict[str, Any] = field(default_factory=dict)


def worst_slack(validation: ValidationResult) -> float:
    """The worst check's slack relative to its bound, on the point estimates (>= 0 when every figure
    meets its bound): a search criterion on calibration samples, not a verdict (the verdict reads
    the confidence interval's end, `Check.slack`, on held-out data)."""
    return min((c.bound.slack(c.measured) for c in validation.checks), default=0.0)


def meets(validation: ValidationResult) -> bool:
    """Every figure meets its bound, on the point estimates (see worst_slack)."""
    return all(check.bound.holds(check.measured) for check in validation.checks)


def keep_reference(inp: RecoveryInput, name: str, value: np.ndarray) -> None:
    """Record `value` as weight `name`'s fp32 value before a step moves it off the fp32 function
    (the first record wins: the value before any such step)."""
    inp.cache.setdefault(_REFERENCE, {}).setdefault(name, np.array(value, np.float32, copy=True))


def reference_weight(inp: RecoveryInput, name: str, current: np.ndarray) -> np.ndarray:
    """The fp32 value weight `name` stands for: what a rounding step replaced, else `current`."""
    return np.asarray(inp.cache.get(_REFERENCE, {}).get(name, current))


def in_run_order(steps: list[Recovery]) -> list[Recovery]:
    """`steps` in pipeline order: `pre` steps before `post` steps (which edit the quantized graph),
    by `Recovery.order` within a phase, the given order among equals."""
    return sorted(steps, key=lambda step: (PHASES.index(step.phase), step.order))


def quantizer_for(
    qc: QuantizeConfig, calibration: Dataset | None, work: Path
) -> Callable[[onnx.ModelProto], onnx.ModelProto]:
    """fp32 graph -> the graph the `qc.mode` quantizer makes of it, calibrated on `calibration`
    (temporary files only under `work`)."""

    def quantize(model: onnx.ModelProto) -> onnx.ModelProto:
        from qconvert.artifacts import save_onnx
        from qconvert.quantize import QUANTIZERS

        with tempfile.TemporaryDirectory(prefix="candidate-", dir=work) as tmp:
            src = save_onnx(onnx.ModelProto.FromString(model.SerializeToString()), Path(tmp) / "in.onnx")
            dest = QUANTIZERS.get(qc.mode)(src, Path(tmp) / "out.onnx", qc, calibration, None)
            return onnx.load(str(dest))

    return quantize


def quantize_candidate(model: onnx.ModelProto, inp: RecoveryInput) -> onnx.ModelProto:
    """`model` quantized as the run will quantize it: what a step measures its effect on."""
    quantize = inp.quantize or quantizer_for(inp.qc, inp.calibration, inp.work)
    return quantize(model)


class Recovery(ABC):
    """One accuracy-recovery algorithm. Subclasses set the class data and implement `run`."""

    name: ClassVar[str]
    phase: ClassVar[str]  # one of PHASES
    needs_calibration: ClassVar[bool] = True
    formats: ClassVar[frozenset[str]] = frozenset({"qdq"})  # QuantizeConfig.format values
    summary: ClassVar[str] = ""
    order: ClassVar[int] = TRANSFORM  # TRANSFORM, ROUNDING or CORRECTION: see the module docstring

    def why_not(self, qc: QuantizeConfig) -> str | None:
        """None when the step applies to `qc`, else the reason it does not (shown to the user)."""
        if qc.format not in self.formats:
            return f"{self.name} applies to {', '.join(sorted(self.formats))} graphs, not {qc.format}"
        return None

    def requires(self, inp: RecoveryInput) -> None:
        """Checked before any work: raise a QConvertError naming the flag to fix."""
        if self.needs_calibration and (inp.calibration is None or len(inp.calibration) == 0):
            raise CalibrationError(
                f"{self.name} needs calibration data: pass --calibration DATA (samples like the model's "
                "real inputs), or leave it out of --recover."
            )

    @abstractmethod
    def run(self, fp32: onnx.ModelProto, quantized: onnx.ModelProto | None, inp: RecoveryInput) -> StepResult:
        """`pre` steps get (fp32, None) and return an fp32 graph; `post` steps return a quantized one."""

    def ensures(self, result: StepResult) -> None:
        try:
            onnx.checker.check_model(result.model)
        except Exception as e:
            raise QuantizationError(f"{self.name} produced a graph that fails onnx.checker: {e}") from e

    def __call__(
        self, fp32: onnx.ModelProto, quantized: onnx.ModelProto | None, inp: RecoveryInput
    ) -> StepResult:
        self.requires(inp)
        start = time.perf_counter()
        try:
            result = self.run(fp32, quantized, inp)
        except QConvertError:
            raise
        except Exception as e:
            raise QuantizationError(f"{self.name} failed: {type(e).__name__}: {e}") from e
        self.ensures(result)
        return replace(result, seconds=time.perf_counter() - start)
