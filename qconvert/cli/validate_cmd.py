"""`qconvert validate CANDIDATE`: an existing model against its reference, as a release gate."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from qconvert.cli._common import (
    VERDICT_STYLES,
    ProgressView,
    err,
    json_on_stdout,
    out,
    print_table,
    summary_line,
    write_json_stdout,
)
from qconvert.cli.options import (
    CONFIDENCE_OPTION,
    IMAGE_SIZE_OPTION,
    LAYOUT_OPTION,
    MAX_LENGTH_OPTION,
    MEAN_OPTION,
    PADDING_OPTION,
    STD_OPTION,
    TOKENIZER_OPTION,
    TRUNCATION_OPTION,
    TextPadding,
    data_options,
)
from qconvert.config import ValidateConfig
from qconvert.report import failure_lines, inconclusive_lines, interval_text, level_text, pct

if TYPE_CHECKING:
    from qconvert.results import Collapse, CollapseFamily, Figures, Interval, ValidationReport

CANDIDATE_ARGUMENT = typer.Argument(..., help="An .onnx file, or an OUT_DIR written by `qconvert export`.")
REFERENCE_OPTION = typer.Option(
    None,
    "--reference",
    help="The fp32 .onnx or the torch SOURCE (file.py:factory) the candidate was made from. "
    "Default with an OUT_DIR: its reference.onnx.",
)
DATA_OPTION = typer.Option(
    None,
    "--data",
    help="Held-out inputs: .npz keyed by input name ('labels' adds accuracy), .npy, a folder of them, "
    "a folder of images (class subfolders give labels), a text file (.txt, one sample per line; see "
    "--tokenizer), or file.py:callable yielding feed dicts. Default with an OUT_DIR: the data its "
    "export validated on.",
)
TOLERANCE_OPTION = typer.Option(
    None,
    "--tolerance",
    help="e.g. 'top1_agreement>=0.99,logits:max_abs<=0.5'. Overrides qconvert.toml [tolerance] or "
    "pyproject.toml [tool.qconvert.tolerance], which override the defaults for --bits.",
)
JSON_OUT_OPTION = typer.Option(
    None,
    "--json",
    help="Write the full result as JSON here; '-' for stdout (then nothing else goes there).",
)
JUNIT_OUT_OPTION = typer.Option(
    None, "--junit", help="Write JUnit XML here: one test case per output and metric."
)
HTML_OUT_OPTION = typer.Option(None, "--html", help="Write a self-contained HTML report here.")
CALIBRATION_DATA_OPTION = typer.Option(
    None,
    "--calibration-data",
    help="The candidate's calibration data, to warn if --data overlaps it. "
    "Default with an OUT_DIR: the calibration file in its manifest.",
)
METRIC_OPTION = typer.Option(
    None,
    "--metric",
    help="file.py:fn, fn(outputs: dict[str, ndarray], labels: ndarray | None) -> float, higher is "
    "better; bound its drop with --tolerance 'task_drop<=X'.",
)
REQUIRE_SPEEDUP_OPTION = typer.Option(
    False,
    "--require-speedup",
    help="Fail unless the candidate is faster than the reference ONNX (timed interleaved).",
)
BITS_OPTION = typer.Option(
    None, "--bits", help="Bit width whose default tolerances apply. Default: the manifest's, else 8."
)
FORCE_OPTION = typer.Option(False, "--force", help="Replace existing --json / --junit / --html files.")
PROBE_OPTION = typer.Option(
    [],
    "--probe",
    help="Extra measurement: 'collapse' counts held-out pairs the reference tells apart and the "
    "candidate no longer does, and for token models the longest copy/count sequences it still "
    "separates; bound it with --tolerance 'collapse_rate<=X'.",
)
PROBE_OPTION_OPTION = typer.Option(
    [],
    "--probe-option",
    help="KEY=VALUE for the probe: vocab, token, pad, lengths (e.g. 4,8,16), max_pairs, family_pairs, "
    "seed. Default: read from the model (vocab), pad 0.",
)


def validate(
    candidate: str = CANDIDATE_ARGUMENT,
    reference: str = REFERENCE_OPTION,
    data: str = DATA_OPTION,
    image_size: str = IMAGE_SIZE_OPTION,
    mean: str = MEAN_OPTION,
    std: str = STD_OPTION,
    layout: str = LAYOUT_OPTION,
    tokenizer: str = TOKENIZER_OPTION,
    max_length: int = MAX_LENGTH_OPTION,
    padding: TextPadding = PADDING_OPTION,
    truncation: bool = TRUNCATION_OPTION,
    tolerance: str = TOLERANCE_OPTION,
    confidence: float = CONFIDENCE_OPTION,
    json_out: Path = JSON_OUT_OPTION,
    junit_out: Path = JUNIT_OUT_OPTION,
    html_out: Path = HTML_OUT_OPTION,
    calibration_data: str = CALIBRATION_DATA_OPTION,
    metric: str = METRIC_OPTION,
    require_speedup: bool = REQUIRE_SPEEDUP_OPTION,
    bits: int = BITS_OPTION,
    force: bool = FORCE_OPTION,
    probe: list[str] = PROBE_OPTION,
    probe_option: list[str] = PROBE_OPTION_OPTION,
) -> int:
    """Validate CANDIDATE against a reference on the same inputs; exit 1 when out of tolerance."""
    from qconvert.pipeline import validate as run_validate

    started = time.perf_counter()
    to_stdout = json_on_stdout(json_out)
    config = ValidateConfig(
        candidate=candidate,
        reference=reference,
        data=data,
        data_options=data_options(image_size, mean, std, layout, tokenizer, max_length, padding, truncation),
        tolerance=tolerance,
        confidence=confidence,
        json_out=None if to_stdout else json_out,
        junit_out=junit_out,
        html_out=html_out,
        calibration_data=calibration_data,
        metric=metric,
        require_speedup=require_speedup,
        bits=bits,
        force=force,
        probes=tuple(probe),
        probe_options=tuple(parse_probe_option(o) for o in probe_option),
    )
    with ProgressView() as progress:
        result = run_validate(config, progress=progress)
    print_validation(result.report, tolerance)
    for flag, path in (("json", None if to_stdout else json_out), ("junit", junit_out), ("html", html_out)):
        if path is not None:
            out.print(f"{flag}: {escape(str(path))}")
    summary_line(result.verdict, started)
    if to_stdout:
        write_json_stdout(result.as_json())
    return 0 if result.passed else 1


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
    for note in report.notes:
        err.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    for line in failure_lines(report):
        err.print(f"[red]out of tolerance:[/] {escape(line)}", soft_wrap=True)
    for line in inconclusive_lines(report):
        err.print(f"[yellow]inconclusive:[/] {escape(line)}", soft_wrap=True)


def parse_probe_option(text: str) -> tuple[str, str]:
    """`--probe-option KEY=VALUE`; the probe checks the key and the value."""
    from qconvert.errors import ConfigError

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--probe-option {text!r} is not KEY=VALUE. Example: --probe-option token=5")
    return key.strip(), value.strip()


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
