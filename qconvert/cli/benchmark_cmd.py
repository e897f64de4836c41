"""`qconvert benchmark MODEL [--vs OTHER]`: latency, throughput, peak memory and size, side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from qconvert.cli._common import err, json_on_stdout, out, print_table, write_json_stdout
from qconvert.cli.options import Opt, command
from qconvert.report import human_bytes
from qconvert.settings import DEFAULT_BENCHMARK_BATCH, DEFAULT_BENCHMARK_REPEATS, BenchmarkSettings

if TYPE_CHECKING:
    from qconvert.benchmark import BenchmarkResult

# In help order; each sets the BenchmarkSettings field it names, --json and --force set none.
OPTIONS = (
    Opt(
        "model",
        Path,
        typer.Argument(
            ...,
            help="An .onnx file, or a folder written by `qconvert export` (alone: its model.onnx against its "
            "reference.onnx).",
        ),
    ),
    Opt(
        "vs",
        Path,
        typer.Option(None, "--vs", help="Compare against this .onnx file or OUT_DIR (its model.onnx)."),
    ),
    Opt(
        "data",
        str,
        typer.Option(
            None,
            "--data",
            help="Inputs (.npz keyed by input name, .npy, or a folder). Default: seeded random.",
        ),
    ),
    Opt("batch", int, typer.Option(DEFAULT_BENCHMARK_BATCH, "--batch", min=1, help="Samples per run.")),
    Opt(
        "repeats",
        int,
        typer.Option(
            DEFAULT_BENCHMARK_REPEATS, "--repeats", min=1, help="Timed runs per model (after 5 warm-up runs)."
        ),
    ),
    Opt(
        "threads",
        int,
        typer.Option(None, "--threads", min=1, help="onnxruntime intra-op threads. Default: onnxruntime's."),
    ),
    Opt(
        None,
        Path,
        typer.Option(
            None,
            "--json",
            help="Also write the figures to this JSON file; '-' for stdout (then only the JSON).",
        ),
        param="json_path",
    ),
    Opt(None, bool, typer.Option(False, "--force", help="Replace an existing --json file."), param="force"),
)


def run_benchmark(settings: BenchmarkSettings, extras: dict[str, Any]) -> int:
    """Measure the settings the options built; draw the table, and write --json."""
    from qconvert.artifacts import check_output_file, write_text_atomic
    from qconvert.benchmark import benchmark_models

    json_path, force = extras["json_path"], extras["force"]
    inputs = [p for p in (settings.model, settings.vs, Path(settings.data) if settings.data else None) if p]
    to_stdout = json_on_stdout(json_path)
    if to_stdout:
        json_path = None
    if json_path is not None:  # refuse before measuring
        check_output_file(json_path, force, inputs, flag="--json")
    with err.status("benchmarking") as status:
        result = benchmark_models(settings, progress=lambda message: status.update(escape(message)))
    print_benchmark(result)
    if json_path is not None:
        write_text_atomic(
            json_path, json.dumps(result.as_json(), indent=2) + "\n", force, inputs, flag="--json"
        )
        out.print(f"json: {escape(str(json_path))}")
    if to_stdout:
        write_json_stdout(result.as_json())
    return 0


benchmark = command(
    BenchmarkSettings,
    OPTIONS,
    run_benchmark,
    "Latency p50/p90, throughput, peak memory and file size of MODEL (and the model it is compared with).",
)


def print_benchmark(result: BenchmarkResult) -> None:
    """One column per model, one row per figure, then how each figure was measured and the verdict."""
    first = result.models[0]
    baseline = result.models[1] if len(result.models) > 1 else None
    # one column per model, one row per figure: it fits 80 columns however long the paths are
    table = Table(
        title=f"benchmark, batch {result.batch}, {result.repeats} runs per model",
        caption=None if baseline is None else f"p50 ratio: against {baseline.label}",
    )
    table.add_column("")
    for i, m in enumerate(result.models):
        table.add_column(f"{chr(ord('A') + i)}: {Path(m.label).name}", justify="right")
    rows: dict[str, list[str]] = {
        name: [] for name in ("precision", "provider", "size", "p50 ms", "p90 ms", "samples/s", "peak memory")
    }
    if baseline is not None:
        rows["p50 ratio"] = []
    for m in result.models:
        rows["precision"].append(m.precision)
        rows["provider"].append(m.provider.replace("ExecutionProvider", ""))
        rows["size"].append(human_bytes(m.size_bytes))
        rows["p50 ms"].append(f"{m.latency.p50_ms:.3f}")
        rows["p90 ms"].append(f"{m.latency.p90_ms:.3f}")
        rows["samples/s"].append(f"{m.throughput:,.0f}")
        rows["peak memory"].append(
            "" if m.peak_memory_bytes is None else f"+{human_bytes(m.peak_memory_bytes)}"
        )
        if baseline is not None:
            rows["p50 ratio"].append(f"{m.latency.p50_ms / baseline.latency.p50_ms:.2f}x")
    for name, cells in rows.items():
        table.add_row(name, *(Text(cell) for cell in cells))
    print_table(table)
    for i, m in enumerate(result.models):
        out.print(f"{chr(ord('A') + i)}: {escape(m.label)}", soft_wrap=True)
    shapes = ", ".join(f"{k} {v}" for k, v in result.input_shapes.items())
    out.print(f"inputs: {escape(result.inputs_description)}; {escape(shapes)}", soft_wrap=True)
    out.print(f"latency: {escape(result.latency_method)}; samples/s = batch / p50", soft_wrap=True)
    if result.memory_method:
        out.print(
            f"peak memory: {escape(result.memory_method)} "
            f"(baseline {human_bytes(result.memory_baseline_rss_bytes or 0)})",
            soft_wrap=True,
        )
    for note in result.notes:
        err.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    if result.slower:
        out.print(f"[bold yellow]slower:[/] {escape(result.slower)}", soft_wrap=True)
    elif baseline is not None:
        out.print(
            f"{escape(first.label)} is not slower than {escape(baseline.label)} "
            f"({first.latency.p50_ms / baseline.latency.p50_ms:.2f}x p50)"
        )
