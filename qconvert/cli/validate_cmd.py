"""`qconvert validate CANDIDATE`: an existing model against its reference, as a release gate."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from qconvert.cli._common import ProgressView, err, out, summary_line
from qconvert.config import ValidateConfig
from qconvert.report import failure_lines


def validate(
    candidate: str = typer.Argument(..., help="An .onnx file, or an OUT_DIR written by `qconvert export`."),
    reference: str = typer.Option(
        None,
        "--reference",
        help="The fp32 .onnx or the torch SOURCE (file.py:factory) the candidate was made from. "
        "Default with an OUT_DIR: its reference.onnx.",
    ),
    data: str = typer.Option(
        None,
        "--data",
        help="Held-out inputs (.npz keyed by input name; 'labels' adds accuracy). "
        "Default with an OUT_DIR: the data its export validated on.",
    ),
    tolerance: str = typer.Option(
        None,
        "--tolerance",
        help="e.g. 'top1_agreement>=0.99,logits:max_abs<=0.5'. Overrides qconvert.toml [tolerance] or "
        "pyproject.toml [tool.qconvert.tolerance], which override the defaults for --bits.",
    ),
    json_out: Path = typer.Option(None, "--json", help="Write the full result as JSON here."),
    junit_out: Path = typer.Option(
        None, "--junit", help="Write JUnit XML here: one test case per output and metric."
    ),
    html_out: Path = typer.Option(None, "--html", help="Write a self-contained HTML report here."),
    calibration_data: str = typer.Option(
        None,
        "--calibration-data",
        help="The candidate's calibration data, to warn if --data overlaps it. "
        "Default with an OUT_DIR: the calibration file in its manifest.",
    ),
    metric: str = typer.Option(
        None,
        "--metric",
        help="file.py:fn, fn(outputs: dict[str, ndarray], labels: ndarray | None) -> float, higher is "
        "better; bound its drop with --tolerance 'task_drop<=X'.",
    ),
    require_speedup: bool = typer.Option(
        False,
        "--require-speedup",
        help="Fail unless the candidate is faster than the reference ONNX (timed interleaved).",
    ),
    bits: int = typer.Option(
        None, "--bits", help="Bit width whose default tolerances apply. Default: the manifest's, else 8."
    ),
    force: bool = typer.Option(False, "--force", help="Replace existing --json / --junit / --html files."),
) -> int:
    """Validate CANDIDATE against a reference on the same inputs; exit 1 when out of tolerance."""
    from qconvert.pipeline import validate as run_validate

    started = time.perf_counter()
    config = ValidateConfig(
        candidate=candidate,
        reference=reference,
        data=data,
        tolerance=tolerance,
        json_out=json_out,
        junit_out=junit_out,
        html_out=html_out,
        calibration_data=calibration_data,
        metric=metric,
        require_speedup=require_speedup,
        bits=bits,
        force=force,
    )
    with ProgressView() as progress:
        result = run_validate(config, progress=progress)
    report = result.as_json()
    table = Table(title=f"{report['model']} vs {report['reference']} ({report['samples']} samples)")
    for col, justify in (("output", "left"), ("metric", "left"), ("measured", "right"), ("needs", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    table.add_column("")
    for check in report["validation"]["checks"]:
        table.add_row(
            Text(check["output"]),
            Text(check["metric"]),
            Text(f"{check['measured']:.6g}"),
            Text(check["bound"]),
            Text("ok", style="green") if check["passed"] else Text("FAILED", style="bold red"),
        )
    out.print(table)
    for name, m in report["validation"]["outputs"].items():
        measured = [
            f"cosine {m['cosine']:.5f} (worst {m['cosine_min']:.4f})",
            f"SQNR {m['sqnr_db']:.1f} dB",
            f"max_abs {m['max_abs']:.3g}",
            f"rel_error {m['rel_error']:.3g}",
        ]
        measured += [f"{k} {m[k]:.3g}" for k in ("kl_div",) if k in m]
        measured += [f"{k} {100 * m[k]:.2f}%" for k in ("top1_agreement", "top5_agreement") if k in m]
        out.print(f"{escape(name)}: " + ", ".join(measured))
    acc = report["validation"]["accuracy"]
    if acc:
        out.print(
            f"accuracy ({escape(acc['output'])}): reference {100 * acc['reference']:.2f}%, "
            f"candidate {100 * acc['candidate']:.2f}%"
        )
    task = report["task"]
    if task:
        out.print(
            f"task metric {escape(task['metric'])}: reference {task['reference']:.6g}, "
            f"candidate {task['candidate']:.6g}, drop {task['drop']:.6g}"
        )
    for note in report["notes"]:
        err.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    for line in failure_lines(report):
        err.print(f"[red]out of tolerance:[/] {escape(line)}", soft_wrap=True)
    for flag, path in (("json", json_out), ("junit", junit_out), ("html", html_out)):
        if path is not None:
            out.print(f"{flag}: {escape(str(path))}")
    summary_line(result.passed, started)
    return 0 if result.passed else 1
