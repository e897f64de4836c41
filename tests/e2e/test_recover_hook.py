"""The accuracy-recovery hook: --recover steps run in the export (Recover before Quantize, Correct
after it), get a RecoveryInput that can quantize a candidate graph as the run does, and land in
report.json's `recovery`. The steps here are registered by the test itself."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner

from qconvert.cli import app
from qconvert.errors import ConfigError
from qconvert.pipeline import export
from qconvert.recover import RECOVERY, Recovery, RecoveryInput, StepResult
from qconvert.settings import RunConfig


class ScaleNothing(Recovery):
    """A pre step that changes nothing and says so."""

    name = "test-scale-nothing"
    phase = "pre"
    needs_calibration = False

    def run(self, fp32: onnx.ModelProto, quantized: onnx.ModelProto | None, inp: RecoveryInput) -> StepResult:
        assert quantized is None
        return StepResult(fp32, False, ("scaled nothing",), {"layers_scaled": 0})


class MeasureCandidate(Recovery):
    """A post step that quantizes the fp32 graph as the run does and compares it with model.onnx."""

    name = "test-measure-candidate"
    phase = "post"

    def run(self, fp32: onnx.ModelProto, quantized: onnx.ModelProto | None, inp: RecoveryInput) -> StepResult:
        assert quantized is not None and inp.quantize is not None
        again = inp.quantize(fp32)
        ops = [n.op_type for n in again.graph.node]
        same = ops == [n.op_type for n in quantized.graph.node]
        return StepResult(
            quantized,
            False,
            (f"re-quantized the candidate: {ops.count('QuantizeLinear')} QuantizeLinear",),
            {"same_ops_as_model": same},
        )


@pytest.fixture
def steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(RECOVERY._entries, ScaleNothing.name, ScaleNothing())
    monkeypatch.setitem(RECOVERY._entries, MeasureCandidate.name, MeasureCandidate())


@pytest.mark.slow
def test_recovery_steps_run_around_quantize_and_are_reported(
    steps: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    # format pinned: the post step applies to Q/DQ graphs, and cpu's default races Q/DQ against QOperator
    # by measured latency, which a loaded machine can tip either way
    config = RunConfig(
        target="cpu",
        bits=8,
        out_dir=out,
        recover=(ScaleNothing.name, MeasureCandidate.name),
        target_options=(("format", "qdq"),),
    )
    result = export(config)
    assert result.passed
    report = json.loads((out / "report.json").read_text())
    pre, post = report["recovery"]
    assert pre["name"] == ScaleNothing.name and pre["phase"] == "pre" and pre["applied"]
    assert pre["notes"] == ["scaled nothing"] and pre["details"] == {"layers_scaled": 0}
    assert pre["changed"] is False and pre["seconds"] >= 0
    assert post["phase"] == "post" and post["details"] == {"same_ops_as_model": True}
    assert post["notes"][0].startswith("re-quantized the candidate: ") and not post["notes"][0].endswith(
        ": 0 QuantizeLinear"
    )
    assert f"--recover {ScaleNothing.name}: scaled nothing" in report["notes"]
    manifest = json.loads((out / "qconvert.json").read_text())
    assert manifest["settings"]["recover"] == [ScaleNothing.name, MeasureCandidate.name]
    assert f"--recover {ScaleNothing.name},{MeasureCandidate.name}" in manifest["command"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing written beside OUT_DIR


@pytest.mark.slow
def test_a_step_for_another_format_is_skipped_with_its_reason(
    steps: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    export(RunConfig(target="cpu", bits=8, mode="dynamic", out_dir=out, recover=(ScaleNothing.name,)))
    (entry,) = json.loads((out / "report.json").read_text())["recovery"]
    assert entry["applied"] is False and "qdq" in entry["reason"]


def test_an_unknown_step_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--recover 'no-such-step' is not a known"):
        export(RunConfig(target="cpu", out_dir=tmp_path / "out", recover=("no-such-step",)))
    assert not (tmp_path / "out").exists()


def test_without_recover_the_family_defaults_apply() -> None:
    assert RunConfig().recover is None  # None: the model family's defaults (recover.defaults)
    assert "--recover" not in RunConfig().to_argv(Path("out"))
    assert "--recover none" in " ".join(RunConfig(recover=()).to_argv(Path("out")))


@pytest.mark.slow
def test_cli_recover_takes_comma_separated_names(
    steps: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    names = f"{ScaleNothing.name},{MeasureCandidate.name}"
    result = runner.invoke(app, ["export", "--target", "cpu", "-o", "out", "--recover", names])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [e["name"] for e in report["recovery"]] == [ScaleNothing.name, MeasureCandidate.name]
