"""report.html: one self-contained page (inline CSS, inline SVG charts, no scripts, no network)
rendered from the `Report` that `pipeline.export` writes to report.json (`render_html`), or from the
`ValidationReport` of `qconvert validate --html` (`render_validation_html`, the sections both have).
Computes nothing new: every figure on the page is a figure from the record; this module only lays
them out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING, Any

from qconvert.report import (
    FAILED,
    INCONCLUSIVE,
    PASSED,
    bits_label,
    figure_text,
    human_bytes,
    interval_text,
    level_text,
    pct,
    quantized_label,
    random_data_warning,
    settle_advice,
)
from qconvert.results import LabelAccuracy

if TYPE_CHECKING:
    from qconvert.results import (
        Accuracy,
        Collapse,
        Configuration,
        Fallback,
        Figures,
        Interval,
        LayerRecord,
        Manifest,
        Report,
        Sensitivity,
        Tradeoff,
        ValidationReport,
    )

# preferred column order for per-output metrics; any other numeric metric follows
METRIC_ORDER = (
    "top1_agreement",
    "top5_agreement",
    "cosine",
    "cosine_min",
    "sqnr_db",
    "max_abs",
    "mean_abs",
    "p99_abs",
    "rel_error",
    "kl_div",
    "nonfinite",
)
VALIDATION_LABEL = "quantized vs reference"
FIDELITY_LABEL = "fp32 ONNX vs PyTorch"
CPU_KERNELS_LABEL = "quantized on this CPU's int8 kernels vs reference"
SENSITIVITY_ROWS = 30  # bars drawn in the sensitivity chart (the table lists every layer)

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 72rem; padding: 0 1rem; color: #1d2330; background: #fff; }
h1 { font-size: 1.5rem; margin-bottom: .25rem; } h2 { font-size: 1.15rem; margin-top: 2rem;
     border-bottom: 1px solid #d8dce4; padding-bottom: .25rem; }
.verdict { display: inline-block; padding: .15rem .6rem; border-radius: .3rem; font-weight: 700;
           color: #fff; }
.verdict.passed { background: #1f7a3a; } .verdict.failed { background: #b42318; }
.verdict.inconclusive { background: #b54708; }
.ci { display: block; color: #5b6475; font-size: .78rem; white-space: nowrap; }
table { border-collapse: collapse; margin: .5rem 0; font-size: .9rem; }
th, td { border: 1px solid #d8dce4; padding: .3rem .6rem; text-align: right; vertical-align: top; }
th:first-child, td:first-child, td.text, th.text { text-align: left; }
th { background: #f3f5f8; }
tr.fail td { background: #fde8e7; } tr.fail td.status { color: #b42318; font-weight: 700; }
tr.pass td.status { color: #1f7a3a; }
tr.undecided td { background: #fef0c7; } tr.undecided td.status { color: #b54708; font-weight: 700; }
.muted { color: #5b6475; font-size: .85rem; }
ul.notes li { margin: .3rem 0; }
svg { display: block; margin: .5rem 0; font-size: 11px; }
svg text { fill: #1d2330; font-family: system-ui, sans-serif; }
svg .fp32 { fill: #8a94a6; } svg .model { fill: #2f6fde; } svg .model.p90, svg .fp32.p90 { opacity: .55; }
svg .isolated, .isolated-key { fill: #d9822b; color: #b5651d; }
svg .isolated-node, .isolated-node-key { fill: #e8b04a; color: #a07010; }
svg .cumulative, .cumulative-key { fill: #7a4fd6; color: #7a4fd6; } svg .hist { fill: #2f6fde; }
svg .axis { stroke: #5b6475; stroke-width: 1; fill: none; }
pre { background: #f6f8fa; padding: .6rem; overflow-x: auto; font-size: .8rem; }
.scroll { overflow-x: auto; max-width: 100%; }
p, li, td.text { overflow-wrap: anywhere; }
#identity { margin: .2rem 0 1rem; } #identity code { background: #f6f8fa; padding: 0 .25rem; }
svg .point { fill: #2f6fde; opacity: .6; } svg .diagonal { stroke: #8a94a6; stroke-dasharray: 4 3; }
svg .line { stroke: #7a4fd6; stroke-width: 1.5; fill: none; } svg .dot { fill: #7a4fd6; }
"""
DASH = "–"  # a missing figure (None), as the page shows it

# column headers a person reads (report.json keeps its keys)
HEADERS = {
    "top1_agreement": "top-1 agreement",
    "top5_agreement": "top-5 agreement",
    "cosine": "cosine (mean)",
    "cosine_min": "cosine (worst)",
    "sqnr_db": "SQNR (dB)",
    "max_abs": "max abs error",
    "mean_abs": "mean abs error",
    "p99_abs": "p99 abs error",
    "rel_error": "relative error",
    "kl_div": "KL divergence",
    "nonfinite": "non-finite values",
    "node": "ONNX node",
    "module": "PyTorch module",
    "depth": "depth",
    "op_type": "op",
    "tensor": "tensor",
    "cumulative_sqnr_db": "SQNR in the whole model (dB)",
    "isolated_sqnr_db": "SQNR, this layer alone (dB)",
    "isolated_model_output_sqnr_db": "output SQNR, this layer alone (dB)",
}


def header(key: str) -> str:
    """`sqnr_db` -> "SQNR (dB)"; an unknown key with its underscores as spaces."""
    return HEADERS.get(key, key.replace("_", " "))


# --- formatting ----------------------------------------------------------------------------------


def _num(x: Any, digits: int = 4) -> str:
    """A number as the page shows it: `digits` significant digits, ∞ for infinity, – for None."""
    if x is None:
        return DASH
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return escape(str(x))
    if isinstance(x, int):
        return str(x)
    return figure_text(x, digits)  # cosine, agreement: the digits that tell it from 1 (0.999978, not 1)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _table(
    header: Sequence[str], rows: Sequence[Sequence[str]], attrs: str = "", row_attrs: Sequence[str] = ()
) -> str:
    """An HTML table; header and cells are already-escaped HTML. `row_attrs[i]` goes into row i's <tr>."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        extra = f" {row_attrs[i]}" if i < len(row_attrs) and row_attrs[i] else ""
        body.append(f"<tr{extra}>" + "".join(row) + "</tr>")
    table = f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    return f'<div class="scroll">{table}</div>'  # a wide table scrolls in its own box, not the page


def _td(text: str, attrs: str = "") -> str:
    return f"<td{(' ' + attrs) if attrs else ''}>{text}</td>"


def _ci(interval: Interval | None, fmt: Any = None) -> str:
    """A figure's confidence interval, as a small line under it ('' without one)."""
    text = interval_text(interval, fmt)
    return f'<span class="ci" data-field="interval">{escape(text)}</span>' if text else ""


# --- SVG -----------------------------------------------------------------------------------------


def _f(x: float) -> str:
    """A coordinate: plain decimal, parseable as a float."""
    return f"{x:.2f}"


def _bars_svg(rows: Sequence[tuple[str, Sequence[tuple[float, str, str]]]], chart_id: str, title: str) -> str:
    """Horizontal grouped bars. rows: (label, [(value, css class, value text), ...]). Values may be
    negative (bars grow from a zero line) or infinite (drawn at full length, labelled ∞)."""
    finite = [v for _, series in rows for v, _, _ in series if math.isfinite(v)]
    hi = max([0.0, *finite])
    lo = min([0.0, *finite])
    if hi == lo:
        hi = lo + 1.0
    label_w, bars_w, text_w, bar_h, gap = 230.0, 330.0, 110.0, 14.0, 8.0
    per_row = max(1, max((len(s) for _, s in rows), default=1))
    row_h = per_row * bar_h + gap
    width = label_w + bars_w + text_w
    height = len(rows) * row_h + 24

    def x_of(v: float) -> float:
        if not math.isfinite(v):
            v = hi if v > 0 else lo
        return label_w + (v - lo) / (hi - lo) * bars_w

    x0 = x_of(0.0)
    parts = [
        f'<svg id="{escape(chart_id)}" width="{_f(width)}" height="{_f(height)}" '
        f'viewBox="0 0 {_f(width)} {_f(height)}" role="img">',
        f"<title>{escape(title)}</title>",
    ]
    for i, (label, series) in enumerate(rows):
        y = 4 + i * row_h
        short = label if len(label) <= 34 else label[:31] + "..."
        parts.append(
            f'<text x="{_f(label_w - 6)}" y="{_f(y + per_row * bar_h / 2 + 4)}" text-anchor="end">'
            f"<title>{escape(label)}</title>{escape(short)}</text>"
        )
        for j, (value, cls, text) in enumerate(series):
            xv = x_of(value)
            by = y + j * bar_h
            parts.append(
                f'<rect class="{escape(cls)}" x="{_f(min(x0, xv))}" y="{_f(by)}" width="{_f(abs(xv - x0))}" '
                f'height="{_f(bar_h - 2)}" data-value="{escape(repr(float(value)))}">'
                f"<title>{escape(label)}: {escape(text)}</title></rect>"
            )
            parts.append(f'<text x="{_f(max(x0, xv) + 4)}" y="{_f(by + bar_h - 4)}">{escape(text)}</text>')
    axis_y = len(rows) * row_h + 4
    parts.append(f'<path class="axis" d="M {_f(x0)} 0 V {_f(axis_y)}"/>')
    parts.append(
        f'<text x="{_f(label_w)}" y="{_f(axis_y + 14)}">{escape(_num(lo, 3))}</text>'
        f'<text x="{_f(label_w + bars_w)}" y="{_f(axis_y + 14)}" text-anchor="end">{escape(_num(hi, 3))}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def _histogram_svg(name: str, hist: dict[str, Any]) -> str:
    """Vertical bars over log-spaced bins of |reference - candidate|."""
    edges = [float(e) for e in hist.get("edges", [])]
    counts = [int(c) for c in hist.get("counts", [])]
    width, height, left, bottom, top = 560.0, 190.0, 48.0, 34.0, 10.0
    plot_w, plot_h = width - left - 10, height - bottom - top
    parts = [
        f'<svg id="hist-{escape(name)}" class="histogram" width="{_f(width)}" height="{_f(height)}" '
        f'viewBox="0 0 {_f(width)} {_f(height)}" role="img">',
        f"<title>|reference - candidate| for {escape(name)}</title>",
    ]
    top_count = max(counts, default=0)
    n = len(counts)
    for i, c in enumerate(counts):
        h = 0.0 if top_count == 0 else c / top_count * plot_h
        x = left + i * plot_w / n
        parts.append(
            f'<rect class="hist" x="{_f(x + 1)}" y="{_f(top + plot_h - h)}" width="{_f(plot_w / n - 2)}" '
            f'height="{_f(h)}" data-count="{c}" data-lo="{edges[i]!r}" data-hi="{edges[i + 1]!r}">'
            f"<title>{_num(edges[i], 3)} to {_num(edges[i + 1], 3)}: {c}</title></rect>"
        )
    base = top + plot_h
    parts.append(f'<path class="axis" d="M {_f(left)} {_f(top)} V {_f(base)} H {_f(left + plot_w)}"/>')
    parts.append(f'<text x="{_f(left - 4)}" y="{_f(top + 8)}" text-anchor="end">{top_count}</text>')
    parts.append(f'<text x="{_f(left - 4)}" y="{_f(base)}" text-anchor="end">0</text>')
    if edges:
        for frac, anchor in ((0.0, "start"), (0.5, "middle"), (1.0, "end")):
            k = round(frac * n)
            parts.append(
                f'<text x="{_f(left + k * plot_w / n)}" y="{_f(base + 14)}" text-anchor="{anchor}">'
                f"{_num(edges[k], 3)}</text>"
            )
    parts.append(
        f'<text x="{_f(left + plot_w / 2)}" y="{_f(height - 4)}" text-anchor="middle">'
        "absolute error (log scale)</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


# --- sections ------------------------------------------------------------------------------------


def _in_boxes(body: str) -> str:
    """Every chart in a box of its own that scrolls sideways: the page itself never does."""
    return body.replace("<svg ", '<div class="scroll"><svg ').replace("</svg>", "</svg></div>")


def _summary(
    report: Report | ValidationReport,
    rows: list[tuple[str, str]],
    accuracy: str,
    identity: str = "",
    warning: str | None = None,
) -> str:
    """The verdict, what ran where (`rows`, already-escaped HTML), the held-out samples and the
    confidence level; then `accuracy` (HTML) and the random-data `warning`."""
    shown = report.verdict
    verdict = f'<span class="verdict {shown}" id="verdict">{shown.upper()}</span>'
    level = level_text(report)
    settle = f'<p id="settle">{escape(settle_advice(report))}.</p>' if shown == INCONCLUSIVE else ""
    rows = [
        *rows,
        ("held-out samples", _num(report.figures.samples)),
        *([("confidence", f"{level}: each figure's interval; the verdict reads them")] if level else []),
    ]
    table = _table(
        ["", ""],
        [[_td(k), _td(v, 'class="text"')] for k, v in rows],
        ' id="summary-table"',
        [f'data-key="{escape(k)}"' for k, _ in rows],
    )
    random_html = f'<p id="random-data"><strong>{escape(warning)}</strong></p>' if warning else ""
    return f"<h1>qconvert report {verdict}</h1>{identity}{settle}{random_html}{table}{accuracy}"


def _ran_on(target: str, label: str, mode: str, validated_on: str, exact_qdq: bool) -> list[tuple[str, str]]:
    """The summary's rows for what was checked, as what, on which provider and how."""
    return [
        ("target", escape(target)),
        ("quantization", escape(f"{label}, {mode}")),
        ("validated on", escape(validated_on)),
        (
            "how",
            "Q/DQ arithmetic executed exactly (graph optimizations off)"
            if exact_qdq
            else "the provider's own kernels",
        ),
    ]


# (data-key, label, accuracy, its interval)
AccuracyCell = tuple[str, str, float | None, "Interval | None"]


def _accuracy_cells(acc: Accuracy | LabelAccuracy, label: str) -> list[AccuracyCell]:
    """The rows of the accuracy table: export's (the original, the fp32 export and model.onnx) or
    validate's (the reference and the candidate)."""
    if isinstance(acc, LabelAccuracy):
        ivs = acc.intervals
        return [
            ("reference", "reference", acc.reference, None if ivs is None else ivs.reference),
            ("candidate", label, acc.candidate, None if ivs is None else ivs.candidate),
        ]
    both = acc.intervals
    return [
        ("reference", "reference (PyTorch)", acc.reference, None if both is None else both.reference),
        ("fp32_onnx", "fp32 ONNX", acc.fp32_onnx, None),
        ("model", label, acc.model, None if both is None else both.model),
    ]


def _accuracy(acc: Accuracy | LabelAccuracy | None, label: str, samples: int | None) -> str:
    """Task accuracy on the labelled held-out samples: one row per model, then the drop."""
    if not acc:
        return '<p class="muted">No labels in the validation data: no task accuracy.</p>'
    cells = _accuracy_cells(acc, label)
    acc_rows = [
        [_td(escape(text)), _td((pct(value) if value is not None else "–") + _ci(iv, pct))]
        for _, text, value, iv in cells
    ]
    drop_iv = None if acc.intervals is None else acc.intervals.drop
    drop = f"{-100 * acc.drop + 0.0:+.2f} pt" + _ci(drop_iv, lambda x: f"{100 * x + 0.0:.2f} pt")
    acc_rows.append([_td("drop (reference - quantized)"), _td(drop)])
    return f"<h2>Accuracy ({_num(samples)} held-out samples with labels)</h2>" + _table(
        ["", "accuracy"],
        acc_rows,
        ' id="accuracy"',
        [f'data-key="{k}"' for k, _, _, _ in cells] + ['data-key="drop"'],
    )


def _metric_columns(blocks: Sequence[dict[str, Any]]) -> list[str]:
    seen = {k for b in blocks for m in b.values() for k, v in m.items() if _is_number(v)}
    return [m for m in METRIC_ORDER if m in seen] + sorted(seen - set(METRIC_ORDER))


# (data-compare key, label, output -> metric -> figure, output -> metric -> interval)
Comparison = tuple[str, str, dict[str, dict[str, Any]], "dict[str, dict[str, Interval]]"]


def _comparisons(report: Report) -> list[Comparison]:
    """The export's comparisons that ran: quantized vs reference, the export's fidelity, and the
    same graph on this CPU's kernels (a ValidationResult's JSON, as `validation` is)."""
    blocks: list[Comparison] = [
        ("validation", VALIDATION_LABEL, report.figures.outputs, report.figures.intervals)
    ]
    if report.export_fidelity:
        blocks.append(("export_fidelity", FIDELITY_LABEL, report.export_fidelity, {}))
    cpu = report.on_cpu_kernels
    if cpu:
        blocks.append(("on_cpu_kernels", CPU_KERNELS_LABEL, cpu.outputs, cpu.intervals))
    return blocks


def _metrics(blocks: Sequence[Comparison]) -> str:
    columns = _metric_columns([b for _, _, b, _ in blocks])
    rows, attrs = [], []
    for key, label, outputs, intervals in blocks:
        for name, m in outputs.items():
            ivs = intervals.get(name, {})
            rows.append(
                [_td(escape(name)), _td(escape(label), 'class="text"')]
                + [
                    _td(
                        _num(m[c]) + _ci(ivs.get(c)) if c in m else "–",
                        f'data-metric="{escape(c)}"' if c in m else "",
                    )
                    for c in columns
                ]
            )
            attrs.append(f'data-output="{escape(name)}" data-compare="{key}"')
    return (
        "<h2>Metrics per output</h2>"
        + _table(
            ["output", "comparison", *(escape(header(c)) for c in columns)], rows, ' id="metrics"', attrs
        )
        + '<p class="muted">cosine: per-sample cosine similarity (mean, and worst as cosine_min); SQNR in dB; '
        "errors are absolute. Under each figure of the quantized model, its confidence interval: Wilson for "
        "rates, a seeded bootstrap over samples for means; under a worst value (max abs error, worst cosine, "
        "non-finite values) the share of inputs that may be worse than it.</p>"
    )


_RESULT = {PASSED: ("ok", "pass"), FAILED: ("FAILED", "fail"), INCONCLUSIVE: ("INCONCLUSIVE", "undecided")}


def _checks(figures: Figures, level: str) -> str:
    checks = figures.checks
    rows, attrs = [], []
    for c in checks:
        verdict = c.verdict
        result, row_class = _RESULT[verdict]
        iv = c.interval
        if verdict == INCONCLUSIVE:
            settle = c.samples_to_settle
            remedy = f"about {settle} held-out samples" if settle else "no sample count: it sits on the bound"
        else:
            remedy = f"--tolerance '{escape(str(c.needed))}'" if verdict == FAILED and c.needed else ""
        rows.append(
            [
                _td(escape(str(c.output))),
                _td(escape(str(c.metric)), 'class="text"'),
                _td(_num(c.measured), 'data-field="measured"'),
                _td(
                    escape(interval_text(iv, beyond="of inputs beyond")) if iv else DASH,
                    'data-field="interval"',
                ),
                _td(escape(str(c.bound)), 'class="text"'),
                _td(result, 'class="status"'),
                _td(remedy, 'class="text" data-field="needed"'),
                _td(escape(str(c.hint or "")), 'class="text"'),
            ]
        )
        attrs.append(f'class="{row_class}"')
    failed = sum(1 for c in checks if c.verdict == FAILED)
    undecided = sum(1 for c in checks if c.verdict == INCONCLUSIVE)
    parts = [f"{failed} failed" if failed else "", f"{undecided} inconclusive" if undecided else ""]
    lead = (
        f"<p>{' and '.join(p for p in parts if p)} of {len(checks)} checks; each such row says what would settle "
        "it: a looser tolerance for a failed check, more held-out samples for an inconclusive one.</p>"
        if failed or undecided
        else f"<p>All {len(checks)} checks passed.</p>"
    )
    return (
        "<h2>Tolerance checks</h2>"
        + lead
        + _table(
            [
                "output",
                "metric",
                "measured",
                f"{level} interval" if level else "interval",
                "needs",
                "result",
                "would settle it",
                "note",
            ],
            rows,
            ' id="checks"',
            attrs,
        )
    )


def _histograms(figures: Figures) -> str:
    hists = figures.abs_error_histograms
    if not hists:
        return ""
    parts = ["<h2>Error distribution per output (quantized vs reference)</h2>"]
    for name, h in hists.items():
        parts.append(f"<h3>{escape(name)}</h3>")
        if h.get("counts"):
            parts.append(_histogram_svg(name, h))
        outside = [
            f"exact zero: {_num(h.get('zero', 0))}",
            f"below {_num(h['edges'][0], 3)}: {_num(h.get('below', 0))}" if h.get("edges") else "",
            f"NaN/Inf: {_num(h.get('nonfinite', 0))}",
            f"elements: {_num(h.get('total', 0))}",
        ]
        parts.append(f'<p class="muted">{escape(", ".join(o for o in outside if o))}</p>')
    return "".join(parts)


def _performance(report: Report) -> str:
    size, lat = report.size, report.latency
    parts = ["<h2>Size and latency</h2>"]
    q = quantized_label(report)
    if size:
        parts.append(
            _bars_svg(
                [
                    ("fp32 (reference.onnx)", [(size.fp32_bytes, "fp32", human_bytes(size.fp32_bytes))]),
                    (f"{q} (model.onnx)", [(size.model_bytes, "model", human_bytes(size.model_bytes))]),
                ],
                "size-chart",
                "file size",
            )
        )
    if lat:
        rows = []
        for timing, label, cls in ((lat.fp32, "fp32", "fp32"), (lat.model, q, "model")):
            rows.append(
                (
                    label,
                    [
                        (timing.p50_ms, cls, f"p50 {timing.p50_ms:.3f} ms"),
                        (timing.p90_ms, f"{cls} p90", f"p90 {timing.p90_ms:.3f} ms"),
                    ],
                )
            )
        parts.append(_bars_svg(rows, "latency-chart", "latency"))
    rows_html, attrs = [], []
    if size:
        rows_html.append(
            [
                _td("size (bytes)"),
                _td(_num(size.fp32_bytes)),
                _td(_num(size.model_bytes)),
                _td(f"{size.ratio:.4g}x"),
            ]
        )
        attrs.append('data-key="size"')
    if lat:
        for p, fp32, model in (
            ("p50_ms", lat.fp32.p50_ms, lat.model.p50_ms),
            ("p90_ms", lat.fp32.p90_ms, lat.model.p90_ms),
        ):
            ratio = model / fp32 if fp32 else float("nan")
            rows_html.append(
                [
                    _td(f"latency {p[:3]} (ms)"),
                    _td(_num(fp32)),
                    _td(_num(model)),
                    _td(f"{ratio:.4g}x" if p == "p90_ms" else f"{lat.ratio_p50:.4g}x"),
                ]
            )
            attrs.append(f'data-key="{p}"')
    parts.append(_table(["", "fp32", escape(q), "ratio"], rows_html, ' id="performance"', attrs))
    if lat:
        parts.append(
            f'<p class="muted">Latency at batch {_num(lat.batch)} on {escape(str(lat.provider))}, '
            f"{_num(lat.model.runs)} runs per model, fp32 and quantized interleaved in one process.</p>"
        )
    return "".join(parts)


def _isolated_at_output(layer: LayerRecord) -> Any:
    return layer.isolated_model_output_sqnr_db


def _isolated(layer: LayerRecord) -> Any:
    return layer.isolated_sqnr_db


def _cumulative(layer: LayerRecord) -> Any:
    return layer.cumulative_sqnr_db


SENSITIVITY_SERIES = (  # (the figure, its class, what it measures)
    (_isolated_at_output, "isolated", "only this layer quantized, at the model output"),
    (_isolated, "isolated-node", "only this layer quantized, at its own output"),
    (_cumulative, "cumulative", "the whole quantized model, at this layer's output"),
)


def _db(value: Any) -> float | None:
    """An SQNR figure from the report: a number, or "inf"/"-inf" (JSON has no Infinity)."""
    if _is_number(value):
        return float(value)
    if value in ("inf", "-inf", "Infinity", "-Infinity"):
        return math.inf if not str(value).startswith("-") else -math.inf
    return None


def _sensitivity(sens: Sensitivity | None) -> str:
    head = "<h2>Per-layer sensitivity</h2>"
    if not sens:
        return head + '<p class="muted" id="no-sensitivity">Not measured in this run.</p>'
    if not sens.available:
        reason = escape(str(sens.reason or "not available"))
        return head + f'<p class="muted" id="no-sensitivity">Not available: {reason}</p>'
    rows = sens.layers
    if not rows:
        return head + '<p class="muted" id="no-sensitivity">No layers were ranked.</p>'
    chart_rows = []
    for r in rows[:SENSITIVITY_ROWS]:
        bars = []
        for figure, cls, _ in SENSITIVITY_SERIES:
            value = _db(figure(r))
            if value is not None:
                bars.append((value, cls, f"{_num(value, 4)} dB"))
        layer = r.module or r.node  # the PyTorch module path where the export gave it
        chart_rows.append((f"{layer} ({r.op_type})", bars))
    legend = "; ".join(
        f'<span class="{cls}-key">{cls}</span>: {escape(what)}' for _, cls, what in SENSITIVITY_SERIES
    )
    chart = _bars_svg(chart_rows, "sensitivity-chart", "per-layer SQNR (dB), worst first; lower is worse")
    records = [r.to_json() for r in rows]  # every field, as report.json holds it
    keys = list(dict.fromkeys(k for r in records for k in r))
    table = _table(
        [escape(header(k)) for k in keys],
        [
            [
                _td(
                    _num(_db(r.get(k)))
                    if _db(r.get(k)) is not None
                    else (DASH if r.get(k) is None else escape(str(r.get(k))))
                )
                for k in keys
            ]
            for r in records
        ],
        ' id="sensitivity"',
        [f'data-node="{escape(r.node)}"' for r in rows],
    )
    shown = (
        f" The {SENSITIVITY_ROWS} worst are drawn; the table lists all {len(rows)}."
        if len(rows) > SENSITIVITY_ROWS
        else ""
    )
    method = escape(sens.method or "")
    return (
        head
        + _depth_svg(rows)
        + f'<p class="muted">In the order the report ranks them, worst first. {method}{shown}</p>'
        + f'<p class="muted">{legend}</p>'
        + chart
        + table
    )


def _generic(value: Any) -> str:
    """Any JSON value laid out: a dict as a two-column table (nested values laid out in turn), a list
    of dicts as a table, a list of scalars as one line, a scalar as itself."""
    if isinstance(value, dict):
        return _table(
            ["", ""],
            [[_td(escape(str(k))), _td(_generic(v), 'class="text"')] for k, v in value.items()],
        )
    if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
        keys = list(dict.fromkeys(k for r in value for k in r))
        return _table(
            list(map(escape, keys)),
            [[_td(_generic(r.get(k)), 'class="text"') for k in keys] for r in value],
        )
    if isinstance(value, list):
        return escape(", ".join(str(v) for v in value)) or "–"
    if _is_number(value):
        return _num(value)
    return escape(str(value))


def _fallback(fallback: Fallback | None) -> str:
    if not fallback:
        return ""
    return '<h2>Fallback to float</h2><div id="fallback">' + _generic(fallback.to_json()) + "</div>"


def _collapse(collapse: Collapse | None) -> str:
    """`--probe collapse`: held-out pairs per output, and per sequence family the share of pairs each
    model separates at each length (rows where the candidate falls behind are marked)."""
    if not collapse:
        return ""
    rows = [
        [
            _td(escape(name)),
            _td("top-1" if o.rule == "top1" else f"distance &gt; {_num(o.threshold, 3)}"),
            _td(_num(o.pairs)),
            _td(_num(o.collapsed)),
            _td(pct(o.rate)),
        ]
        for name, o in collapse.outputs.items()
    ]
    parts = [
        '<h2>Collapse probe</h2><div id="collapse">',
        _table(["output", "separated when", "pairs fp32 separates", "collapsed", "rate"], rows),
    ]
    for name, fam in collapse.families.items():
        lost = set(fam.lost)
        curve = zip(fam.lengths, fam.reference_rate, fam.candidate_rate, strict=True)
        kept = "none" if fam.kept_longest is None else _num(fam.kept_longest)
        parts.append(
            f"<h3>{escape(name)}: {escape(fam.pattern)}; kept up to length {kept}</h3>"
            + _table(
                ["length", "fp32 separates", "candidate separates"],
                [[_td(_num(n)), _td(pct(r)), _td(pct(c))] for n, r, c in curve],
                row_attrs=['class="fail"' if n in lost else "" for n in fam.lengths],
            )
        )
    if collapse.families_skipped:
        parts.append(f'<p class="muted">No copy/count families: {escape(collapse.families_skipped)}</p>')
    return "".join(parts) + "</div>"


def _ops(report: Report) -> str:
    ops = report.ops
    if not ops:
        return ""
    fp32, model = ops.fp32, ops.model
    names = sorted(set(fp32) | set(model), key=lambda n: (-(model.get(n, 0) + fp32.get(n, 0)), n))
    rows = [[_td(escape(n)), _td(_num(fp32.get(n, 0))), _td(_num(model.get(n, 0)))] for n in names]
    parts = ["<h2>Operators</h2>", _table(["op", "fp32", escape(quantized_label(report))], rows, ' id="ops"')]
    if ops.float_between_qdq:
        parts.append(
            '<p class="muted">Run in float between Q/DQ pairs: '
            + escape(", ".join(map(str, ops.float_between_qdq)))
            + "</p>"
        )
    return "".join(parts)


def _notes(report: Report | ValidationReport) -> str:
    notes = [*report.notes, *report.figures.notes]
    if not notes:
        return ""
    return (
        '<h2>Notes</h2><ul class="notes" id="notes">'
        + "".join(f"<li>{escape(str(n))}</li>" for n in notes)
        + "</ul>"
    )


def _identity(about: Manifest | None) -> str:
    """What was converted, by which qconvert, when, with which command: the page stands on its own
    when pasted into a pull request."""
    from qconvert import __version__

    items = [
        ("model", None if about is None else about.source.origin),
        ("qconvert", __version__ if about is None else about.qconvert),
        ("date", None if about is None else about.created),
        ("command", None if about is None else about.command),
    ]
    shown = [
        f'<span data-key="{k}"><strong>{k}</strong> '
        + (f"<code>{escape(str(v))}</code>" if k == "command" else escape(str(v)))
        + "</span>"
        for k, v in items
        if v
    ]
    return '<p id="identity" class="muted">' + " &middot; ".join(shown) + "</p>"


def _worst_output(figures: Figures) -> str | None:
    outputs = figures.outputs
    scored = [(m.get("sqnr_db"), name) for name, m in outputs.items() if _is_number(m.get("sqnr_db"))]
    return min(scored)[1] if scored else next(iter(outputs), None)


def _scatter(figures: Figures) -> str:
    """fp32 against quantized values of the worst output (lowest SQNR): on the diagonal is exact."""
    name = _worst_output(figures)
    pairs = figures.scatter.get(name or "", {})
    ref, cand = pairs.get("reference") or [], pairs.get("candidate") or []
    if not name or not ref or len(ref) != len(cand):
        return ""
    lo, hi = min(min(ref), min(cand)), max(max(ref), max(cand))
    if hi == lo:
        hi = lo + 1.0
    size, pad = 300.0, 40.0

    def at(v: float) -> float:
        return pad + (v - lo) / (hi - lo) * (size - 2 * pad)

    parts = [
        f'<svg id="scatter-{escape(name)}" class="scatter" width="{_f(size)}" height="{_f(size)}" '
        f'viewBox="0 0 {_f(size)} {_f(size)}" role="img">',
        f"<title>fp32 vs quantized values of {escape(name)}</title>",
        f'<path class="axis" d="M {_f(pad)} {_f(pad / 2)} V {_f(size - pad)} H {_f(size - pad / 2)}"/>',
        f'<path class="diagonal" d="M {_f(at(lo))} {_f(size - at(lo))} L {_f(at(hi))} {_f(size - at(hi))}"/>',
    ]
    parts += [
        f'<circle class="point" cx="{_f(at(r))}" cy="{_f(size - at(c))}" r="2"/>'
        for r, c in zip(ref, cand, strict=True)
    ]
    parts += [
        f'<text x="{_f(pad)}" y="{_f(size - pad + 14)}">{escape(_num(lo, 3))}</text>',
        f'<text x="{_f(size - pad)}" y="{_f(size - pad + 14)}" text-anchor="end">{escape(_num(hi, 3))}</text>',
        f'<text x="{_f(size / 2)}" y="{_f(size - 6)}" text-anchor="middle">fp32 (reference)</text>',
        f'<text x="12" y="{_f(size / 2)}" text-anchor="middle" transform="rotate(-90 12 {_f(size / 2)})">'
        "quantized</text>",
        "</svg>",
    ]
    return (
        f"<h2>fp32 against quantized: {escape(name)}</h2>"
        f'<p class="muted">{len(ref)} values of the output with the lowest SQNR, evenly spaced over the '
        "held-out outputs; on the dashed diagonal the quantized model is exact.</p>" + "".join(parts)
    )


def _depth_svg(rows: Sequence[LayerRecord]) -> str:
    """Per-layer SQNR in the whole quantized model, along the network's depth (input on the left):
    where the error enters and whether it grows."""
    points = sorted(
        (int(r.depth), float(sqnr), str(r.module or r.node))
        for r in rows
        if r.depth is not None and (sqnr := _db(r.cumulative_sqnr_db)) is not None and math.isfinite(sqnr)
    )
    if len(points) < 2:
        return ""
    width, height, left, bottom, top = 560.0, 180.0, 48.0, 30.0, 10.0
    plot_w, plot_h = width - left - 10, height - bottom - top
    d_hi = max(p[0] for p in points) or 1
    v_lo, v_hi = min(p[1] for p in points), max(p[1] for p in points)
    if v_hi == v_lo:
        v_hi = v_lo + 1.0
    xy = [
        (left + d / d_hi * plot_w, top + (v_hi - v) / (v_hi - v_lo) * plot_h, v, label)
        for d, v, label in points
    ]
    line = " ".join(f"{'M' if i == 0 else 'L'} {_f(x)} {_f(y)}" for i, (x, y, _, _) in enumerate(xy))
    parts = [
        f'<svg id="depth-chart" width="{_f(width)}" height="{_f(height)}" viewBox="0 0 {_f(width)} '
        f'{_f(height)}" role="img"><title>per-layer SQNR along the depth of the network</title>',
        f'<path class="axis" d="M {_f(left)} {_f(top)} V {_f(top + plot_h)} H {_f(left + plot_w)}"/>',
        f'<path class="line" d="{line}"/>',
    ]
    parts += [
        f'<circle class="dot" cx="{_f(x)}" cy="{_f(y)}" r="3" data-value="{v!r}">'
        f"<title>{escape(label)}: {_num(v, 4)} dB</title></circle>"
        for x, y, v, label in xy
    ]
    parts += [
        f'<text x="{_f(left - 4)}" y="{_f(top + 8)}" text-anchor="end">{_num(v_hi, 3)}</text>',
        f'<text x="{_f(left - 4)}" y="{_f(top + plot_h)}" text-anchor="end">{_num(v_lo, 3)}</text>',
        f'<text x="{_f(left + plot_w / 2)}" y="{_f(height - 4)}" text-anchor="middle">'
        "quantized layers, input to output; SQNR in the whole model (dB)</text>",
        "</svg>",
    ]
    return "".join(parts)


def _tradeoff(table: Tradeoff | None) -> str:
    """--recover mixed_precision: every configuration tried, its per-format layer counts, accuracy on
    the calibration samples, latency and size against fp32; Pareto-optimal rows marked, the chosen one
    in bold; and accuracy against latency (or the predicted cost where latency was not measured)."""
    if not table or not table.configurations:
        return ""
    formats = table.formats
    rows, attrs = [], []
    for i, c in enumerate(table.configurations):
        top1: list[Any] = [m.get("top1_agreement") for m in c.outputs.values()]
        cells = [
            _td(str(i)),
            *(_td(_num(c.layers.get(f, 0))) for f in formats),
            _td(_num(c.sqnr_db, 3)),
            _td(pct(top1[0]) if top1 and _is_number(top1[0]) else DASH),
            _td("yes" if c.meets_goal else "no"),
            _td(DASH if c.latency_ratio is None else f"{_num(c.latency_ratio, 3)}x"),
            _td(f"{_num(c.size_ratio, 3)}x"),
            _td(_num(c.predicted_cost, 3)),
            _td(_num(c.seconds, 3)),
            _td("yes" if c.pareto else ""),
            _td("chosen" if c.chosen else ""),
        ]
        rows.append(cells)
        attrs.append('class="chosen" style="font-weight:700"' if c.chosen else "")
    head = [
        "#",
        *(f"{escape(f)} layers" for f in formats),
        "worst output SQNR (dB)",
        "top-1 agreement",
        "meets tolerance",
        "latency vs fp32",
        "size vs fp32",
        "predicted cost",
        "seconds",
        "Pareto",
        "",
    ]
    goal = ", ".join(table.goal) or "none"
    shipped = "" if table.shipped is not False else " This attempt was not kept; model.onnx does not use it."
    text = (
        f'<p class="muted">Measured on {_num(table.samples)} calibration samples against fp32 '
        f"(tolerance there: {escape(goal)}); latency "
        + ("measured here, p50" if table.latency_measured else "not measured here (predicted cost only)")
        + f". Stopped: {escape(table.stopped)}. {_num(table.evaluations)} measurements, "
        f"{_num(table.seconds, 3)} s.{escape(shipped)}</p>"
    )
    return (
        '<h2>Mixed precision: what was tried</h2><div id="tradeoff">'
        + text
        + _tradeoff_svg(table.configurations, table.latency_measured)
        + _table(head, rows, ' id="tradeoff-table"', attrs)
        + "</div>"
    )


def _tradeoff_svg(configs: Sequence[Configuration], measured: bool) -> str:
    """Worst output SQNR against latency vs fp32 (`measured`: the table's latency_measured), else the
    predicted cost: one dot per configuration, the Pareto-optimal ones filled, the chosen one ringed."""
    key = "latency_ratio" if measured else "predicted_cost"
    points = []
    for c in configs:
        x, y = (c.latency_ratio if measured else c.predicted_cost), c.sqnr_db
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and math.isfinite(y):
            points.append((float(x), float(y), c.pareto, c.chosen))
    if len(points) < 2:
        return ""
    width, height, left, bottom, top = 420.0, 200.0, 48.0, 30.0, 10.0
    plot_w, plot_h = width - left - 14, height - bottom - top
    x_lo, x_hi = min(p[0] for p in points), max(p[0] for p in points)
    y_lo, y_hi = min(p[1] for p in points), max(p[1] for p in points)
    x_hi, y_hi = (x_hi if x_hi > x_lo else x_lo + 1.0), (y_hi if y_hi > y_lo else y_lo + 1.0)

    def at(x: float, y: float) -> tuple[float, float]:
        return left + (x - x_lo) / (x_hi - x_lo) * plot_w, top + (y_hi - y) / (y_hi - y_lo) * plot_h

    parts = [
        f'<svg id="tradeoff-chart" width="{_f(width)}" height="{_f(height)}" viewBox="0 0 {_f(width)} '
        f'{_f(height)}" role="img"><title>worst output SQNR against {escape(header(key))}</title>',
        f'<path class="axis" d="M {_f(left)} {_f(top)} V {_f(top + plot_h)} H {_f(left + plot_w)}"/>',
    ]
    for x, y, pareto, chosen in points:
        cx, cy = at(x, y)
        fill = "#2f6fde" if pareto else "#ffffff"
        parts.append(
            f'<circle cx="{_f(cx)}" cy="{_f(cy)}" r="4" fill="{fill}" stroke="#2f6fde" stroke-width="1.5">'
            f"<title>{_num(y, 4)} dB at {_num(x, 3)}</title></circle>"
        )
        if chosen:
            parts.append(
                f'<circle cx="{_f(cx)}" cy="{_f(cy)}" r="8" fill="none" stroke="#1f7a3a" stroke-width="2"/>'
            )
    label = "latency vs fp32 (p50)" if measured else "predicted cost over int8"
    parts += [
        f'<text x="{_f(left - 4)}" y="{_f(top + 8)}" text-anchor="end">{_num(y_hi, 3)}</text>',
        f'<text x="{_f(left - 4)}" y="{_f(top + plot_h)}" text-anchor="end">{_num(y_lo, 3)}</text>',
        f'<text x="{_f(left)}" y="{_f(height - 16)}">{_num(x_lo, 3)}</text>',
        f'<text x="{_f(left + plot_w)}" y="{_f(height - 16)}" text-anchor="end">{_num(x_hi, 3)}</text>',
        f'<text x="{_f(left + plot_w / 2)}" y="{_f(height - 4)}" text-anchor="middle">{label}; '
        "worst output SQNR (dB) up</text>",
        "</svg>",
    ]
    return "".join(parts)


def render_html(report: Report, about: Manifest | None = None) -> str:
    """The whole page for `report` (what report.json holds). `about`: the manifest (its source's
    origin, `qconvert`, `created` and `command` are shown at the top)."""
    label = quantized_label(report)
    accuracy = _accuracy(report.accuracy, label, None if report.accuracy is None else report.accuracy.samples)
    ran_on = _ran_on(report.target, label, report.mode, report.validated_on, report.validation_exact_qdq)
    body = (
        _summary(report, ran_on, accuracy, _identity(about), random_data_warning(report)),
        _metrics(_comparisons(report)),
        _scatter(report.figures),
        _checks(report.figures, level_text(report)),
        _histograms(report.figures),
        _performance(report),
        _sensitivity(report.sensitivity),
        _fallback(report.fallback),
        _tradeoff(report.tradeoff),
        _ops(report),
        _notes(report),
    )
    return _page(
        f"{report.target} {label} ({report.mode})",
        body,
        "report.json; every figure on this page is in that file",
    )


def render_validation_html(report: ValidationReport) -> str:
    """`qconvert validate --html`: the page for the --json document `report`, with the sections an
    export's page has that validate measures (no size, latency, sensitivity or operators)."""
    label = bits_label(report.bits, "validate")
    accuracy = _accuracy(report.figures.accuracy, label, report.samples)
    ran_on = _ran_on(report.candidate, label, "validate", report.provider, report.exact_qdq)
    body = (
        _summary(report, ran_on, accuracy, _identity(None)),
        _metrics([("validation", VALIDATION_LABEL, report.figures.outputs, report.figures.intervals)]),
        _scatter(report.figures),
        _checks(report.figures, level_text(report)),
        _histograms(report.figures),
        _sensitivity(None),
        _collapse(report.collapse),
        _notes(report),
    )
    return _page(
        f"{report.candidate} {label} (validate)",
        body,
        "`qconvert validate`; every figure on this page is in its --json",
    )


def _page(title: str, sections: Sequence[str], source: str) -> str:
    """The document around the sections: `title` after `qconvert report: `, `source` in the footer."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape('qconvert report: ' + title)}</title><style>{CSS}</style></head>"
        f"<body>{_in_boxes(''.join(sections))}"
        f'<p class="muted">Written by qconvert from {escape(source)}.</p>'
        "</body></html>\n"
    )
