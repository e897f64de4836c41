"""Accuracy-recovery algorithms: one module per algorithm, registered here (see base.py). Third-party
steps register through the `qconvert.recoveries` entry-point group (see registry.load_plugins).

The steps are registered by where they live and imported when first used, so naming them (`--help`,
settings checks) does not import onnx and numpy-heavy modules."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qconvert.registry import Registry

if TYPE_CHECKING:
    import onnx

    from qconvert.recover.base import PHASES, Recovery, RecoveryInput, StepResult, in_run_order

RECOVERY: Registry[Recovery] = Registry("accuracy-recovery algorithm", "--recover")

_BASE_NAMES = ("PHASES", "Recovery", "RecoveryInput", "StepResult", "in_run_order")


def __getattr__(name: str) -> Any:  # PEP 562: the step contract, imported when asked for
    if name in _BASE_NAMES:
        from qconvert.recover import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def as_recovery(entry: object) -> Recovery:
    """A plugin may register a Recovery or a Recovery subclass (made with no arguments)."""
    from qconvert.recover.base import PHASES, Recovery

    if isinstance(entry, type) and issubclass(entry, Recovery):
        entry = entry()
    if not isinstance(entry, Recovery) or entry.phase not in PHASES:
        raise TypeError(f"a recovery plugin must be a qconvert.recover.Recovery with a phase in {PHASES}")
    return entry


RECOVERY.plugins("qconvert.recoveries", as_recovery)
for _name, _where in (
    ("smoothquant", "qconvert.recover.smoothquant:STEP"),
    ("clip_weights", "qconvert.recover.clipping:STEP"),
    ("adaround", "qconvert.recover.adaround:STEP"),
    ("gptq", "qconvert.recover.gptq_rounding:STEP"),
    ("bias_correction", "qconvert.recover.bias_correction:STEP"),
    ("equalize", "qconvert.recover.equalize:STEP"),
    ("mixed_precision", "qconvert.recover.mixed_precision:STEP"),
):
    RECOVERY.register_lazy(_name, _where)


def rerun_pre_steps(names: tuple[str, ...], fp32: onnx.ModelProto, inp: RecoveryInput) -> onnx.ModelProto:
    """`fp32` after the `pre` steps among `names` (in run order; those that do not apply to `inp.qc`
    skipped), as the Recover stage runs them: for a run whose settings changed after Recover (the
    float fallback's exclusions), so that each step measures the graph that will be quantized."""
    from qconvert.recover.base import in_run_order

    model = fp32
    steps = in_run_order([RECOVERY.get(name) for name in names])
    for step in steps:
        if step.phase == "pre" and step.why_not(inp.qc) is None:
            model = step(model, None, inp).model
    return model


__all__ = [
    "PHASES",
    "RECOVERY",
    "Recovery",
    "RecoveryInput",
    "StepResult",
    "as_recovery",
    "in_run_order",
    "rerun_pre_steps",
]
