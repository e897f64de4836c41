"""Renders results that the pipeline measured, read from the typed records (results.Report,
results.ValidationReport and their Figures / CheckRecord). Computes nothing new."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from qconvert.results import Report
from qconvert.tolerance import confidence_text as config_confidence_text

if TYPE_CHECKING:
    from qconvert.results import CheckRecord, Interval, ValidationReport

PASSED, FAILED, INCONCLUSIVE = "passed", "failed", "inconclusive"  # validation.intervals' verdicts
BEYOND = "share-beyond"  # an interval on the share of inputs beyond a limit (validation.intervals)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _five(x: float) -> str:
    return f"{x:.5f}"


def _one(x: float) -> str:
    return f"{x:.1f}"


def quantized_label(report: Report) -> str:
    return bits_label(report.bits, report.mode)


def bits_label(bits: int, mode: str | None) -> str:
    """How a (bits, mode) is called in a table: int8, int4, fp16, bf16, a16w8, ..."""
    if bits == 16 and mode in ("bf16", "static"):  # not fp16: bf16, or A16W8
        return "bf16" if mode == "bf16" else "a16w8"
    return {16: "fp16", 8: "int8", 4: "int4"}.get(bits, f"{bits}-bit")


def random_data_warning(report: Report) -> str | None:
    """The line to show in bold when `--calibration random` was used (report.json: data), else None."""
    data = report.data
    if not data.calibration_random:
        return None
    how = (
        "calibrated and validated on random inputs"
        if data.validation_random
        else "calibrated on random inputs"
    )
    return f"Accuracy figures are not meaningful: this model was {how} (--calibration random), not real data."


def level_text(report: Report | ValidationReport) -> str:
    """The confidence level of the report's intervals, e.g. '95%' ('' in files from before them)."""
    return confidence_text(report.figures.confidence)


def confidence_text(level: float | None) -> str:
    """A confidence level as text, e.g. 0.95 -> '95%' (None -> '')."""
    return config_confidence_text(level) if level else ""


def figure_text(x: float, digits: int = 4, near_one: int = 1) -> str:
    """A figure to `digits` significant digits; near 1 (a cosine, an agreement) to `near_one` digits
    past those that tell it from 1 (0.999978, not 1); inf as ∞."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    if 0.9 <= abs(x) < 1.0:
        decimals = near_one - math.floor(math.log10(1.0 - abs(x)))
        return f"{x:.{decimals}f}".rstrip("0")
    return f"{x:.{digits}g}"


def _share(x: float) -> str:
    return f"{100 * x:.2g}%"


def _interval_end(x: float) -> str:
    """An interval's end: one digit more than a figure near 1 (0.9398, not 0.94, for an end that
    decides a verdict against 0.94)."""
    return figure_text(x, near_one=2)


def interval_text(
    interval: Interval | None, fmt: Callable[[float], str] | None = None, beyond: str = "worse"
) -> str:
    """`[low, high]`, each end by `fmt` (default: one digit past what tells a figure near 1 from 1);
    for an interval on the share of inputs beyond a limit, that share's upper end: `<=4.1% worse`
    under a worst figure, `<=4.1% beyond` (`beyond`) for a check's bound; '' without an interval."""
    if not interval:
        return ""
    if interval.method == BEYOND:
        return f"<={_share(interval.high)} {beyond}"
    fmt = fmt or _interval_end
    return f"[{fmt(interval.low)}, {fmt(interval.high)}]"


def _with_interval(value: str, interval: str) -> str:
    """A figure with its interval on the line below (a table cell stays narrow enough for 80 columns)."""
    return f"{value}\n{interval}" if interval else value


def check_line(check: CheckRecord, level: str = "") -> str:
    """One check with its interval and, where it did not pass, what would settle it: for a FAILED
    check the tolerance that would pass, for an INCONCLUSIVE one the held-out samples that would
    decide it."""
    iv = check.interval
    verdict = check.verdict
    head = f"{check.output}: {check.metric} = {check.measured:.6g}"
    if verdict == INCONCLUSIVE and iv:
        if iv.method == BEYOND:
            text = (
                f"{head} holds on all {iv.samples} samples, but at {level} confidence up to "
                f"{_share(iv.high)} of inputs could break {check.bound}"
            )
        else:
            text = f"{head}, {level} interval {interval_text(iv)} on {iv.samples} samples, straddles {check.bound}"
        settle = check.samples_to_settle
        if settle:
            return f"{text}; about {settle} held-out samples in all would settle it"
        return f"{text}; no number of samples settles it: the measured value sits on the bound"
    if iv and iv.method == BEYOND:
        head += (
            f" (beyond the bound on {_share(iv.low)} to {_share(iv.high)} of inputs, {level} interval "
            f"from {iv.samples} samples)"
        )
    elif iv:
        head += f" ({level} interval {interval_text(iv)}, {iv.samples} samples)"
    text = f"{head}, needs {check.bound}"
    # never for speedup: a gate is not told to accept a slowdown
    if verdict == FAILED and check.needed:
        text += f" (would pass with --tolerance '{check.needed}')"
    return f"{text}: {check.hint}" if check.hint else text


def inconclusive_lines(report: Report | ValidationReport) -> list[str]:
    """One line per INCONCLUSIVE check, then what would settle the whole verdict."""
    level = level_text(report)
    lines = [check_line(c, level) for c in report.figures.checks if c.verdict == INCONCLUSIVE]
    if lines:
        lines.append(settle_advice(report))
    return lines


def settle_advice(report: Report | ValidationReport) -> str:
    """For an INCONCLUSIVE verdict: how many held-out samples would settle it."""
    figures = report.figures
    have, settle = figures.samples, figures.samples_to_settle
    head = (
        f"{have} held-out samples cannot show at {level_text(report)} confidence whether the model is "
        "within tolerance"
        + (" (no model could pass on so few, however accurate)" if figures.data_limited else "")
    )
    if not settle:
        return f"{head}; more samples will not settle a check whose measured value sits on its bound"
    return (
        f"{head}; about {settle} in all ({settle - have} more) would settle it if the figures hold: give "
        "them with --data"
    )


def summary_rows(report: Report) -> list[tuple[str, str, str, str]]:
    """Rows of (what, fp32, quantized, change) for the closing table of `qconvert export`; each figure
    with its confidence interval on the line below (report.json: validation.intervals)."""
    rows: list[tuple[str, str, str, str]] = []
    acc = report.accuracy
    if acc:
        change_pt = -100 * acc.drop + 0.0  # + 0.0 turns -0.0 into 0.0
        acc_ivs = acc.intervals
        drop = None if acc_ivs is None else acc_ivs.drop  # the change is minus the drop, turned round
        change = f"[{-100 * drop.high + 0.0:+.2f}, {-100 * drop.low + 0.0:+.2f}]" if drop else ""
        rows.append(
            (
                f"accuracy ({acc.samples} held-out, labels)",
                _with_interval(
                    pct(acc.reference), interval_text(None if acc_ivs is None else acc_ivs.reference, pct)
                ),
                _with_interval(
                    pct(acc.model), interval_text(None if acc_ivs is None else acc_ivs.model, pct)
                ),
                _with_interval(f"{change_pt:+.2f} pt", change),
            )
        )
    intervals = report.figures.intervals
    for name, m in report.figures.outputs.items():
        ivs = intervals.get(name, {})

        def cell(
            text: str, *metrics: str, fmt: Callable[[float], str], ivs: dict[str, Interval] = ivs
        ) -> str:
            """The figures, and their intervals on the line below (`a / b` for two figures)."""
            below = " / ".join(interval_text(ivs.get(k), fmt) or "-" for k in metrics) if ivs else ""
            return _with_interval(text, below)

        if "top1_agreement" in m:
            top1 = cell(pct(m["top1_agreement"]), "top1_agreement", fmt=pct)
            rows.append((f"top-1 agreement with fp32 ({name})", "", top1, ""))
        if "embedding_cosine" in m:  # text encoders: the mean-pooled sentence embedding
            pooled = f"{m['embedding_cosine']:.5f} / {m['embedding_cosine_min']:.4f}"
            pooled = cell(pooled, "embedding_cosine", "embedding_cosine_min", fmt=_five)
            rows.append((f"embedding cosine, mean / worst ({name})", "", pooled, ""))
        if "next_token_agreement" in m:  # text decoders: argmax at the last real token
            token = cell(pct(m["next_token_agreement"]), "next_token_agreement", fmt=pct)
            rows.append((f"next-token agreement ({name})", "", token, ""))
        cosines = cell(f"{m['cosine']:.5f} / {m['cosine_min']:.4f}", "cosine", "cosine_min", fmt=_five)
        rows.append((f"cosine, mean / worst ({name})", "", cosines, ""))
        errors = cell(f"{m['sqnr_db']:.1f} dB / {m['max_abs']:.3g}", "sqnr_db", "max_abs", fmt=_one)
        rows.append((f"SQNR / max abs error ({name})", "", errors, ""))
    size = report.size
    rows.append(("size", human_bytes(size.fp32_bytes), human_bytes(size.model_bytes), f"{size.ratio:.2f}x"))
    lat = report.latency
    rows.append(
        (
            f"latency p50 (batch {lat.batch}, {lat.provider.replace('ExecutionProvider', '')})",
            f"{lat.fp32.p50_ms:.3f} ms",
            f"{lat.model.p50_ms:.3f} ms",
            f"{lat.ratio_p50:.2f}x",
        )
    )
    return rows


def failure_lines(report: Report | ValidationReport) -> list[str]:
    """One line per failed check, with its interval and the tolerance that would have passed; then,
    for an export where per-layer sensitivity ran, the worst layers and what --auto did or could do."""
    level = level_text(report)
    lines = [check_line(c, level) for c in report.figures.checks if c.verdict == FAILED]
    return lines + (blame_lines(report) if isinstance(report, Report) else [])


def failure_tag(report: Report | ValidationReport) -> tuple[str, str]:
    """What the CLI puts before `failure_lines`, and its colour: "out of tolerance" only where a check
    FAILED. An INCONCLUSIVE run whose measured figures miss the tolerance still gets the worst layers
    and the --auto hint, but it is not out of tolerance (its intervals straddle the bounds)."""
    if report.verdict == FAILED:
        return "out of tolerance", "red"
    return "below the tolerance as measured", "yellow"


def _db(x: float | str | None) -> str:
    if x is None:
        return "-"
    return f"{x} dB" if isinstance(x, str) else f"{x:.1f} dB"


def sensitivity_rows(report: Report, limit: int = 8) -> list[tuple[str, ...]]:
    """The per-layer ranking, worst first: (rank, node, op, cumulative, isolated, isolated at the
    model's outputs). Empty when sensitivity did not run or is not available."""
    layers = () if report.sensitivity is None else report.sensitivity.layers
    return [
        (
            str(i),
            layer.node,
            layer.op_type,
            _db(layer.cumulative_sqnr_db),
            _db(layer.isolated_sqnr_db),
            _db(layer.isolated_model_output_sqnr_db),
        )
        for i, layer in enumerate(layers[:limit], start=1)
    ]


def blame_lines(report: Report) -> list[str]:
    """For a run that did not pass: the worst layers, and what --auto did or could do. Nothing where
    only more held-out samples could decide it (no layer is to blame)."""
    if report.passed or report.figures.data_limited:
        return []
    sens = report.sensitivity
    if not sens:
        return []
    if not sens.available:
        return [] if report.fallback else [str(sens.reason)]  # with --auto, a note says it
    worst = sens.layers[:3]
    lines = []
    if worst:
        lines.append(
            "worst layers (only that node quantized, SQNR at the model's outputs): "
            + ", ".join(f"{w.node} ({w.op_type}, {_db(w.isolated_model_output_sqnr_db)})" for w in worst)
            + "; full ranking in report.json: sensitivity"
        )
    fallback = report.fallback
    if fallback is None:
        lines.append(
            "rerun with --auto to keep the most sensitive nodes in float until the tolerance holds "
            "(--auto-budget N caps how many)"
        )
    elif fallback.failed_search:
        kept = fallback.kept_float or ()
        lines.append(
            f"--auto failed: {fallback.reason}"
            + (f" (tried keeping in float: {', '.join(kept)})" if kept else "")
        )
    return lines
