"""`qconvert targets`: what each target produces and whether its provider is installed here."""

from __future__ import annotations

from rich.table import Table

from qconvert.cli._common import out
from qconvert.targets import TARGETS


def targets() -> int:
    """List the targets, their bit widths and modes, and whether their provider is installed."""
    import onnxruntime as ort

    installed = set(ort.get_available_providers())
    table = Table(title="qconvert targets")
    for col in ("target", "bits: modes (first = default)", "providers (priority order)", "description"):
        table.add_column(col)
    for name, target in TARGETS:
        modes = "; ".join(f"{b}: {', '.join(m)}" for b, m in sorted(target.modes.items(), reverse=True))
        provs = ", ".join(
            f"{p.name.replace('ExecutionProvider', '')}{'' if p.name in installed else ' (not installed)'}"
            for p in target.providers([])
        )
        table.add_row(name, modes, provs, target.description)
    out.print(table)
    return 0
