"""Accuracy-recovery algorithms: one module per algorithm, registered here (see base.py)."""

from __future__ import annotations

from qconvert.recover.base import PHASES, Recovery, RecoveryInput, StepResult
from qconvert.registry import Registry

RECOVERY: Registry[Recovery] = Registry("accuracy-recovery algorithm", "--recover")

from qconvert.recover.smoothquant import SmoothQuant  # noqa: E402

RECOVERY.register("smoothquant")(SmoothQuant())

from qconvert.recover.clipping import ClipWeights  # noqa: E402

RECOVERY.register("clip_weights")(ClipWeights())

from qconvert.recover.adaround import AdaRound  # noqa: E402

RECOVERY.register("adaround")(AdaRound())

from qconvert.recover.gptq_rounding import GptqRounding  # noqa: E402

RECOVERY.register("gptq")(GptqRounding())

from qconvert.recover.bias_correction import BiasCorrection  # noqa: E402

RECOVERY.register("bias_correction")(BiasCorrection())

from qconvert.recover.equalize import Equalize  # noqa: E402

RECOVERY.register("equalize")(Equalize())

__all__ = ["PHASES", "RECOVERY", "Recovery", "RecoveryInput", "StepResult"]
