"""Recovery in real exports: a MobileNet-style conv net gets its family defaults (GPTQ rounding, bias
correction, MSE ranges, float stem and logits) unless --recover or --calibration-method say otherwise; the built-in digits CNN (no depthwise convolutions)
gets none; --auto tries the family ladder before keeping layers in float."""

from __future__ import annotations

import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from qconvert.pipeline import export
from qconvert.settings import RunConfig

BASE = RunConfig(target="cpu", target_options=(("format", "qdq"),), latency_repeats=3)

MOBILENET = """
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU6(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU6(),
        nn.Conv2d(16, 32, 1),
        nn.Conv2d(32, 64, 1), nn.ReLU6(),
        nn.Conv2d(64, 64, 3, padding=1, groups=64), nn.ReLU6(),
        nn.Conv2d(64, 32, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()

def example_inputs():
    return (torch.randn(1, 3, 32, 32),)
"""


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("src") / "mobilenet.py"
    path.write_text(textwrap.dedent(MOBILENET))
    return f"{path}:build"


def test_depthwise_conv_net_gets_its_defaults(mobilenet: str, tmp_path: Path) -> None:
    config = replace(BASE, source=mobilenet, calibration="random", tolerance="top1_agreement>=0")
    result = export(replace(config, out_dir=tmp_path / "default"))
    report = result.report
    assert report["defaults"]["family"] == "conv" and report["defaults"]["applied"]
    assert [s["name"] for s in report["recovery"]] == ["gptq", "bias_correction"]
    assert all(step["changed"] for step in report["recovery"])
    assert any(n.startswith("stem kept in float") for n in report["notes"])
    quantization = result.manifest["quantization"]
    assert result.manifest["settings"]["recover"] is None  # the user named none: the defaults ran
    assert len(quantization["nodes_to_exclude"]) == 3  # stem conv, depthwise, projection
    assert quantization["calibration_method"] == "mse"
    assert ("OpTypesToExcludeOutputQuantization", ("Gemm",)) in quantization["extra_options"]
    assert "--calibration-method" not in result.manifest["command"]  # the rerun gets the same defaults

    off = export(replace(config, out_dir=tmp_path / "off", recover=()))
    assert "recovery" not in off.report and not off.report["defaults"]["applied"]
    assert not off.manifest["quantization"]["nodes_to_exclude"]
    assert off.manifest["quantization"]["calibration_method"] == "minmax"
    assert not off.manifest["quantization"]["extra_options"]
    assert "--recover none" in off.manifest["command"]

    named = export(replace(config, out_dir=tmp_path / "named", calibration_method="percentile"))
    assert named.manifest["quantization"]["calibration_method"] == "percentile"  # the user's wins
    assert [s["name"] for s in named.report["recovery"]] == ["gptq", "bias_correction"]


def test_a_conv_net_without_depthwise_convs_gets_no_defaults(tmp_path: Path) -> None:
    result = export(replace(BASE, out_dir=tmp_path / "digits"))
    assert result.report["defaults"]["family"] == "conv" and not result.report["defaults"]["applied"]
    assert "recovery" not in result.report


def test_auto_tries_the_ladder_then_keeps_layers_in_float(tmp_path: Path) -> None:
    # an SQNR no int8 graph of this model reaches: every rung is tried, none is enough
    config = replace(
        BASE, out_dir=tmp_path / "auto", tolerance="sqnr_db>=90", auto=True, auto_budget=1, auto_seconds=300
    )
    result = export(config)
    assert not result
    attempts = result.report["auto"]
    assert attempts[0]["recover"] == []  # the default run it started from
    tried = [(*a["recover"], a["calibration_method"]) for a in attempts[1:]]
    assert tried[0] == ("bias_correction", "minmax")  # cheapest first
    assert any(a["calibration_method"] == "mse" for a in attempts[1:])
    assert any("adaround" in a["recover"] for a in attempts[1:])
    assert all(a["seconds"] >= 0 and "sqnr_db" in a["worst"] for a in attempts)
    kept = [a for a in attempts if a["kept"]]
    # what shipped is the best attempt kept, and its figure is what was validated
    best = max(kept, key=lambda a: a["score"])
    assert [s["name"] for s in result.report.get("recovery", [])] == best["recover"]
    assert result.report["fallback"]["needed"]  # then mixed precision (float fallback) was tried
    assert (tmp_path / "auto" / "model.onnx").exists()  # the best candidate is written, marked FAILED
    assert not result.manifest["validation"]["passed"]


def test_auto_fallback_recovers_again_with_the_kept_nodes_in_float(mobilenet: str, tmp_path: Path) -> None:
    """Bias correction and GPTQ measured a graph in which every node was quantized; once the float
    fallback keeps nodes in float, the shipped graph is recovered again under those exclusions."""
    config = replace(
        BASE,
        source=mobilenet,
        calibration="random",
        tolerance="sqnr_db>=60",
        auto=True,
        auto_budget=4,
        auto_seconds=1,
        out_dir=tmp_path / "auto",
    )
    result = export(config)
    assert result, result.report["notes"]
    fallback = result.report["fallback"]
    assert fallback["needed"] and fallback["kept_float"], fallback
    assert any("re-run with the kept nodes in float; that graph passes" in n for n in result.report["notes"])
