"""report.html: a self-contained page (no network, no scripts) whose every figure is report.json's.

The page is read from real exports: the Quickstart run (the built-in model, tensorrt int8, passed)
and a tiny model held to an impossible tolerance (failed). It is parsed, not string-matched: the
tables by html.parser, each chart as XML.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from conftest import QUICKSTART_OUT, TINY_CNN, write_model

import qconvert
from qconvert.report_html import render_html
from qconvert.results import Manifest, Report

# --- a small HTML reader -------------------------------------------------------------------------


class Page(HTMLParser):
    """Every start tag with its attributes, the text of <title>/<h1>, and each table with an id as
    a list of rows; a row is (its <tr> attributes, [(cell attributes, cell text), ...]). A figure's
    confidence interval (its <span class="ci">) is kept out of the cell text, in the cell attributes
    as "interval"."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.tables: dict[str, list[tuple[dict[str, str], list[tuple[dict[str, str], str]]]]] = {}
        self.texts: dict[str, str] = {"title": "", "h1": "", "style": ""}
        self._table: str | None = None
        self._cell: tuple[dict[str, str], list[str]] | None = None
        self._ci: list[str] | None = None  # inside a cell's interval span
        self._open: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        self._open.append(tag)
        if tag == "table" and "id" in a:
            self._table = a["id"]
            self.tables[a["id"]] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append((a, []))
        elif tag in ("td", "th") and self._table is not None:
            self._cell = (a, [])
        elif tag == "span" and a.get("class") == "ci" and self._cell is not None:
            self._ci = []

    def handle_endtag(self, tag: str) -> None:
        if self._open and self._open[-1] == tag:
            self._open.pop()
        if tag == "span" and self._ci is not None and self._cell is not None:
            self._cell[0]["interval"] = "".join(self._ci)
            self._ci = None
        elif tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1][1].append((self._cell[0], "".join(self._cell[1]).strip()))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._ci is not None:
            self._ci.append(data)
        elif self._cell is not None:
            self._cell[1].append(data)
        for tag in ("title", "h1", "style"):
            if tag in self._open and self._open[-1] in (tag, "span"):
                self.texts[tag] += data


def svgs(text: str) -> dict[str, ET.Element]:
    """Every inline <svg> of the page, parsed as XML, by id."""
    found = re.findall(r"<svg\b.*?</svg>", text, flags=re.S)
    assert found, "the page has no charts"
    return {(el := ET.fromstring(s)).get("id", f"svg{i}"): el for i, s in enumerate(found)}


def number(cell: str) -> float:
    """A figure as the page shows it: '0.999934', '38.2273', '∞', '99.67%'."""
    cell = cell.strip()
    if cell == "∞":
        return math.inf
    if cell.endswith("%"):
        return float(cell[:-1]) / 100
    return float(cell)


def close(shown: float, value: float, digits: int = 4) -> bool:
    """`shown` is `value` to the page's precision (4 significant digits; near 1, the digits of 1 - x)."""
    if math.isinf(value) or math.isinf(shown):
        return shown == value
    return math.isclose(shown, value, rel_tol=10 ** (1 - digits), abs_tol=1e-12)


def rects(svg: ET.Element) -> list[ET.Element]:
    return [el for el in svg.iter() if el.tag == "rect"]


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def passed_dir(quickstart: tuple[subprocess.CompletedProcess[str], Path]) -> Path:
    proc, cwd = quickstart
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return cwd / QUICKSTART_OUT


@pytest.fixture(scope="module")
def passed(passed_dir: Path) -> tuple[dict[str, Any], str, Page]:
    text = (passed_dir / "report.html").read_text(encoding="utf-8")
    return json.loads((passed_dir / "report.json").read_text()), text, Page(text)


@pytest.fixture(scope="module")
def failed(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Page]:
    """A tiny CNN held to cosine>=1: validation runs and fails (the artifacts are still written)."""
    import numpy as np

    root = tmp_path_factory.mktemp("failed")
    model = write_model(root / "m", TINY_CNN)
    rng = np.random.default_rng(0)
    np.savez(root / "calib.npz", image=rng.standard_normal((40, 3, 8, 8)).astype(np.float32))
    result = qconvert.export(
        qconvert.RunConfig(
            source=f"{model}:build",
            target="tensorrt",
            calibration=str(root / "calib.npz"),
            tolerance="cosine>=1.0",
            out_dir=root / "out",
        )
    )
    assert not result.passed
    text = (root / "out" / "report.html").read_text(encoding="utf-8")
    return json.loads((root / "out" / "report.json").read_text()), text, Page(text)


Rendered = tuple[dict[str, Any], str, Page]


# --- the page ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_export_writes_report_html_and_hashes_it(passed_dir: Path) -> None:
    about = Manifest.load(passed_dir)
    assert "report.html" in about.files
    report = json.loads((passed_dir / "report.json").read_text())
    # the page is a pure function of report.json and the manifest's identity of the run
    page = render_html(Report.from_json(report), about)
    assert (passed_dir / "report.html").read_text(encoding="utf-8") == page


@pytest.mark.slow
@pytest.mark.parametrize("which", ["passed", "failed"])
def test_the_page_has_every_section(which: str, request: pytest.FixtureRequest) -> None:
    report, text, page = request.getfixturevalue(which)
    assert text.startswith("<!DOCTYPE html>")
    assert report["target"] in page.texts["title"]
    verdict = "PASSED" if report["passed"] else "FAILED"
    assert verdict in page.texts["h1"]
    for table in ("summary-table", "metrics", "checks", "performance", "ops"):
        assert page.tables.get(table), f"no table {table!r}"
    charts = svgs(text)
    assert {"size-chart", "latency-chart"} <= set(charts)
    assert {f"hist-{name}" for name in report["validation"]["outputs"]} <= set(charts)
    if report.get("sensitivity"):
        assert "sensitivity-chart" in charts
    else:
        assert any(a.get("id") == "no-sensitivity" for _, a in page.tags)
    if report["notes"]:
        items = [a for t, a in page.tags if t == "li"]
        assert len(items) >= len(report["notes"])


@pytest.mark.slow
@pytest.mark.parametrize("which", ["passed", "failed"])
def test_every_chart_is_valid_svg_with_drawn_shapes(which: str, request: pytest.FixtureRequest) -> None:
    _, text, _ = request.getfixturevalue(which)
    for chart_id, svg in svgs(text).items():
        assert svg.tag == "svg"
        for dim in ("width", "height"):
            assert float(svg.get(dim, "nan")) > 0, chart_id
        shapes = [el for el in svg.iter() if el.tag in ("rect", "path")]
        assert shapes, f"{chart_id} draws nothing"
        for el in shapes:
            if el.tag == "rect":
                values = [float(el.get(k, "nan")) for k in ("x", "y", "width", "height")]
                assert all(math.isfinite(v) for v in values), (chart_id, el.attrib)
                assert values[2] >= 0 and values[3] >= 0, (chart_id, el.attrib)
            else:
                assert re.fullmatch(r"[MVHL0-9. \-]+", el.get("d", "")), (chart_id, el.attrib)
        dots = [el for el in svg.iter() if el.tag == "circle" and float(el.get("r", 0)) > 0]
        assert dots or any(
            float(r.get("width", 0)) > 0 and float(r.get("height", 0)) > 0 for r in rects(svg)
        ), chart_id


@pytest.mark.slow
def test_the_page_needs_no_network(passed: Rendered) -> None:
    _, text, page = passed
    tags = {t for t, _ in page.tags}
    assert not tags & {"script", "link", "iframe", "img", "object", "embed", "base"}
    for tag, attrs in page.tags:
        for name, value in attrs.items():
            assert "://" not in value, (tag, name, value)
            if name in ("src", "href", "xlink:href"):
                raise AssertionError(f"<{tag} {name}={value!r}>: the page must not load anything")
    assert "url(" not in page.texts["style"] and "@import" not in page.texts["style"]
    assert "http://" not in text and "https://" not in text


# --- the figures are report.json's ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("which", ["passed", "failed"])
def test_metrics_table_shows_report_figures(which: str, request: pytest.FixtureRequest) -> None:
    report, _, page = request.getfixturevalue(which)
    compared = {
        "validation": report["validation"]["outputs"],
        "export_fidelity": report["export_fidelity"],
        **({"on_cpu_kernels": report["on_cpu_kernels"]["outputs"]} if report["on_cpu_kernels"] else {}),
    }
    seen = 0
    for attrs, cells in page.tables["metrics"]:
        if "data-output" not in attrs:
            continue
        metrics = compared[attrs["data-compare"]][attrs["data-output"]]
        shown = {a["data-metric"]: text for a, text in cells if "data-metric" in a}
        numeric = {k for k, v in metrics.items() if isinstance(v, (int, float))}
        assert set(shown) == numeric
        for metric, text in shown.items():
            assert close(number(text), metrics[metric]), (metric, text, metrics[metric])
            seen += 1
        # under each figure of the quantized model, its interval from report.json (none for fidelity)
        intervals = (
            (report.get(attrs["data-compare"]) or {}).get("intervals", {}).get(attrs["data-output"], {})
        )
        shown_ci = {a["data-metric"]: a.get("interval", "") for a, _ in cells if "data-metric" in a}
        for metric, text in shown_ci.items():
            interval = intervals.get(metric)
            assert bool(text) == bool(interval), (metric, text)
            if interval and interval["method"] == "share-beyond":
                assert text == f"<={100 * interval['high']:.2g}% worse", text
            elif interval:
                low, high = (number(x) for x in text.strip("[]").split(", "))
                assert close(low, interval["low"]) and close(high, interval["high"]), (metric, text, interval)
    assert seen >= len(compared) * 7


@pytest.mark.slow
def test_accuracy_and_performance_show_report_figures(passed: Rendered) -> None:
    report, text, page = passed
    acc = {a["data-key"]: cells[1][1] for a, cells in page.tables["accuracy"] if "data-key" in a}
    for key in ("reference", "fp32_onnx", "model"):
        assert number(acc[key]) == pytest.approx(report["accuracy"][key], abs=5e-5)
    assert float(acc["drop"].split()[0]) == pytest.approx(-100 * report["accuracy"]["drop"], abs=5e-3)
    # each accuracy with its Wilson interval, the drop with its paired one (fp32 ONNX: fidelity, none)
    shown = {
        a["data-key"]: cells[1][0].get("interval", "")
        for a, cells in page.tables["accuracy"]
        if "data-key" in a
    }
    for key in ("reference", "model"):
        interval = report["accuracy"]["intervals"][key]
        assert shown[key] == f"[{100 * interval['low']:.2f}%, {100 * interval['high']:.2f}%]"
    assert shown["fp32_onnx"] == "" and shown["drop"].endswith(" pt]")

    perf = {
        a["data-key"]: [c for _, c in cells] for a, cells in page.tables["performance"] if "data-key" in a
    }
    assert int(perf["size"][1]) == report["size"]["fp32_bytes"]
    assert int(perf["size"][2]) == report["size"]["model_bytes"]
    lat = report["latency"]
    for p in ("p50_ms", "p90_ms"):
        assert close(number(perf[p][1]), lat["fp32"][p])
        assert close(number(perf[p][2]), lat["model"][p])
    assert float(perf["p50_ms"][3].rstrip("x")) == pytest.approx(lat["ratio_p50"], rel=1e-3)

    charts = svgs(text)
    # bars are drawn to scale: the size bars stand in the ratio report.json gives
    fp32_bar, model_bar = rects(charts["size-chart"])
    assert float(model_bar.get("width", 0)) / float(fp32_bar.get("width", 1)) == pytest.approx(
        report["size"]["ratio"], rel=1e-3
    )
    latency = {float(r.get("data-value", "nan")) for r in rects(charts["latency-chart"])}
    assert latency == {lat[m][p] for m in ("fp32", "model") for p in ("p50_ms", "p90_ms")}


@pytest.mark.slow
def test_histogram_counts_every_error_and_is_drawn_to_scale(passed: Rendered) -> None:
    report, text, _ = passed
    charts = svgs(text)
    for name, hist in report["validation"]["abs_error_histograms"].items():
        metrics = report["validation"]["outputs"][name]
        edges, counts = hist["edges"], hist["counts"]
        assert len(counts) == 20 and len(edges) == 21
        assert edges == sorted(edges) and edges[0] > 0
        # the last edge is the largest error; every element is counted exactly once
        assert edges[-1] == pytest.approx(metrics["max_abs"], rel=1e-12)
        assert sum(counts) + hist["zero"] + hist["below"] + hist["nonfinite"] == hist["total"]
        assert hist["total"] == report["validation"]["samples"] * 10  # digits: 10 class scores
        bars = rects(charts[f"hist-{name}"])
        assert [int(b.get("data-count", -1)) for b in bars] == counts
        tallest = max(float(b.get("height", 0)) for b in bars)
        for bar, count in zip(bars, counts, strict=True):
            assert float(bar.get("height", 0)) / tallest == pytest.approx(count / max(counts), abs=1e-3)


@pytest.mark.slow
def test_failed_checks_are_highlighted_with_the_tolerance_that_would_pass(failed: Rendered) -> None:
    report, _, page = failed
    checks = report["validation"]["checks"]
    rows = [(a, cells) for a, cells in page.tables["checks"] if "class" in a]
    assert len(rows) == len(checks)
    for (attrs, cells), check in zip(rows, checks, strict=True):
        assert (
            attrs["class"]
            == {"passed": "pass", "failed": "fail", "inconclusive": "undecided"}[check["verdict"]]
        )
        by_field = {a.get("data-field"): text for a, text in cells}
        assert close(number(by_field["measured"]), check["measured"])
        if check["verdict"] == "passed":
            assert by_field["needed"] == ""
        elif check["verdict"] == "failed":
            assert by_field["needed"] == f"--tolerance '{check['needed']}'"
        else:  # 8 held-out samples: the nonfinite check, none seen, is undecided
            assert by_field["needed"] == f"about {check['samples_to_settle']} held-out samples"
        iv = check["interval"]  # max_abs and nonfinite: the share of inputs that may be beyond the bound
        if iv["method"] == "share-beyond":
            assert by_field["interval"] == f"<={100 * iv['high']:.2g}% of inputs beyond"
        else:
            low, high = (number(x) for x in by_field["interval"].strip("[]").split(", "))
            assert close(low, iv["low"]) and close(high, iv["high"])
    assert any(c["verdict"] == "failed" and c["metric"] == "cosine" for c in checks)
    assert any(c["verdict"] == "inconclusive" and c["metric"] == "nonfinite" for c in checks)
    assert "FAILED" in page.texts["h1"]  # a failed check fails the run, whatever else is undecided


@pytest.mark.slow
def test_sensitivity_chart_shows_the_reports_ranking(failed: Rendered) -> None:
    """A failed export ranks its layers (report["sensitivity"]); the page draws that ranking."""
    report, text, page = failed
    sens = report.get("sensitivity")
    assert sens and sens.get("available"), sens
    ranking = sens["ranking"]
    assert ranking
    rows = [a for a, cells in page.tables["sensitivity"] if "data-node" in a]
    assert [a["data-node"] for a in rows] == [r["node"] for r in ranking]
    chart = svgs(text)["sensitivity-chart"]
    drawn = [float(r.get("data-value", "nan")) for r in rects(chart)]

    def db(v: Any) -> float:
        return math.inf if v == "inf" else -math.inf if v == "-inf" else float(v)

    keys = ("isolated_model_output_sqnr_db", "isolated_sqnr_db", "cumulative_sqnr_db")
    expected = [db(r[k]) for r in ranking[:30] for k in keys if r.get(k) is not None]
    assert drawn == expected


@pytest.mark.slow
def test_text_from_the_report_is_escaped(passed: Rendered) -> None:
    report, _, _ = passed
    hostile = "<script>alert(1)</script> & <img src=x>"
    page_text = render_html(Report.from_json({**report, "notes": [*report["notes"], hostile]}))
    page = Page(page_text)
    assert not {t for t, _ in page.tags} & {"script", "img"}
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;img src=x&gt;" in page_text


# --- a real browser, where one is installed -----------------------------------------------------

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.slow
@pytest.mark.skipif(BROWSER is None, reason="no chromium installed (the check needs a headless browser)")
def test_a_headless_browser_renders_the_page_offline(passed_dir: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    assert BROWSER is not None
    subprocess.run(
        [
            BROWSER,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--proxy-server=127.0.0.1:9",  # any network request would fail
            "--window-size=1280,4000",
            f"--screenshot={shot}",
            (passed_dir / "report.html").resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000  # a blank 1280x4000 PNG is far smaller


# --- the histogram itself, on edge cases the export does not produce -----------------------------


def test_error_histogram_counts_zeros_ties_and_nonfinite_values() -> None:
    import numpy as np

    from qconvert.validation.metrics import abs_error_histogram

    ref = np.linspace(0, 1, 12).reshape(3, 4)
    # every error the same up to rounding (0.2 added to different values), one exact, one NaN
    cand = ref + 0.2
    cand[0, 0] = ref[0, 0]
    cand[2, 3] = np.nan
    hist = abs_error_histogram(ref, cand)
    assert hist["zero"] == 1 and hist["nonfinite"] == 1 and hist["total"] == 12
    assert sum(hist["counts"]) + hist["below"] == 10
    edges = hist["edges"]
    assert edges == sorted(set(edges)) and len(edges) == 21  # strictly increasing
    assert edges[-1] == pytest.approx(0.2)

    identical = abs_error_histogram(ref, ref)
    assert (identical["edges"], identical["counts"], identical["zero"]) == ([], [], 12)
