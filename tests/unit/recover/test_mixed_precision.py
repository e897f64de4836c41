"""Mixed precision on real onnxruntime Q/DQ graphs: it raises exactly the layer whose int8 input
breaks the output (a planted activation outlier), in a format the target runs, and restores the
output; it changes nothing, and says so, where int8 already meets the tolerance; its trade-off table
is consistent."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import onnx
import pytest
from _graphs import conv_net, images, run

from qconvert.artifacts import save_onnx
from qconvert.calibrate import Dataset
from qconvert.errors import CalibrationError
from qconvert.quantize.float16 import emulate_fp16
from qconvert.recover import RECOVERY
from qconvert.recover.base import RecoveryInput, StepResult, quantize_candidate
from qconvert.recover.mixed_precision import MixedPrecision
from qconvert.targets import TARGETS
from qconvert.tolerance import Bound, Tolerance
from qconvert.validation import compare

GOAL = Tolerance((Bound("sqnr_db", 25.0), Bound("top1_agreement", 0.9)))


def _input(target: str, tmp_path: Path, tolerance: Tolerance = GOAL) -> RecoveryInput:
    t = TARGETS.get(target)
    qc = t.bind().quantize_config(8, "static", "minmax")
    if target == "cpu":
        qc = replace(qc, format="qdq", reduce_range=False)
    # no timer: the latency cost is the nominal one, the same on every machine
    return RecoveryInput(
        qc=qc,
        calibration=Dataset("calib", {"x": images(1, 32)}),
        work=tmp_path,
        formats=t.layer_formats,
        tolerance=tolerance,
    )


def _mixed(target: str, outlier: float, tmp_path: Path, **kw: Any) -> tuple[StepResult, onnx.ModelProto]:
    fp32 = conv_net(outlier)
    inp = _input(target, tmp_path, **kw)
    quantized = quantize_candidate(fp32, inp)
    return MixedPrecision(samples=32, screen_samples=16)(fp32, quantized, inp), quantized


def _sqnr(fp32: onnx.ModelProto, model: onnx.ModelProto | Path) -> float:
    held = images(7, 64)  # never the calibration samples
    return float(compare(run(fp32, held), run(model, held))["sqnr_db"])


@pytest.mark.parametrize(("target", "allowed"), [("cpu", {"a16w8", "fp32"}), ("tensorrt", {"fp16", "fp32"})])
def test_raises_exactly_the_broken_layer_and_restores_the_output(
    target: str, allowed: set[str], tmp_path: Path
) -> None:
    fp32 = conv_net(1000.0)
    result, quantized = _mixed(target, 1000.0, tmp_path)
    before = _sqnr(fp32, quantized)
    assert before < 15  # the planted outlier breaks plain int8
    assert result.changed
    chosen = result.details["layer_formats"]
    assert list(chosen) == ["conv2"] and chosen["conv2"] in allowed
    assert result.settings == {"layer_formats": (("conv2", chosen["conv2"]),)}
    onnx.checker.check_model(result.model)
    # held-out samples: the explicit graph (through the fp16 stand-in where it has fp16 layers)
    path = save_onnx(result.model, tmp_path / "mixed.onnx")
    if chosen["conv2"] == "fp16":
        path = emulate_fp16(path, tmp_path / "mixed-emulated.onnx")
    assert _sqnr(fp32, path) > 25 > before
    assert "1 of" in result.notes[0] and "meets the tolerance" in result.notes[0]
    # the graph passes the target's rules once its QuantizeConfig carries the step's settings
    qc = replace(_input(target, tmp_path).qc, **result.settings)
    assert TARGETS.get(target).graph_violations(result.model, qc) == []


def test_nothing_to_raise_changes_nothing_and_says_so(tmp_path: Path) -> None:
    result, quantized = _mixed("cpu", 1.0, tmp_path, tolerance=Tolerance((Bound("cosine", 0.99),)))
    assert not result.changed and result.settings == {}
    assert result.model.SerializeToString() == quantized.SerializeToString()
    assert "no layer raised" in result.notes[0] and "already meets the tolerance" in result.notes[0]
    table = result.details["tradeoff"]
    assert len(table["configurations"]) == 1 and table["configurations"][0]["chosen"]


def test_the_tradeoff_table_is_consistent(tmp_path: Path) -> None:
    result, _ = _mixed("cpu", 1000.0, tmp_path)
    table = result.details["tradeoff"]
    configs = table["configurations"]
    assert table["formats"] == ["int8", "a16w8", "fp32"]
    assert configs[0]["raised"] == {} and configs[0]["layers"] == {"int8": table["layers"]}
    chosen = [i for i, c in enumerate(configs) if c["chosen"]]
    assert chosen == [table["chosen"]]
    pick = configs[table["chosen"]]
    assert pick["pareto"] and pick["meets_goal"]  # on the front, and it met the tolerance
    assert pick["raised"] == result.details["layer_formats"]
    for c in configs:
        assert sum(c["layers"].values()) == table["layers"]
        assert sum(n for f, n in c["layers"].items() if f != "int8") == len(c["raised"])
        assert set(c["raised"].values()) <= {"a16w8", "fp32"}
        assert c["latency_ratio"] is None  # no timer here: latency is predicted, not measured
    # the configurations are steps of one search: each raises more than the one before it
    assert [len(c["raised"]) for c in configs] == sorted(len(c["raised"]) for c in configs)
    assert pick["sqnr_db"] > configs[0]["sqnr_db"] + 10
    assert table["goal"] == ["sqnr_db>=25", "top1_agreement>=0.9"] and not table["latency_measured"]


@pytest.mark.parametrize(("target", "never"), [("cpu", "fp16"), ("qnn", "fp32"), ("openvino", "a16w8")])
def test_only_formats_the_target_runs_are_tried(target: str, never: str, tmp_path: Path) -> None:
    assert never not in TARGETS.get(target).layer_formats
    result, _ = _mixed(target, 1000.0, tmp_path)
    tried = {f for c in result.details["tradeoff"]["configurations"] for f in c["raised"].values()}
    assert tried and tried <= set(TARGETS.get(target).layer_formats) - {"int8"}


def test_a_target_without_layer_formats_and_missing_data(tmp_path: Path) -> None:
    fp32 = conv_net(1000.0)
    inp = _input("cpu", tmp_path)
    quantized = quantize_candidate(fp32, inp)
    none = RECOVERY.get("mixed_precision")(fp32, quantized, replace(inp, formats=("int8",)))
    assert not none.changed and "no per-layer format above int8" in none.notes[0]
    with pytest.raises(CalibrationError, match="--calibration"):
        RECOVERY.get("mixed_precision")(fp32, quantized, replace(inp, calibration=None))
