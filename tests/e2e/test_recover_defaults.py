"""Recovery in real exports of the built-in conv net: the family default (bias correction) runs unless
--recover says otherwise, and --auto tries the family ladder before keeping layers in float."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from qconvert.config import RunConfig
from qconvert.pipeline import export

BASE = RunConfig(target="cpu", target_options=(("format", "qdq"),), latency_repeats=3)


def test_conv_net_gets_bias_correction_by_default(tmp_path: Path) -> None:
    result = export(replace(BASE, out_dir=tmp_path / "default"))
    report = result.report
    assert report["defaults"]["family"] == "conv" and report["defaults"]["applied"]
    assert [s["name"] for s in report["recovery"]] == ["bias_correction"]
    assert report["recovery"][0]["changed"]
    assert result.manifest["settings"]["recover"] is None  # the user named none: the defaults ran

    off = export(replace(BASE, out_dir=tmp_path / "off", recover=()))
    assert "recovery" not in off.report and not off.report["defaults"]["applied"]
    assert "--recover none" in off.manifest["command"]


def test_auto_tries_the_ladder_then_keeps_layers_in_float(tmp_path: Path) -> None:
    # an SQNR no int8 graph of this model reaches: every rung is tried, none is enough
    config = replace(
        BASE, out_dir=tmp_path / "auto", tolerance="sqnr_db>=90", auto=True, auto_budget=1, auto_seconds=300
    )
    result = export(config)
    assert not result
    attempts = result.report["auto"]
    assert attempts[0]["recover"] == ["bias_correction"]  # the default run it started from
    tried = [(*a["recover"], a["calibration_method"]) for a in attempts[1:]]
    assert tried[0] == ("bias_correction", "clip_weights", "minmax")  # cheapest first
    assert any(a["calibration_method"] == "mse" for a in attempts[1:])
    assert any("adaround" in a["recover"] for a in attempts[1:])
    assert all(a["seconds"] >= 0 and "sqnr_db" in a["worst"] for a in attempts)
    kept = [a for a in attempts if a["kept"]]
    # what shipped is the best attempt kept, and its figure is what was validated
    best = max(kept, key=lambda a: a["score"])
    assert [s["name"] for s in result.report["recovery"]] == best["recover"]
    assert result.report["fallback"]["needed"]  # then mixed precision (float fallback) was tried
    assert (tmp_path / "auto" / "model.onnx").exists()  # the best candidate is written, marked FAILED
    assert not result.manifest["validation"]["passed"]
