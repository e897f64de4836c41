"""Validate stages on their own: the order of VALIDATE, flags refused by PlanChecks before any model
runs, and failures that name their stage and the stages before it. The models are two-node ONNX graphs
(tests/_models.py: write_matmul_relu) run for real by onnxruntime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _models import write_matmul_relu

from qconvert.errors import ConfigError, QConvertError
from qconvert.pipeline.validating import VALIDATE, validate
from qconvert.results import SCHEMA_VERSION, ValidationReport, ValidationRun
from qconvert.settings import ValidateConfig
from qconvert.validation.intervals import PASSED

SAMPLES = 160  # enough for the default bounds to settle (top1_agreement needs 125 identical samples)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 3))
    np.savez(tmp_path / "heldout.npz", x=rng.standard_normal((SAMPLES, 4)).astype(np.float32))
    return {
        "candidate": write_matmul_relu(tmp_path / "candidate.onnx", weight),
        "reference": write_matmul_relu(tmp_path / "reference.onnx", weight),
        "wide": write_matmul_relu(tmp_path / "wide.onnx", rng.standard_normal((4, 5))),
        "data": tmp_path / "heldout.npz",
    }


def _run(files: dict[str, Path], **settings: object) -> tuple[ValidationRun, list[str]]:
    """validate() with settings_dir=None (no tolerance file read); the stages that reported progress."""
    events: list[str] = []

    def progress(stage: str, message: str, done: int | None = None, total: int | None = None) -> None:
        events.append(stage)

    options = {"reference": str(files["reference"]), "data": str(files["data"]), **settings}
    config = ValidateConfig(str(files["candidate"]), settings_dir=None, **options)  # type: ignore[arg-type]
    return validate(config, progress), events


def test_validate_order_is_one_tuple_and_needs_only_what_earlier_stages_give() -> None:
    names = [s.name for s in VALIDATE]
    assert names[0] == "find" and names[-1] == "write" and len(set(names)) == len(names)
    assert names.index("plan") < names.index("load") < names.index("reference") < names.index("candidate")
    given = {"config", "progress", "stack", "notes", "started"}
    for stage in VALIDATE:
        assert set(stage.needs) <= given, (stage.name, set(stage.needs) - given)
        given |= set(stage.gives)


def test_a_candidate_equal_to_its_reference_passes_and_writes_its_json(
    files: dict[str, Path], tmp_path: Path
) -> None:
    run, events = _run(files, json_out=tmp_path / "run.json")
    assert run and run.verdict == PASSED
    assert events == ["load", "reference", "candidate", "validate"]  # no probe, no benchmark asked for
    written = json.loads((tmp_path / "run.json").read_text())
    assert written["verdict"] == PASSED and written["samples"] == SAMPLES
    assert written["schema_version"] == SCHEMA_VERSION and "verified_files" not in written  # no manifest
    again = ValidationReport.from_json(written)  # the --json reads back as the typed record it was
    assert again == run.report
    assert isinstance(again.tolerance, tuple) and "cosine>=0.99" in again.tolerance


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"tolerance": "task_drop<=0.01"}, "needs a task metric: pass --metric"),
        ({"tolerance": "collapse_rate<=0.1"}, "add --probe collapse"),
        ({"require_speedup": True, "reference": "model.py:build"}, "--require-speedup times the candidate"),
        ({"json_out": Path("same.txt"), "junit_out": Path("same.txt")}, "name the same file"),
    ],
)
def test_plan_refuses_a_bad_flag_before_any_model_runs(
    files: dict[str, Path], settings: dict[str, object], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(files["data"].parent)
    events: list[str] = []
    with pytest.raises(ConfigError, match=message) as caught:
        _, events = _run(files, **settings)
    assert caught.value.in_stage == "plan"  # type: ignore[attr-defined]
    assert caught.value.after == ("find", "verify", "open", "tolerance")  # type: ignore[attr-defined]
    assert events == []  # refused before the data was read or anything ran


def test_a_candidate_onnx_without_reference_is_refused_in_plan(files: dict[str, Path]) -> None:
    config = ValidateConfig(str(files["candidate"]), data=str(files["data"]), settings_dir=None)
    with pytest.raises(
        ConfigError, match=r"--reference is needed when CANDIDATE is an \.onnx file"
    ) as caught:
        validate(config)
    assert caught.value.in_stage == "plan"  # type: ignore[attr-defined]


def test_a_failure_names_its_stage_and_the_stages_before_it(files: dict[str, Path]) -> None:
    """The reference's output has another shape: refused once both have run, in the 'validate' stage."""
    with pytest.raises(QConvertError, match=r"output 'y' has shape \[160, 5\] in the reference") as caught:
        _run(files, reference=str(files["wide"]))
    assert caught.value.exit_code == 2
    assert caught.value.in_stage == "validate"  # type: ignore[attr-defined]
    assert caught.value.after == (  # type: ignore[attr-defined]
        "find", "verify", "open", "tolerance", "plan", "load", "reference", "simulate", "candidate"
    )  # fmt: skip
