"""`qconvert targets`: what each target produces, its options, and whether its provider is here."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from qconvert.cli._common import out, print_table, write_json_stdout
from qconvert.targets import TARGETS


def targets(
    as_json: bool = typer.Option(False, "--json", help="Print the targets as JSON on stdout instead."),
) -> int:
    """List the targets: bit widths and modes, providers (installed here or not), options."""
    import onnxruntime as ort

    installed = set(ort.get_available_providers())
    if as_json:
        write_json_stdout([_as_json(name, target, installed) for name, target in TARGETS])
        return 0
    table = Table(title="qconvert targets", show_lines=True)
    # the options column is the one `--target-option` needs whole: on a narrow console (a CI log is 80
    # columns) the others give it room
    narrow = out.width < 120
    table.add_column("target", max_width=16 if narrow else None)
    table.add_column("bits: modes (first = default)", max_width=16 if narrow else None)
    table.add_column("providers, priority order", max_width=15 if narrow else None)
    table.add_column("options (--target-option)")
    for name, target in TARGETS:
        defaults = target.bind()  # what it runs with when no --target-option is given
        modes = "\n".join(f"{b}: {', '.join(m)}" for b, m in sorted(target.modes.items(), reverse=True))
        refused = "\n".join(
            f"{b}: no ({why})" for b, why in sorted(target.refused_bits.items(), reverse=True)
        )
        provs = "\n".join(
            f"{p.name.removesuffix('ExecutionProvider')}{' (installed)' if p.name in installed else ' (not here)'}"
            for p in defaults.providers([])
        )
        opts = "\n".join(
            f"{o.name}={o.default}" + (f"\n  [{' | '.join(o.choices)}]" if o.choices else "")
            for o in target.options
        )
        table.add_row(
            f"[bold]{name}[/]\n{escape(target.description)}",
            modes + (f"\n[dim]{escape(refused)}[/]" if refused else ""),
            provs,
            escape(opts) or "-",
        )
    print_table(table)
    return 0


def _as_json(name: str, target: Any, installed: set[str]) -> dict[str, Any]:
    return {
        "name": name,
        "description": target.description,
        "modes": {str(bits): list(modes) for bits, modes in sorted(target.modes.items(), reverse=True)},
        "refused_bits": {str(bits): why for bits, why in sorted(target.refused_bits.items(), reverse=True)},
        "providers": [
            {"name": p.name, "installed": p.name in installed} for p in target.bind().providers([])
        ],
        "options": [
            {"name": o.name, "default": o.default, "help": o.help, "choices": list(o.choices) or None}
            for o in target.options
        ],
    }
