"""report.html worth pasting into a pull request (issue 14): it names the model, qconvert's version,
the date and the command; numbers rounded, None as "–", human column headers, layers by PyTorch
module path, a per-layer SQNR-along-depth plot and an fp32-vs-quantized scatter; and in a real
headless browser (Debian's chromium) the page is not blank and never scrolls sideways."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

import qconvert

REPO = Path(__file__).resolve().parents[2]
BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
ARGV = ("export", "--auto", "--tolerance", "cosine>=1", "-o", "out")  # fails, so layers are ranked


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], dict[str, Any], str]:
    """(OUT_DIR, report.json, qconvert.json, report.html) of the built-in model held to cosine>=1."""
    work = tmp_path_factory.mktemp("page")
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "120"}
    cmd = [sys.executable, "-c", "from qconvert.cli import main; main()", *ARGV]
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr
    out = work / "out"
    report = json.loads((out / "report.json").read_text())
    manifest = json.loads((out / "qconvert.json").read_text())
    return out, report, manifest, (out / "report.html").read_text(encoding="utf-8")


def test_the_page_names_model_version_date_and_command(page: tuple[Path, dict, dict, str]) -> None:
    _, _, manifest, text = page
    identity = re.search(r'<p id="identity".*?</p>', text, flags=re.S)
    assert identity, "no identity line"
    line = identity.group(0)
    for value in (manifest["source"]["origin"], qconvert.__version__, manifest["created"]):
        assert value in line, value
    assert f"<code>{html.escape(manifest['command'])}</code>" in line  # the manifest's command


def test_figures_are_rounded_headers_human_and_none_is_a_dash(page: tuple[Path, dict, dict, str]) -> None:
    _, report, _, text = page
    assert ">None<" not in text and "None</td>" not in text
    for heading in ("SQNR (dB)", "cosine (worst)", "top-1 agreement", "PyTorch module"):
        assert f"<th>{heading}</th>" in text, heading
    assert "<th>sqnr_db</th>" not in text and "<th>cosine_min</th>" not in text
    sqnr = report["validation"]["outputs"]["logits"]["sqnr_db"]
    assert f">{sqnr:.4g}<" in text and f">{sqnr:.6g}<" not in text  # 4 significant digits


def test_layers_show_their_pytorch_module(page: tuple[Path, dict, dict, str]) -> None:
    _, report, _, text = page
    ranking = report["sensitivity"]["ranking"]
    assert ranking and all(r["module"] for r in ranking)
    assert {r["module"] for r in ranking} <= {f"features.{i}" for i in range(8)} | {
        f"classifier.{i}" for i in range(4)
    }
    chart = re.search(r'<svg id="sensitivity-chart".*?</svg>', text, flags=re.S)
    assert chart and ranking[0]["module"] in chart.group(0)


def test_depth_plot_and_scatter_draw_the_reports_figures(page: tuple[Path, dict, dict, str]) -> None:
    _, report, _, text = page
    found = {(el := ET.fromstring(s)).get("id"): el for s in re.findall(r"<svg\b.*?</svg>", text, flags=re.S)}
    depth = found["depth-chart"]
    drawn = [float(c.get("data-value", "nan")) for c in depth.iter() if c.tag == "circle"]
    ranking = sorted(report["sensitivity"]["ranking"], key=lambda r: r["depth"])
    assert drawn == [float(r["cumulative_sqnr_db"]) for r in ranking]
    scatter = found["scatter-logits"]
    pairs = report["validation"]["scatter"]["logits"]
    points = [c for c in scatter.iter() if c.tag == "circle"]
    assert len(points) == len(pairs["reference"]) > 100
    # quantized and fp32 agree closely on this model: the points hug the diagonal (cy = size - cx)
    off = [abs(float(p.get("cx")) + float(p.get("cy")) - 300.0) for p in points]
    assert sorted(off)[len(off) // 2] < 10.0


@pytest.mark.skipif(BROWSER is None, reason="no chromium installed (apt-get install chromium)")
def test_chromium_renders_it_not_blank_and_without_sideways_scroll(
    page: tuple[Path, dict, dict, str], tmp_path: Path
) -> None:
    import numpy as np
    from matplotlib.image import imread

    out, _, _, text = page
    assert BROWSER is not None
    # a probe at the end of a copy of the page: after layout, the page records whether it overflows
    probe = (
        "<script>var d=document.documentElement;document.body.setAttribute('data-overflow',"
        "String(d.scrollWidth>d.clientWidth));document.body.setAttribute('data-width',String(d.scrollWidth));"
        "</script>"
    )
    probed = tmp_path / "probed.html"
    probed.write_text(text.replace("</body>", probe + "</body>"), encoding="utf-8")
    common = [BROWSER, "--headless", "--disable-gpu", "--no-sandbox", "--proxy-server=127.0.0.1:9"]
    for width in (1280, 720):  # a laptop, and a narrow window beside the pull request
        dom = subprocess.run(
            [*common, f"--window-size={width},3000", "--dump-dom", probed.as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        assert 'data-overflow="false"' in dom, (width, re.search(r'data-width="\d+"', dom))
    shot = tmp_path / "report.png"
    subprocess.run(
        [*common, "--window-size=1280,3000", f"--screenshot={shot}", (out / "report.html").as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    pixels = np.asarray(imread(str(shot)))[..., :3]
    ink = (pixels.mean(axis=2) < 0.8).mean()  # share of pixels darker than the white page
    assert 0.005 < ink < 0.6, ink  # text, tables and charts drawn; not blank, not a solid block
    assert len({tuple(p) for p in pixels[::7, ::7].reshape(-1, 3)}) > 20  # colours: charts, verdict
