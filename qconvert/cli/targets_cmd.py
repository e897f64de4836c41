"""`qconvert targets`: what each target produces, its options, and whether its provider is here."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from qconvert.cli._common import out
from qconvert.targets import TARGETS


def targets() -> int:
    """List the targets: bit widths and modes, providers (installed here or not), options."""
    import onnxruntime as ort

    installed = set(ort.get_available_providers())
    table = Table(title="qconvert targets", show_lines=True)
    for col in (
        "target",
        "bits: modes (first = default)",
        "providers, priority order",
        "options (--target-option)",
    ):
        table.add_column(col)
    for name, target in TARGETS:
        modes = "\n".join(f"{b}: {', '.join(m)}" for b, m in sorted(target.modes.items(), reverse=True))
        refused = "\n".join(
            f"{b}: no ({why})" for b, why in sorted(target.refused_bits.items(), reverse=True)
        )
        provs = "\n".join(
            f"{p.name.removesuffix('ExecutionProvider')}{' (installed)' if p.name in installed else ' (not here)'}"
            for p in target.providers([])
        )
        opts = "\n".join(
            f"{o.name}={o.default}" + (f" [{'|'.join(o.choices)}]" if o.choices else "")
            for o in target.options
        )
        table.add_row(
            f"[bold]{name}[/]\n{escape(target.description)}",
            modes + (f"\n[dim]{escape(refused)}[/]" if refused else ""),
            provs,
            escape(opts) or "-",
        )
    out.print(table)
    return 0
