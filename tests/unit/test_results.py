"""results.py: Report, Manifest and ValidationReport round-trip through JSON and carry a schema version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qconvert.errors import SourceError
from qconvert.report import check_line, level_text
from qconvert.results import SCHEMA_VERSION, Figures, Manifest, Report, ValidationReport

REPORT: dict[str, Any] = {
    "passed": True,
    "verdict": "passed",
    "target": "cpu",
    "bits": 8,
    "mode": "static",
    "validated_on": "CPUExecutionProvider",
    "validation_exact_qdq": False,
    "stand_in": None,
    "validation": {"passed": True, "outputs": {"logits": {"cosine": 0.999}}},
    "on_cpu_kernels": None,
    "export_fidelity": {"logits": {"cosine": 1.0}},
    "accuracy": None,
    "size": {"fp32_bytes": 100, "model_bytes": 30, "ratio": 0.3},
    "latency": {"provider": "CPUExecutionProvider", "ratio_p50": 0.8},
    "data": {"calibration_random": False, "validation_random": False},
    "fusions": None,
    "ops": {"fp32": {"Conv": 2}, "model": {"QuantizeLinear": 3}, "float_between_qdq": []},
    "notes": ["a note"],
}


def test_report_round_trips_and_leaves_out_empty_optional_entries() -> None:
    report = Report.from_json({**REPORT, "schema_version": SCHEMA_VERSION})
    assert report.notes == ("a note",) and report.recovery == ()
    out = report.to_json()
    assert out == {"schema_version": SCHEMA_VERSION, **REPORT}
    assert "recovery" not in out and "sensitivity" not in out and "fallback" not in out
    assert Report.from_json(json.loads(json.dumps(out))) == report


def test_report_keeps_recovery_sensitivity_and_fallback_when_present() -> None:
    steps = ({"name": "x", "phase": "pre", "notes": ["n"]},)
    report = Report(**{**REPORT, "notes": ("a note",)}, recovery=steps, sensitivity={"available": False})
    out = report.to_json()
    assert out["recovery"] == list(steps) and out["sensitivity"] == {"available": False}
    assert Report.from_json(out).recovery == steps


def test_files_from_before_versioning_read_as_version_0() -> None:
    assert Report.from_json(REPORT).schema_version == 0


def test_a_report_from_before_intervals_takes_its_verdict_from_passed() -> None:
    # version 1 had no verdict: passed was the point estimates' two-way verdict
    old = {k: v for k, v in REPORT.items() if k != "verdict"}
    assert Report.from_json({**old, "schema_version": 1}).verdict == "passed"
    assert Report.from_json({**old, "passed": False, "schema_version": 1}).verdict == "failed"
    with pytest.raises(SourceError, match="missing entries"):  # a version-2 file must have one
        Report.from_json({**old, "schema_version": 2})


def test_a_newer_schema_is_refused_with_what_to_do() -> None:
    with pytest.raises(SourceError, match="schema_version 99 is newer than this qconvert reads"):
        Report.from_json({**REPORT, "schema_version": 99})


def test_a_report_with_missing_entries_is_a_source_error() -> None:
    with pytest.raises(SourceError, match=r"report\.json: missing entries"):
        Report.from_json({"passed": True})


def test_manifest_load_reads_an_out_dir(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"no qconvert\.json here"):
        Manifest.load(tmp_path)
    (tmp_path / "qconvert.json").write_text("{not json")
    with pytest.raises(SourceError, match="not valid JSON"):
        Manifest.load(tmp_path)


def test_a_validate_json_from_before_versioning_reads_its_verdict_from_passed() -> None:
    """`qconvert validate --json` files had no schema_version and, before intervals, no verdict."""
    old = {
        "passed": False,
        "candidate": "out",
        "model": "out/model.onnx",
        "reference": "out/reference.onnx",
        "data": "heldout.npz",
        "samples": 60,
        "labels": True,
        "provider": "CPUExecutionProvider",
        "exact_qdq": False,
        "bits": 8,
        "tolerance": ["cosine>=0.99"],
        "tolerance_source": None,
        "task": None,
        "speed": None,
        "collapse": None,
        "notes": [],
        "manifest_sha256": None,
        "seconds": 1.5,
        "validation": {"passed": False, "checks": []},
    }
    run = ValidationReport.from_json(old)
    assert run.schema_version == 0 and run.verdict == "failed" and run.tolerance == ("cosine>=0.99",)
    assert run.to_json() == {"schema_version": 0, **old, "verdict": "failed"}
    with pytest.raises(SourceError, match="validate --json: schema_version 99 is newer"):
        ValidationReport.from_json({**old, "schema_version": 99})


def test_figures_of_a_version_1_report_read_their_verdicts_from_passed() -> None:
    """Before version 2 a check had `passed` and no `verdict`, interval or confidence."""
    check = {
        "output": "logits",
        "metric": "cosine",
        "bound": "cosine>=0.99",
        "measured": 0.98,
        "passed": False,
    }
    validation = {"passed": False, "samples": 40, "outputs": {"logits": {"cosine": 0.98}}, "checks": [check]}
    report = Report.from_json({**REPORT, "passed": False, "validation": validation, "schema_version": 1})
    figures = report.figures
    assert figures == Figures.from_json(validation)
    assert (figures.verdict, figures.checks[0].verdict, figures.confidence) == ("failed", "failed", None)
    assert level_text(report) == "" and figures.intervals == {} and figures.notes == ()
    assert check_line(figures.checks[0]) == "logits: cosine = 0.98, needs cosine>=0.99"


def test_figures_refuse_a_validation_without_its_checks() -> None:
    with pytest.raises(SourceError, match="no list of checks"):
        Figures.from_json({"passed": True, "samples": 1, "outputs": {}})
    with pytest.raises(SourceError, match="expected a JSON object"):
        Figures.from_json([])  # type: ignore[arg-type]
