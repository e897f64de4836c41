"""The cpu target's format race (stages/quantize.py): an alternative format that onnxruntime cannot
quantize, load or run is left out of the race with a note, instead of ending the export with an
internal error (a QOperator candidate of wav2vec2 once gave an invalid graph); the default format
must still work."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qconvert.artifacts import ArtifactDir
from qconvert.calibrate import Dataset
from qconvert.errors import QuantizationError
from qconvert.settings import RunConfig
from qconvert.stages.quantize import _fastest
from qconvert.targets import TARGETS, Provider


def _mlp(path: Path) -> Path:
    """Two MatMuls with a Relu between them: QDQ or QLinearMatMul, whichever format is chosen."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(8, 16)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(size=(16, 4)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], inits,
    )  # fmt: skip
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


CPU = [Provider("CPUExecutionProvider")]


def _race(
    tmp_path: Path, formats: list[tuple[str, str]]
) -> tuple[str, set[str], dict[str, float], list[str]]:
    """Race (format, activation type) candidates on a small MLP, in an artifact folder."""
    qc = replace(TARGETS.get("cpu").bind().quantize_config(8, "static", "minmax"), reduce_range=False)
    candidates = [replace(qc, format=f, activation_type=a) for f, a in formats]
    rng = np.random.default_rng(0)
    calibration = Dataset("calib", {"x": rng.normal(size=(16, 8)).astype(np.float32)})
    heldout = Dataset("held", {"x": rng.normal(size=(4, 8)).astype(np.float32)})
    src = _mlp(tmp_path / "mlp.onnx")
    with ArtifactDir(tmp_path / "out") as art:
        chosen, path, times, dropped = _fastest(
            candidates, src, art, calibration, heldout, CPU, RunConfig(latency_repeats=10), lambda d, t: None
        )
        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    return chosen.format, ops, times, dropped


def test_a_failing_alternative_format_is_left_out_with_a_note(tmp_path: Path) -> None:
    # onnxruntime's quantizer refuses 16-bit activations in QOperator format (a real ValueError)
    chosen, ops, times, dropped = _race(tmp_path, [("qdq", "uint8"), ("qoperator", "uint16")])
    assert chosen == "qdq" and set(times) == {"qdq"}
    assert "QuantizeLinear" in ops and "QLinearMatMul" not in ops
    assert len(dropped) == 1 and dropped[0].startswith("format qoperator left out of the race: "), dropped
    assert "16-bit" in dropped[0], dropped


def test_both_formats_race_when_both_work(tmp_path: Path) -> None:
    chosen, _, times, dropped = _race(tmp_path, [("qdq", "uint8"), ("qoperator", "uint8")])
    assert set(times) == {"qdq", "qoperator"} and dropped == []
    assert chosen in times


def test_a_failing_default_format_still_fails_the_run(tmp_path: Path) -> None:
    with pytest.raises(QuantizationError, match="16-bit"):
        _race(tmp_path, [("qoperator", "uint16"), ("qdq", "uint8")])
