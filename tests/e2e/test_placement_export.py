"""--placement in real exports: a hard-swish MobileNet-style net gets Q/DQ pairs on its convolutions
only by default on cpu, and only on their inputs with --placement inputs (Q/DQ format kept)."""

from __future__ import annotations

import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from qconvert.errors import ConfigError
from qconvert.pipeline import export
from qconvert.settings import RunConfig

HARDSWISH_NET = """
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.Hardswish(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.Hardswish(),
        nn.Conv2d(16, 32, 1), nn.Hardswish(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.Hardswish(),
        nn.Conv2d(32, 16, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).eval()

def example_inputs():
    return (torch.randn(1, 3, 32, 32),)
"""


@pytest.fixture(scope="module")
def hardswish_net(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("src") / "hardswish_net.py"
    path.write_text(textwrap.dedent(HARDSWISH_NET))
    return f"{path}:build"


def test_a_gated_conv_net_gets_its_placement(hardswish_net: str, tmp_path: Path) -> None:
    config = RunConfig(
        source=hardswish_net,
        target="cpu",
        calibration="random",
        tolerance="top1_agreement>=0",
        latency_repeats=3,
        recover=None,
    )
    result = export(replace(config, out_dir=tmp_path / "default"))
    defaults = result.report["defaults"]
    # on cpu the placement is raced on calibration samples: both figures recorded, the choice used
    raced = defaults["placement_measured"]
    assert [m["placement"] for m in raced["measured"]] == ["compute", "all"]
    assert all(m["sqnr_db"] > 0 and m["p50_ms"] > 0 for m in raced["measured"])
    assert defaults["placement"] == raced["chosen"]
    assert any(n.startswith("Q/DQ placement chosen by measurement") for n in result.report["notes"])
    quantization = result.manifest["quantization"]
    if raced["chosen"] == "compute":
        stem = set(quantization["nodes_to_exclude"])
        # the convolutions and the classifier, not the hard-swishes; the float stem stays out
        assert quantization["nodes_to_include"] and not stem & set(quantization["nodes_to_include"])
    else:
        assert not quantization["nodes_to_include"]
    assert "--placement" not in result.manifest["command"]  # the rerun races again, as here

    # the user's --placement holds with the family's steps off too
    inputs = export(replace(config, out_dir=tmp_path / "inputs", placement="inputs", recover=()))
    quantization = inputs.manifest["quantization"]
    assert quantization["format"] == "qdq"  # QOperator kernels cannot leave an output float
    kinds = dict(quantization["extra_options"])["OpTypesToExcludeOutputQuantization"]
    assert {"Conv", "Gemm"} <= set(kinds)
    assert "--placement inputs" in " ".join(inputs.manifest["command"].split())


def test_an_unknown_placement_is_refused() -> None:
    with pytest.raises(ConfigError, match="--placement 'everywhere'"):
        RunConfig(placement="everywhere")


def test_inputs_placement_without_qdq_is_refused_naming_the_flag(tmp_path: Path) -> None:
    config = RunConfig(
        target="cpu",
        target_options=(("format", "qoperator"),),
        placement="inputs",
        out_dir=tmp_path / "out",
        latency_repeats=3,
    )
    with pytest.raises(ConfigError, match="--placement inputs needs the Q/DQ format") as raised:
        export(config)
    assert raised.value.exit_code == 2
    assert not (tmp_path / "out").exists()  # refused before anything was written
