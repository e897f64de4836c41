"""Renders a sweep (results.SweepReport, what sweep.json holds): table cells, sweep.png and sweep.html.

Computes nothing new: every figure shown is in sweep.json. The HTML reuses report_html's page
style and SVG bar chart, and embeds sweep.png as a data URI, so the page is one file that opens
offline (links to each trial's own report.html are relative).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Sequence
from html import escape
from typing import TYPE_CHECKING, Any

from qconvert.report import human_bytes
from qconvert.report_html import CSS, _bars_svg, _table, _td

if TYPE_CHECKING:
    from qconvert.results import CollapseFamily, SweepReport, SweepRow

STATUS_TEXT = {
    "baseline": "baseline",
    "passed": "holds tolerance",
    "out_of_tolerance": "OUT OF TOLERANCE",
    "inconclusive": "INCONCLUSIVE",
    "not_supported": "not supported",
    "error": "error",
}


def _size(row: SweepRow) -> float | None:
    """The size ratio to fp32, one of the two the plot and the bars show."""
    return row.size_ratio


def _latency(row: SweepRow) -> float | None:
    return row.latency_ratio


QUALITY_LABELS = {"top1_agreement": "top-1 agreement with the original", "cosine": "cosine with the original"}


def quality_metric(summary: SweepReport) -> str:
    """What the y axis shows: top-1 agreement where the model has class-score outputs, else cosine."""
    return "top1_agreement" if any(r.agreement is not None for r in summary.rows) else "cosine"


def quality(row: SweepRow, metric: str) -> float | None:
    """The row's figure for `quality_metric`: the top-1 agreement or the cosine with the original."""
    return row.agreement if metric == "top1_agreement" else row.cosine


def header(summary: SweepReport) -> list[str]:
    quality = "top-1 agree" if quality_metric(summary) == "top1_agreement" else "cosine"
    return [
        "setting",
        "verdict",
        *(["accuracy"] if summary.labels else []),
        quality,
        "collapse",
        "size",
        "latency p50",
    ]


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def status_text(row: SweepRow) -> str:
    text = STATUS_TEXT.get(row.status, row.status)
    if row.status in ("not_supported", "error") and row.reason:
        return f"{text}: {row.reason}"
    return text


def collapse_text(row: SweepRow) -> str:
    """The collapse rate, and for sequence models, per probe family, "kept/fp32": the longest length
    up to which the quantized model keeps up with fp32, out of the longest fp32 itself separates
    (so "count 4/16" means counting holds up to 4 repeats where fp32 counts up to 16)."""
    if row.collapse is None:
        return "error" if row.collapse_error else "—"
    text = f"{100 * row.collapse.rate:.1f}%"
    families = row.collapse.families
    parts = [
        f"{name} {_length(_kept(fam))}/{_length(fam.reference_longest)}" for name, fam in families.items()
    ]
    return f"{text}; {', '.join(parts)}" if parts else text


def _kept(family: CollapseFamily) -> int | None:
    """Keeping up with fp32 beyond the longest length fp32 itself handles says nothing more."""
    kept, reference = family.kept_longest, family.reference_longest
    if kept is None or reference is None:
        return kept
    return int(min(kept, reference))


def _length(value: Any) -> str:
    return "-" if value is None else str(value)


def cells(summary: SweepReport, row: SweepRow) -> list[str]:
    """One table row as plain text, in `header(summary)` order; the quality figure with its confidence
    interval on the line below."""
    metric = quality_metric(summary)
    agreement = metric == "top1_agreement"

    def fmt(x: float | None) -> str:
        return _pct(x) if agreement else ("—" if x is None else f"{x:.5f}")

    shown = fmt(quality(row, metric))
    interval = row.agreement_interval if agreement else row.cosine_interval
    if interval:
        shown += f"\n[{fmt(interval[0])}, {fmt(interval[1])}]"
    size = "—"
    if row.size_bytes is not None:
        size = f"{human_bytes(row.size_bytes)} ({row.size_ratio:.2f}x)"
    latency = "—"
    if row.latency_ms is not None:
        latency = f"{row.latency_ms:.3f} ms ({row.latency_ratio:.2f}x)"
        if row.slower_than_fp32:
            latency += " slower"
    return [
        row.name,
        status_text(row),
        *([_pct(row.accuracy)] if summary.labels else []),
        shown,
        collapse_text(row),
        size,
        latency,
    ]


# --- sweep.png ---------------------------------------------------------------------------------

_STYLE = {  # status -> (marker, colour, legend label)
    "baseline": ("*", "#1d2330", "fp32 baseline"),
    "passed": ("o", "#1f7a3a", "holds tolerance"),
    "out_of_tolerance": ("X", "#b42318", "out of tolerance"),
    "inconclusive": ("D", "#b54708", "inconclusive"),
}


def render_png(summary: SweepReport) -> bytes:
    """Quality against size ratio and against latency ratio, one point per setting, labelled;
    fp32 is the star at 1.0x, out-of-tolerance points are red crosses. Drawn with matplotlib's
    Agg canvas directly (no pyplot, so no global backend state). Returns the PNG; writes no file."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    metric = quality_metric(summary)
    scale = 100.0 if metric == "top1_agreement" else 1.0
    fig = Figure(figsize=(11, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    plotted = [
        (r, y * scale) for r in summary.rows if r.status in _STYLE and (y := quality(r, metric)) is not None
    ]
    label_sets: list[list[Any]] = []
    for ax, ratio, label in (
        (axes[0], _size, "size (x fp32)"),
        (axes[1], _latency, "latency p50 (x fp32)"),
    ):
        ax.axvline(1.0, color="#8a94a6", linestyle="--", linewidth=0.8)
        points = [(r, x, y) for r, y in plotted if (x := ratio(r)) is not None]
        labels = []
        for (row, x, y), dy in zip(points, _label_offsets([(x, y) for _, x, y in points]), strict=True):
            marker, colour, _ = _STYLE[row.status]
            ax.scatter([x], [y], marker=marker, s=110 if marker == "*" else 60, color=colour, zorder=3)
            labels.append(
                ax.annotate(row.name, (x, y), textcoords="offset points", xytext=(7, dy), fontsize=8)
            )
        label_sets.append(labels)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        ax.margins(x=0.25)
    values = [y for _, y in plotted]
    if values:
        top = 100.0 if scale == 100.0 else 1.0  # agreement and cosine cannot exceed these
        pad = max(top - min(values), top * 0.01) * 0.2
        axes[0].set_ylim(min(values) - pad, top + pad)
        axes[0].set_yticks([t for t in axes[0].get_yticks() if min(values) - pad <= t <= top])
    axes[0].set_ylabel(QUALITY_LABELS[metric] + (" (%)" if scale == 100.0 else ""))
    handles = [
        Line2D([], [], marker=m, color=c, linestyle="", markersize=9 if m == "*" else 7, label=text)
        for m, c, text in _STYLE.values()
    ]
    handles.append(Line2D([], [], color="#8a94a6", linestyle="--", linewidth=0.8, label="fp32 (1.0x)"))
    fig.suptitle(f"{summary.source} -> {summary.target}: where quantization stops paying", fontsize=11)
    fig.legend(
        handles=handles, loc="upper center", ncol=4, frameon=False, bbox_to_anchor=(0.5, 0.93), fontsize=9
    )
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    for labels in label_sets:
        separate_labels(fig, labels)
    png = io.BytesIO()
    fig.savefig(png, format="png")
    return png.getvalue()


def separate_labels(fig: Any, labels: list[Any], passes: int = 20) -> list[Any]:
    """Move point labels apart until no two drawn boxes overlap: measured on the renderer, so close
    points on any scale (two settings at 0.32x and 0.33x) get readable labels. Returns the boxes."""
    fig.canvas.draw()  # lay out the axes first: before a draw, a label has no real extent
    renderer = fig.canvas.get_renderer()
    points_per_pixel = 72.0 / fig.dpi
    for _ in range(passes):
        boxes = [t.get_window_extent(renderer) for t in labels]
        moved = False
        order = sorted(range(len(labels)), key=lambda i: (boxes[i].y0, boxes[i].x0))
        for a_pos, i in enumerate(order):
            for j in order[a_pos + 1 :]:
                if boxes[i].overlaps(boxes[j]):
                    lift = (boxes[i].y1 - boxes[j].y0 + 2.0) * points_per_pixel
                    x, y = labels[j].xyann
                    labels[j].xyann = (x, y + lift)
                    boxes[j] = labels[j].get_window_extent(renderer)
                    moved = True
        if not moved:
            break
    return [t.get_window_extent(renderer) for t in labels]


def _label_offsets(points: list[tuple[float, float]]) -> list[float]:
    """Vertical label offsets (in points) so that labels of points that nearly coincide are
    stacked instead of drawn over each other."""
    if not points:
        return []
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_span = (max(xs) - min(xs)) or 1.0
    y_span = (max(ys) - min(ys)) or 1.0
    offsets: list[float] = []
    for i, (x, y) in enumerate(points):
        near = sum(
            1
            for j in range(i)
            if abs(points[j][0] - x) / x_span < 0.08 and abs(points[j][1] - y) / y_span < 0.08
        )
        offsets.append(5.0 - 11.0 * near)
    return offsets


# --- sweep.html --------------------------------------------------------------------------------


def _row_class(row: SweepRow) -> str:
    if row.status in ("out_of_tolerance", "error"):
        return 'class="fail"'
    if row.status == "inconclusive":
        return 'class="undecided"'
    return 'class="pass"' if row.status == "passed" else ""


def _ratio_bars(
    rows: Sequence[SweepRow], ratio: Callable[[SweepRow], float | None], chart_id: str, title: str
) -> str:
    """One bar per row that has a `ratio` to fp32; the fp32 row drawn as the baseline."""
    bars = [
        (r.name, [(x, "fp32" if r.status == "baseline" else "model", f"{x:.2f}x")])
        for r in rows
        if (x := ratio(r)) is not None
    ]
    return _bars_svg(bars, chart_id, title)


def render_html(summary: SweepReport, png: bytes) -> str:
    """The whole sweep page: recommendation, table, the plot, size and latency bars, notes."""
    rows = summary.rows
    shown = summary.verdict  # a setting holds (PASSED), one may with more samples, or none holds
    label = {"passed": "HOLDS", "inconclusive": "UNDECIDED"}.get(shown, "NONE HOLDS")
    verdict = f'<span class="verdict {shown}" id="verdict">{label}</span>'
    body_rows = []
    for row in rows:
        text = cells(summary, row)
        name = escape(text[0])
        if row.out_dir:
            name = f'<a href="{escape(row.out_dir)}/report.html">{name}</a>'
        body_rows.append(
            [_td(name), _td(escape(text[1]), 'class="status text"'), *(_td(escape(t)) for t in text[2:])]
        )
    table = _table(
        [escape(h) for h in header(summary)],
        body_rows,
        ' id="sweep-table"',
        [" ".join(filter(None, (_row_class(r), f'data-name="{escape(r.name)}"'))) for r in rows],
    )
    size_bars = _ratio_bars(rows, _size, "size-chart", "size, x fp32")
    latency_bars = _ratio_bars(rows, _latency, "latency-chart", "latency p50, x fp32")
    image = base64.b64encode(png).decode("ascii")
    notes = "".join(f"<li>{escape(str(n))}</li>" for n in summary.notes)
    title = f"qconvert sweep: {summary.source} -> {summary.target}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{escape(title)} {verdict}</h1>"
        f'<p id="recommendation"><strong>{escape(summary.recommendation.text)}</strong></p>'
        f"<h2>Settings</h2>{table}"
        f'<h2>Where quantization stops paying</h2><img id="sweep-plot" alt="{escape(QUALITY_LABELS[quality_metric(summary)])} '
        f'against size and latency, per setting" src="data:image/png;base64,{image}" style="max-width:100%">'
        f"<h2>Size</h2>{size_bars}<h2>Latency</h2>{latency_bars}"
        + (f'<h2>Notes</h2><ul class="notes" id="notes">{notes}</ul>' if notes else "")
        + '<p class="muted">Written by qconvert from sweep.json; every figure on this page is in that file. '
        "Each setting links to its own report.</p></body></html>\n"
    )
