"""--exclude / --include: nodes chosen by name, op type or PyTorch module path, on real exports."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from conftest import flat
from typer.testing import CliRunner

from qconvert.cli import app
from qconvert.errors import ConfigError
from qconvert.pipeline import export
from qconvert.quantize.selectors import NodeInfo, matches, node_infos, select
from qconvert.settings import RunConfig

runner = CliRunner()
# the cpu target picks Q/DQ or QOperator by timing; these tests read Q/DQ graphs, so pin it
QDQ = {"target_options": (("format", "qdq"),), "latency_repeats": 3}


def _weight_quantized(model: onnx.ModelProto) -> dict[str, bool]:
    """Conv/Gemm node name -> whether its weight comes through a DequantizeLinear."""
    dq_out = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return {n.name: n.input[1] in dq_out for n in model.graph.node if n.op_type in ("Conv", "Gemm")}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in model's fp32 export, as the pipeline prepares it (reference.onnx keeps the metadata)."""
    out = tmp_path_factory.mktemp("sel") / "plain"
    export(RunConfig(target="cpu", out_dir=out, latency_repeats=3))
    return out / "reference.onnx"


def test_module_paths_come_from_the_pytorch_model(prepared: Path) -> None:
    nodes = {n.name: n for n in node_infos(prepared)}
    convs = [n for n in nodes.values() if n.op == "Conv"]
    assert [n.module for n in convs] == ["features.0", "features.2", "features.5"]
    assert {n.module for n in nodes.values() if n.op == "Gemm"} == {"classifier.1", "classifier.3"}


def test_selector_forms() -> None:
    node = NodeInfo("node_conv2d", "Conv", "features.0")
    assert matches("features.0.*", node)  # the module itself, as a user writes it
    assert matches("module:features.*", node)
    assert matches("op:Conv", node) and not matches("op:Gemm", node)
    assert matches("name:node_conv*", node) and not matches("name:features.0", node)
    assert matches("re:conv2d$", node) and not matches("re:^conv", node)
    assert not matches("features.1", node)
    with pytest.raises(ConfigError, match="regular expression"):
        matches("re:(", node)


def test_a_selector_that_matches_nothing_is_an_error() -> None:
    nodes = [NodeInfo("a", "Conv", "features.0"), NodeInfo("b", "Gemm", "head")]
    assert select(nodes, ["op:Gemm", "features.*"], "--exclude") == ["b", "a"]
    with pytest.raises(ConfigError) as err:
        select(nodes, ["op:Gemm", "typo.*"], "--exclude")
    text = str(err.value)
    assert "--exclude 'typo.*' matches no node" in text and "features.0" in text and "Conv, Gemm" in text


@pytest.mark.slow
def test_exclude_by_module_keeps_that_layer_float(tmp_path: Path) -> None:
    result = export(RunConfig(target="cpu", exclude=("features.0.*",), out_dir=tmp_path / "o", **QDQ))
    quantized = _weight_quantized(onnx.load(str(tmp_path / "o" / "model.onnx")))
    assert quantized == {
        "node_conv2d": False,
        "node_conv2d_1": True,
        "node_conv2d_2": True,
        "node_linear": True,
        "node_linear_1": True,
    }
    assert list(result.manifest["quantization"]["nodes_to_exclude"]) == ["node_conv2d"]
    assert "--exclude 'features.0.*'" in result.manifest["command"]


@pytest.mark.slow
def test_include_limits_quantization_to_the_matches(tmp_path: Path) -> None:
    export(RunConfig(target="cpu", include=("module:classifier.*",), out_dir=tmp_path / "o", **QDQ))
    quantized = _weight_quantized(onnx.load(str(tmp_path / "o" / "model.onnx")))
    assert {name for name, q in quantized.items() if q} == {"node_linear", "node_linear_1"}


def test_cli_refuses_an_unmatched_selector_and_writes_nothing(tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", "--exclude", "nosuch", "-o", str(tmp_path / "o")])
    text = flat(result.output)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--exclude 'nosuch' matches no node" in text and "classifier.1" in text
    assert not (tmp_path / "o").exists()


def test_include_is_refused_where_the_mode_cannot_honour_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="do not apply to fp16"):
        export(RunConfig(target="cuda", bits=16, include=("op:Conv",), out_dir=tmp_path / "o"))
