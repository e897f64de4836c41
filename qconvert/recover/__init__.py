"""Accuracy-recovery algorithms: one module per algorithm, registered here (see base.py). Third-party
steps register through the `qconvert.recoveries` entry-point group (see registry.load_plugins)."""

from __future__ import annotations

from qconvert.recover.base import PHASES, Recovery, RecoveryInput, StepResult
from qconvert.registry import Registry

RECOVERY: Registry[Recovery] = Registry("accuracy-recovery algorithm", "--recover")


def as_recovery(entry: object) -> Recovery:
    """A plugin may register a Recovery or a Recovery subclass (made with no arguments)."""
    if isinstance(entry, type) and issubclass(entry, Recovery):
        entry = entry()
    if not isinstance(entry, Recovery) or entry.phase not in PHASES:
        raise TypeError(f"a recovery plugin must be a qconvert.recover.Recovery with a phase in {PHASES}")
    return entry


RECOVERY.plugins("qconvert.recoveries", as_recovery)

from qconvert.recover.smoothquant import SmoothQuant  # noqa: E402

RECOVERY.register("smoothquant")(SmoothQuant())

from qconvert.recover.clipping import ClipWeights  # noqa: E402

RECOVERY.register("clip_weights")(ClipWeights())

from qconvert.recover.adaround import AdaRound  # noqa: E402

RECOVERY.register("adaround")(AdaRound())

from qconvert.recover.bias_correction import BiasCorrection  # noqa: E402

RECOVERY.register("bias_correction")(BiasCorrection())

from qconvert.recover.equalize import Equalize  # noqa: E402

RECOVERY.register("equalize")(Equalize())

__all__ = ["PHASES", "RECOVERY", "Recovery", "RecoveryInput", "StepResult", "as_recovery"]
