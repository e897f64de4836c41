"""`qconvert sweep`: build a SweepConfig, run every trial, draw the table and the recommendation."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from qconvert import choices
from qconvert.cli._common import ProgressView, err, out, print_table, summary_line
from qconvert.cli.options import (
    CONFIDENCE,
    FORCE_OUT_DIR,
    IMAGE_OPTIONS,
    LATENCY_BATCH,
    OPSET,
    SAMPLES,
    TARGET,
    TARGET_OPTIONS,
    TASK,
    TEXT_OPTIONS,
    CalibrationMethod,
    Opt,
    choice,
    command,
)
from qconvert.settings import EXECUTORS, SweepSettings

if TYPE_CHECKING:
    from qconvert.results import SweepResult

Executor = choice("Executor", EXECUTORS)

_STYLES = {
    "out_of_tolerance": "red",
    "error": "red",
    "not_supported": "dim",
    "passed": "green",
    "inconclusive": "yellow",
}

# In help order; each sets the SweepSettings field it names (its own, or its base export's).
OPTIONS = (
    Opt(
        "source",
        str,
        typer.Argument(
            None,
            help="file.py:factory, package.module:factory, .onnx, TorchScript or .pt2 file, or a Hugging Face "
            "model folder. Omitted: the built-in digits CNN.",
        ),
    ),
    Opt(
        "bits",
        str,
        typer.Option(
            ",".join(map(str, choices.bits())),
            "--bits",
            help="Bit widths to try, comma-separated, e.g. 16,8,4.",
        ),
    ),
    TARGET,
    Opt(
        "modes",
        str,
        typer.Option(
            None,
            "--modes",
            help=f"Modes to try at each bit width, comma-separated ({', '.join(choices.modes())}). Default: the "
            "target's default mode per bit width.",
        ),
    ),
    Opt(
        "calibration",
        str,
        typer.Option(
            None,
            "--calibration",
            help="Calibration DATA, as for `qconvert export`: .npz, .npy, a folder of them, a folder of images "
            "(see --image-size/--mean/--std/--layout), a text file (see --tokenizer), or file.py:callable.",
        ),
    ),
    Opt("calibration_method", CalibrationMethod, typer.Option("minmax", "--calibration-method")),
    SAMPLES,
    Opt(
        "data",
        str,
        typer.Option(
            None,
            "--data",
            help="Held-out validation data. Default: the built-in set, or 20% set aside from --calibration.",
        ),
    ),
    *IMAGE_OPTIONS,
    TASK,
    *TEXT_OPTIONS,
    Opt("inputs", list[str], typer.Option([], "--input", help="NAME:SHAPE[:DTYPE], once per model input.")),
    OPSET,
    Opt(
        "out_dir",
        Path,
        typer.Option(
            None, "-o", "--out", help="Output folder. Default: qconvert-out/<model>-<target>-sweep."
        ),
    ),
    Opt(
        "tolerance",
        str,
        typer.Option(
            None,
            "--tolerance",
            help="Applied at every bit width on top of its defaults, e.g. 'top1_agreement>=0.99'.",
        ),
    ),
    CONFIDENCE,
    TARGET_OPTIONS,
    LATENCY_BATCH,
    Opt(
        "workers",
        int,
        typer.Option(
            None,
            "--workers",
            min=1,
            help="Trials run at once (local executor). Default: one per core, at most 4. --workers 1 runs them "
            "one after another in this process.",
        ),
    ),
    Opt(
        "executor",
        Executor,
        typer.Option("local", "--executor", help="local worker processes, or Ray tasks."),
    ),
    Opt(
        "ray_address",
        str,
        typer.Option(
            None,
            "--ray-address",
            help="With --executor ray: the cluster, HOST:PORT. Default: RAY_ADDRESS, else the cluster `ray start` "
            "made on this machine, else a new local Ray.",
        ),
    ),
    FORCE_OUT_DIR,
)


def run_sweep(settings: SweepSettings, extras: dict[str, Any]) -> int:
    """Run every trial of the settings the options built, and draw the table."""
    from qconvert.cli.export_cmd import _quiet_torch
    from qconvert.sweep import sweep as sweep_trials

    started = time.perf_counter()
    _quiet_torch()
    with ProgressView() as progress:
        result = sweep_trials(settings, progress=progress)
    print_sweep(result)
    summary_line(result.verdict, started)
    return 0 if result.passed else 1


sweep = command(
    SweepSettings,
    OPTIONS,
    run_sweep,
    "Export at every bit width and mode, and show where quantization stops paying.",
)


def print_sweep(result: SweepResult) -> None:
    """The trials table, why a trial did not pass, notes, the recommendation and the artifacts."""
    from qconvert.sweep_report import STATUS_TEXT, cells, header

    summary = result.report
    table = Table(title=f"{summary.source} -> {summary.target}: sweep")
    widest = max((len(row.name) for row in summary.rows), default=7)
    for i, name in enumerate(header(summary)):
        table.add_column(name, justify="left" if i < 2 else "right", min_width=widest if i == 0 else None)
    for row in summary.rows:
        style = _STYLES.get(row.status, "")
        texts = cells(summary, row)
        texts[1] = STATUS_TEXT.get(row.status, row.status)  # the reason goes below the table
        table.add_row(*(Text(t, style=style if i == 1 else "") for i, t in enumerate(texts)))
    print_table(table)
    for row in summary.rows:
        if not row.reason:
            continue
        if row.status in ("out_of_tolerance", "inconclusive"):
            label = (
                "[red]out of tolerance:[/]"
                if row.status == "out_of_tolerance"
                else "[yellow]inconclusive:[/]"
            )
            err.print(f"{label} {escape(row.name)}: {escape(row.reason)}", soft_wrap=True)
        elif row.status in ("not_supported", "error"):
            what = f"{row.name} {STATUS_TEXT[row.status]}: {row.reason}"
            err.print(f"[yellow]note:[/] {escape(what)}", soft_wrap=True)
    for note in result.notes:
        err.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    out.print(f"[bold]{escape(result.recommendation.describe())}[/]", soft_wrap=True)
    out.print(f"artifacts: {escape(str(result.out_dir))} (sweep.json, sweep.png, sweep.html, trials/)")
