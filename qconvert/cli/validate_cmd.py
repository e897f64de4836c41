"""`qconvert validate CANDIDATE`: an existing model against its reference, as a release gate."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from qconvert.cli._common import (
    VERDICT_STYLES,
    ProgressView,
    json_on_stdout,
    out,
    print_table,
    print_verdict_lines,
    summary_line,
    write_json_stdout,
)
from qconvert.cli.options import CONFIDENCE, IMAGE_OPTIONS, TEXT_OPTIONS, Opt, command
from qconvert.report import interval_text, level_text, pct
from qconvert.settings import ValidateSettings

if TYPE_CHECKING:
    from qconvert.results import Collapse, CollapseFamily, Figures, Interval, ValidationReport

# In help order; each sets the ValidateSettings field it names (qconvert.settings).
OPTIONS = (
    Opt(
        "candidate",
        str,
        typer.Argument(..., help="An .onnx file, or an OUT_DIR written by `qconvert export`."),
    ),
    Opt(
        "reference",
        str,
        typer.Option(
            None,
            "--reference",
            help="The fp32 .onnx or the torch SOURCE (file.py:factory) the candidate was made from. "
            "Default with an OUT_DIR: its reference.onnx.",
        ),
    ),
    Opt(
        "data",
        str,
        typer.Option(
            None,
            "--data",
            help="Held-out inputs: .npz keyed by input name ('labels' adds accuracy), .npy, a folder of them, "
            "a folder of images (class subfolders give labels), a text file (.txt, one sample per line; see "
            "--tokenizer), or file.py:callable yielding feed dicts. Default with an OUT_DIR: the data its "
            "export validated on.",
        ),
    ),
    *IMAGE_OPTIONS,
    *TEXT_OPTIONS,
    Opt(
        "tolerance",
        str,
        typer.Option(
            None,
            "--tolerance",
            help="e.g. 'top1_agreement>=0.99,logits:max_abs<=0.5'. Overrides qconvert.toml [tolerance] or "
            "pyproject.toml [tool.qconvert.tolerance], which override the defaults for --bits.",
        ),
    ),
    CONFIDENCE,
    Opt(
        "json_out",
        Path,
        typer.Option(
            None,
            "--json",
            help="Write the full result as JSON here; '-' for stdout (then nothing else goes there).",
        ),
    ),
    Opt(
        "junit_out",
        Path,
        typer.Option(None, "--junit", help="Write JUnit XML here: one test case per output and metric."),
    ),
    Opt("html_out", Path, typer.Option(None, "--html", help="Write a self-contained HTML report here.")),
    Opt(
        "calibration_data",
        str,
        typer.Option(
            None,
            "--calibration-data",
            help="The candidate's calibration data, to warn if --data overlaps it. "
            "Default with an OUT_DIR: the calibration file in its manifest.",
        ),
    ),
    Opt(
        "metric",
        str,
        typer.Option(
            None,
            "--metric",
            help="file.py:fn, fn(outputs: dict[str, ndarray], labels: ndarray | None) -> float, higher is "
            "better; bound its drop with --tolerance 'task_drop<=X'.",
        ),
    ),
    Opt(
        "require_speedup",
        bool,
        typer.Option(
            False,
            "--require-speedup",
            help="Fail unless the candidate is faster than the reference ONNX (timed interleaved).",
        ),
    ),
    Opt(
        "bits",
        int,
        typer.Option(
            None, "--bits", help="Bit width whose default tolerances apply. Default: the manifest's, else 8."
        ),
    ),
    Opt(
        "force",
        bool,
        typer.Option(False, "--force", help="Replace existing --json / --junit / --html files."),
    ),
    Opt(
        "probes",
        list[str],
        typer.Option(
            [],
            "--probe",
            help="Extra measurement: 'collapse' counts held-out pairs the reference tells apart and the "
            "candidate no longer does, and for token models the longest copy/count sequences it still "
            "separates; bound it with --tolerance 'collapse_rate<=X'.",
        ),
    ),
    Opt(
        "probe_options",
        list[str],
        typer.Option(
            [],
            "--probe-option",
            help="KEY=VALUE for the probe: vocab, token, pad, lengths (e.g. 4,8,16), max_pairs, family_pairs, "
            "seed. Default: read from the model (vocab), pad 0.",
        ),
    ),
)


def run_validate(settings: ValidateSettings, extras: dict[str, Any]) -> int:
    """Validate on the settings the options built (`--json -`: the JSON goes to stdout), and draw it."""
    from qconvert.pipeline import validate as validate_pipeline

    started = time.perf_counter()
    to_stdout = json_on_stdout(settings.json_out)
    if to_stdout:
        settings = replace(settings, reports=replace(settings.reports, json_out=None))
    with ProgressView() as progress:
        result = validate_pipeline(settings, progress=progress)
    print_validation(result.report, settings.tolerance)
    for flag, path in (
        ("json", settings.json_out),
        ("junit", settings.junit_out),
        ("html", settings.html_out),
    ):
        if path is not None:
            out.print(f"{flag}: {escape(str(path))}")
    summary_line(result.verdict, started)
    if to_stdout:
        write_json_stdout(result.as_json())
    return 0 if result.passed else 1


validate = command(
    ValidateSettings,
    OPTIONS,
    run_validate,
    "Validate CANDIDATE against a reference on the same inputs; exit 1 when out of tolerance.",
)


def print_figures(figures: Figures, level: str) -> None:
    """Each output's figures and the accuracy, every one with its interval."""
    intervals = figures.intervals
    for name, m in figures.outputs.items():
        ivs = intervals.get(name, {})

        def shown(metric: str, text: str, fmt: Any = None, ivs: dict[str, Interval] = ivs) -> str:
            return f"{text} {interval_text(ivs.get(metric), fmt)}".rstrip()

        measured = [
            shown("cosine", f"cosine {m['cosine']:.5f}"),
            shown("cosine_min", f"worst {m['cosine_min']:.4f}"),
            shown("sqnr_db", f"SQNR {m['sqnr_db']:.1f} dB", lambda x: f"{x:.1f}"),
            shown("max_abs", f"max_abs {m['max_abs']:.3g}"),
            shown("rel_error", f"rel_error {m['rel_error']:.3g}"),
        ]
        measured += [shown(k, f"{k} {m[k]:.3g}") for k in ("kl_div",) if k in m]
        measured += [
            shown(k, f"{k} {pct(m[k])}", pct) for k in ("top1_agreement", "top5_agreement") if k in m
        ]
        out.print(f"{escape(name)} ({level} intervals): " + ", ".join(measured), soft_wrap=True)
    acc = figures.accuracy
    if acc:
        both = acc.intervals
        ref_iv, cand_iv = (None, None) if both is None else (both.reference, both.candidate)
        reference = f"reference {pct(acc.reference)} {interval_text(ref_iv, pct)}"
        candidate = f"candidate {pct(acc.candidate)} {interval_text(cand_iv, pct)}"
        out.print(
            f"accuracy ({escape(str(acc.output))}): {reference.rstrip()}, {candidate.rstrip()}",
            soft_wrap=True,
        )


def print_validation(report: ValidationReport, tolerance: str | None) -> None:
    """The checks table, each output's figures, accuracy, the probe and task metric, notes, failures."""
    layers = [f"the defaults for --bits {report.bits}"]
    layers += [str(report.tolerance_source)] if report.tolerance_source else []
    layers += ["--tolerance"] if tolerance else []
    table = Table(
        title=f"{report.model} vs {report.reference} ({report.samples} samples)",
        caption="bounds: " + " < ".join(layers),  # a stray qconvert.toml is never invisible
    )
    level = level_text(report)
    columns = (("output", "left"), ("metric", "left"), ("measured", "right"), (f"{level} interval", "right"))
    for col, justify in (*columns, ("needs", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    table.add_column("")
    for check in report.figures.checks:
        table.add_row(
            Text(check.output),
            Text(check.metric),
            Text(f"{check.measured:.6g}"),
            Text(interval_text(check.interval, beyond="beyond") or "-"),
            Text(check.bound),
            Text(
                "ok" if check.verdict == "passed" else check.verdict.upper(),
                style=VERDICT_STYLES[check.verdict],
            ),
        )
    print_table(table)
    print_figures(report.figures, level)
    if report.collapse:
        print_collapse(report.collapse)
    task = report.task
    if task:
        out.print(
            f"task metric {escape(task.metric)}: reference {task.reference:.6g}, "
            f"candidate {task.candidate:.6g}, drop {task.drop:.6g}"
        )
    print_verdict_lines(report)


def print_collapse(collapse: Collapse) -> None:
    """The collapse probe: the held-out rate per output, and a table of the sequence families."""
    for name, o in collapse.outputs.items():
        rule = "top-1" if o.rule == "top1" else f"distance > {o.threshold:.3g}"
        out.print(
            f"collapse ({escape(name)}, separated = {rule}): {o.collapsed} of {o.pairs} held-out pairs "
            f"the reference separates are no longer separated ({100 * o.rate:.2f}%)"
        )
    families = collapse.families
    if not families:
        out.print(f"collapse families: none ({escape(collapse.families_skipped or '')})")
        return
    table = Table(title="collapse probe: pairs separated, fp32 -> candidate (red: length lost)")
    table.add_column("length", justify="right")
    for name in families:
        table.add_column(name, justify="right")
    for n in sorted({n for fam in families.values() for n in fam.lengths}):
        table.add_row(str(n), *(_family_cell(fam, n) for fam in families.values()))
    kept = [fam.kept_longest for fam in families.values()]
    table.add_row(Text("kept up to", style="bold"), *("-" if k is None else str(k) for k in kept))
    print_table(table)


def _family_cell(family: CollapseFamily, length: int) -> Text:
    if length not in family.lengths:
        return Text("")
    i = family.lengths.index(length)
    ref, cand = family.reference_rate[i], family.candidate_rate[i]
    style = "bold red" if length in family.lost else ""
    return Text(f"{100 * ref:.0f}% -> {100 * cand:.0f}%", style=style)
