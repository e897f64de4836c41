"""`qconvert sweep`: build a SweepConfig, run every trial, draw the table and the recommendation."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from qconvert import choices
from qconvert.cli._common import ProgressView, err, out, print_table, summary_line
from qconvert.cli.options import (
    CONFIDENCE_OPTION,
    IMAGE_SIZE_OPTION,
    LAYOUT_OPTION,
    MAX_LENGTH_OPTION,
    MEAN_OPTION,
    PADDING_OPTION,
    STD_OPTION,
    TASK_OPTION,
    TOKENIZER_OPTION,
    TRUNCATION_OPTION,
    TextPadding,
    data_options,
    parse_target_option,
)
from qconvert.config import (
    DEFAULT_LATENCY_BATCH,
    DEFAULT_OPSET,
    DEFAULT_TARGET,
    EXECUTORS,
    InputSpec,
    SweepConfig,
)

if TYPE_CHECKING:
    from qconvert.results import SweepResult

TargetName = Enum("TargetName", {n: n for n in choices.targets()}, type=str)  # type: ignore[misc]
CalibrationMethod = Enum("CalibrationMethod", {m: m for m in choices.calibration_methods()}, type=str)  # type: ignore[misc]
Executor = Enum("Executor", {e: e for e in EXECUTORS}, type=str)  # type: ignore[misc]

_STYLES = {
    "out_of_tolerance": "red",
    "error": "red",
    "not_supported": "dim",
    "passed": "green",
    "inconclusive": "yellow",
}


SOURCE_ARGUMENT = typer.Argument(
    None,
    help="file.py:factory, package.module:factory, .onnx, TorchScript or .pt2 file, or a Hugging Face "
    "model folder. Omitted: the built-in digits CNN.",
)
BITS_OPTION = typer.Option(
    ",".join(map(str, choices.bits())), "--bits", help="Bit widths to try, comma-separated, e.g. 16,8,4."
)
TARGET_OPTION = typer.Option(
    DEFAULT_TARGET, "--target", case_sensitive=False, help="Hardware target (any case: TensorRT)."
)
MODES_OPTION = typer.Option(
    None,
    "--modes",
    help=f"Modes to try at each bit width, comma-separated ({', '.join(choices.modes())}). Default: the target's "
    "default mode per bit width.",
)
CALIBRATION_OPTION = typer.Option(
    None,
    "--calibration",
    help="Calibration DATA, as for `qconvert export`: .npz, .npy, a folder of them, a folder of images "
    "(see --image-size/--mean/--std/--layout), a text file (see --tokenizer), or file.py:callable.",
)
CALIBRATION_METHOD_OPTION = typer.Option("minmax", "--calibration-method")
SAMPLES_OPTION = typer.Option(None, "--samples", min=1, help="Use the first N calibration samples.")
DATA_OPTION = typer.Option(
    None,
    "--data",
    help="Held-out validation data. Default: the built-in set, or 20% set aside from --calibration.",
)
INPUTS_OPTION = typer.Option([], "--input", help="NAME:SHAPE[:DTYPE], once per model input.")
OPSET_OPTION = typer.Option(DEFAULT_OPSET, "--opset", help="ONNX opset to export with.")
OUT_DIR_OPTION = typer.Option(
    None, "-o", "--out", help="Output folder. Default: qconvert-out/<model>-<target>-sweep."
)
TOLERANCE_OPTION = typer.Option(
    None,
    "--tolerance",
    help="Applied at every bit width on top of its defaults, e.g. 'top1_agreement>=0.99'.",
)
TARGET_OPTIONS_OPTION = typer.Option(
    [], "--target-option", help="NAME=VALUE, a target setting (see `qconvert targets`). Repeatable."
)
LATENCY_BATCH_OPTION = typer.Option(
    DEFAULT_LATENCY_BATCH, "--latency-batch", min=1, help="Batch size the latency is measured at."
)
WORKERS_OPTION = typer.Option(
    None,
    "--workers",
    min=1,
    help="Trials run at once (local executor). Default: one per core, at most 4. --workers 1 runs them "
    "one after another in this process.",
)
EXECUTOR_OPTION = typer.Option("local", "--executor", help="local worker processes, or Ray tasks.")
RAY_ADDRESS_OPTION = typer.Option(
    None,
    "--ray-address",
    help="With --executor ray: the cluster, HOST:PORT. Default: RAY_ADDRESS, else the cluster `ray start` made on this machine, else a new local Ray.",
)
FORCE_OPTION = typer.Option(False, "--force", help="Replace an existing output folder.")


def sweep(
    source: str = SOURCE_ARGUMENT,
    bits: str = BITS_OPTION,
    target: TargetName = TARGET_OPTION,
    modes: str = MODES_OPTION,
    calibration: str = CALIBRATION_OPTION,
    calibration_method: CalibrationMethod = CALIBRATION_METHOD_OPTION,
    samples: int = SAMPLES_OPTION,
    data: str = DATA_OPTION,
    image_size: str = IMAGE_SIZE_OPTION,
    mean: str = MEAN_OPTION,
    std: str = STD_OPTION,
    layout: str = LAYOUT_OPTION,
    task: str = TASK_OPTION,
    tokenizer: str = TOKENIZER_OPTION,
    max_length: int = MAX_LENGTH_OPTION,
    padding: TextPadding = PADDING_OPTION,
    truncation: bool = TRUNCATION_OPTION,
    inputs: list[str] = INPUTS_OPTION,
    opset: int = OPSET_OPTION,
    out_dir: Path = OUT_DIR_OPTION,
    tolerance: str = TOLERANCE_OPTION,
    confidence: float = CONFIDENCE_OPTION,
    target_options: list[str] = TARGET_OPTIONS_OPTION,
    latency_batch: int = LATENCY_BATCH_OPTION,
    workers: int = WORKERS_OPTION,
    executor: Executor = EXECUTOR_OPTION,
    ray_address: str = RAY_ADDRESS_OPTION,
    force: bool = FORCE_OPTION,
) -> int:
    """Export at every bit width and mode, and show where quantization stops paying."""
    from qconvert.cli.export_cmd import _quiet_torch
    from qconvert.sweep import bits_from_text, modes_from_text
    from qconvert.sweep import sweep as run_sweep

    started = time.perf_counter()
    config = SweepConfig(
        source=source,
        bits=bits_from_text(bits),
        target=target.value,
        modes=None if modes is None else modes_from_text(modes),
        calibration=calibration,
        calibration_method=calibration_method.value,
        samples=samples,
        data=data,
        data_options=data_options(image_size, mean, std, layout, tokenizer, max_length, padding, truncation),
        inputs=tuple(InputSpec.parse(s) for s in inputs),
        task=task,
        opset=opset,
        tolerance=tolerance,
        confidence=confidence,
        target_options=tuple(parse_target_option(t) for t in target_options),
        out_dir=out_dir,
        force=force,
        workers=workers,
        executor=executor.value,
        ray_address=ray_address,
        latency_batch=latency_batch,
    )
    _quiet_torch()
    with ProgressView() as progress:
        result = run_sweep(config, progress=progress)
    print_sweep(result)
    summary_line(result.verdict, started)
    return 0 if result.passed else 1


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
