"""What the command line offers, read from the registries: the choices of `--target`, `--bits`,
`--mode`, `--calibration-method`, `--placement`, `--algorithm` and `--recover`, for the help and
for the settings' checks alike. A plugin target, quantizer or recovery step (entry points, see
registry.py) becomes a valid value and shows up in `--help` with no edit here.

Each function imports its registry when it is called: settings.py calls them from the groups'
`__post_init__`, and the registries' modules import the settings' types (types.py, tolerance.py).
"""

from __future__ import annotations


def targets() -> tuple[str, ...]:
    """`--target`: every registered target, by name."""
    from qconvert.targets import TARGETS

    return tuple(TARGETS.names())


def bits() -> tuple[int, ...]:
    """`--bits`: the bit widths some target quantizes to, widest first (only those with default
    tolerances: a verdict needs them)."""
    from qconvert.targets import TARGETS
    from qconvert.tolerance import DEFAULT_TOLERANCES

    offered = {b for _, target in TARGETS for b in target.modes}
    return tuple(sorted(offered & set(DEFAULT_TOLERANCES), reverse=True))


def modes(capability: str | None = None) -> tuple[str, ...]:
    """`--mode`: the quantizers a user may name, in registration order; with `capability` (a
    quantize.Method flag such as "honours_exclude"), only those that have it."""
    from qconvert.quantize import QUANTIZERS

    return tuple(
        name
        for name, method in QUANTIZERS
        if method.selectable and (capability is None or getattr(method, capability))
    )


def calibration_methods() -> tuple[str, ...]:
    """`--calibration-method`: the methods qconvert's calibrator has."""
    from qconvert.calibrate.streaming import ORT_METHODS

    return tuple(ORT_METHODS)


def placements() -> tuple[str, ...]:
    """`--placement`: where a static int8 graph gets its Q/DQ pairs (quantize.placement)."""
    from qconvert.quantize.placement import PLACEMENTS

    return PLACEMENTS


def weight_algorithms() -> tuple[str, ...]:
    """`--algorithm`: every quantizer's `algorithms` (4-bit weight rounding), in registration order."""
    from qconvert.quantize import QUANTIZERS

    return tuple(dict.fromkeys(a for _, method in QUANTIZERS for a in method.algorithms))


def recovery_steps() -> tuple[str, ...]:
    """`--recover`: every registered accuracy-recovery step, by name."""
    from qconvert.recover import RECOVERY

    return tuple(RECOVERY.names())
