"""sweep.png: the labels of settings that land on nearly the same point are moved apart, measured on
the real matplotlib renderer, so none is drawn over another (issue 14); the renderer returns the PNG
and writes no file (issue 11)."""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from qconvert.results import RecommendationRecord, SweepLatency, SweepReport, SweepRow
from qconvert.sweep_report import render_png, separate_labels


def test_labels_of_coinciding_points_do_not_overlap() -> None:
    fig = Figure(figsize=(5, 3), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    names = ["8bit-static", "8bit-dynamic", "8bit-weight-only", "4bit-weight-only", "16bit-fp16"]
    points = [(0.32, 99.0), (0.321, 99.0), (0.33, 98.99), (0.322, 99.01), (0.53, 99.0)]
    labels = [
        ax.annotate(n, p, textcoords="offset points", xytext=(7, 5), fontsize=8)
        for n, p in zip(names, points, strict=True)
    ]
    ax.scatter(*zip(*points, strict=True))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    before = [t.get_window_extent(renderer) for t in labels]
    assert any(a.overlaps(b) for i, a in enumerate(before) for b in before[i + 1 :])  # the problem is real
    boxes = separate_labels(fig, labels)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    assert [t.get_text() for t in labels] == names  # every label still drawn, none dropped


def test_sweep_png_is_returned_as_bytes_and_no_file_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The renderer draws; the sweep writes sweep.png through its ArtifactDir (artifacts.py)."""
    monkeypatch.chdir(tmp_path)
    rows = [
        SweepRow("fp32", None, None, "baseline", size_ratio=1.0, latency_ratio=1.0, cosine=1.0),
        SweepRow("8bit-static", 8, "static", "passed", size_ratio=0.3, latency_ratio=0.6, cosine=0.999),
        SweepRow("4bit-weight-only", 4, "weight-only", "out_of_tolerance", size_ratio=0.2, cosine=0.95),
    ]
    report = SweepReport(
        source="tiny",
        target="cpu",
        bits=(8, 4),
        modes=None,
        tolerance=None,
        executor="local",
        workers=1,
        held_out_samples=64,
        labels=False,
        latency=SweepLatency(how="interleaved", provider=None, batch=1, repeats=1, p50_ms={}),
        rows=tuple(rows),
        recommendation=RecommendationRecord(
            smallest="8bit-static", fastest="8bit-static", text="8bit-static"
        ),
        passed=True,
        verdict="passed",
        notes=(),
        seconds=1.0,
    )
    png = render_png(report)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    assert list(tmp_path.iterdir()) == []
