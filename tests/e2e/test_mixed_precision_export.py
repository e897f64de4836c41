"""Mixed precision in real exports of a small PyTorch conv net with a planted activation outlier
(conv1's channel 0 is 1000x larger, conv2 reads it 1000x smaller: the fp32 function is unchanged, and
per-tensor int8 of conv1's output breaks conv2): `--recover mixed_precision` raises conv2 in a format
the target runs and passes; the manifest, report.json's `tradeoff` and report.html say what was
chosen; `--auto` reaches it as its last rung."""

from __future__ import annotations

import json
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from qconvert.pipeline import export
from qconvert.settings import RunConfig

PLANTED = """
import torch
from torch import nn


class Planted(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, image):
        x = torch.relu(self.conv1(image))
        x = torch.relu(self.conv2(x))
        x = self.conv3(x).mean(dim=(2, 3))
        return self.head(x)


def build():
    torch.manual_seed(0)
    model = Planted()
    with torch.no_grad():
        model.conv1.bias.uniform_(0.0, 0.2)
        model.conv1.weight[0] *= 1000.0
        model.conv1.bias[0] *= 1000.0
        model.conv2.weight[:, 0] /= 1000.0
    return model.eval()


def example_inputs():
    return (torch.randn(1, 3, 12, 12),)
"""

BASE = RunConfig(target="cpu", calibration="random", latency_repeats=3, tolerance="sqnr_db>=25")


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("src") / "planted.py"
    path.write_text(textwrap.dedent(PLANTED))
    return f"{path}:build"


def _convs(out: Path) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(str(out / "model.onnx")).graph.node if n.op_type == "Conv"]


def test_recover_mixed_precision_raises_the_broken_layer_and_passes(planted: str, tmp_path: Path) -> None:
    plain = export(replace(BASE, source=planted, out_dir=tmp_path / "plain", recover=()))
    assert not plain  # the planted outlier breaks int8
    out = tmp_path / "mixed"
    result = export(replace(BASE, source=planted, out_dir=out, recover=("mixed_precision",)))
    assert result, result.report["validation"]["checks"]
    report = result.report
    chosen = report["recovery"][0]["details"]["layer_formats"]
    assert list(chosen) == [_convs(out)[1]] and set(chosen.values()) <= {"a16w8", "fp32"}  # conv2
    written = json.loads((out / "qconvert.json").read_text())["quantization"]
    assert written["layer_formats"] == [list(kv) for kv in chosen.items()]
    assert written["format"] == "qdq"  # raced formats narrowed to what the step takes
    table = report["tradeoff"]
    assert table["latency_measured"]  # the cpu provider is here: latency measured, interleaved
    pick = table["configurations"][table["chosen"]]
    assert pick["chosen"] and pick["pareto"] and pick["latency_ratio"] > 0
    assert "tradeoff" not in report["recovery"][0]["details"]  # one table, at the top level
    assert json.loads((out / "report.json").read_text())["tradeoff"]["chosen"] == table["chosen"]
    page = (out / "report.html").read_text()
    assert 'id="tradeoff-table"' in page and "Mixed precision: what was tried" in page


def test_fp16_layers_on_tensorrt_are_validated_through_the_fp16_stand_in(
    planted: str, tmp_path: Path
) -> None:
    config = replace(
        BASE, source=planted, target="tensorrt", out_dir=tmp_path / "trt", recover=("mixed_precision",)
    )
    result = export(config)
    chosen = result.report["recovery"][0]["details"]["layer_formats"]
    assert list(chosen) == [_convs(tmp_path / "trt")[1]] and set(chosen.values()) <= {"fp16", "fp32"}
    assert not result.report["tradeoff"]["latency_measured"]  # no TensorRT here: nominal cost
    if "fp16" in chosen.values():
        assert result.report["stand_in"] == "fp16"
    assert result, result.report["validation"]["checks"]


def test_auto_reaches_mixed_precision_after_the_cheap_rungs(planted: str, tmp_path: Path) -> None:
    config = replace(BASE, source=planted, out_dir=tmp_path / "auto", auto=True, auto_seconds=300)
    result = export(config)
    assert result
    attempts = result.report["auto"]
    last = attempts[-1]
    assert last["recover"][-1] == "mixed_precision" and last["passed"] and last["kept"]
    assert all("figures" in a and a["seconds"] >= 0 for a in attempts)
    assert last["score"] > last["score_before"]
    assert result.report["tradeoff"]["configurations"]
    assert result.report["fallback"] == {"needed": False}  # mixed precision was enough
