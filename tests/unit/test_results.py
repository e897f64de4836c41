"""results.py: Report, Manifest and ValidationReport round-trip through JSON and carry a schema version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qconvert.errors import InternalError, SourceError
from qconvert.report import check_line, level_text
from qconvert.results import SCHEMA_VERSION, Figures, Manifest, Report, Size, ValidationReport, written

RECORDS = Path(__file__).resolve().parents[1] / "golden" / "records"
# a report.json written by `qconvert export` (tests/golden/records/README.md), without its version
REPORT: dict[str, Any] = {
    k: v
    for k, v in json.loads((RECORDS / "report-tensorrt-int8.json").read_text()).items()
    if k != "schema_version"
}


def test_report_round_trips_and_leaves_out_empty_optional_entries() -> None:
    report = Report.from_json({**REPORT, "schema_version": SCHEMA_VERSION})
    assert report.notes == tuple(REPORT["notes"]) and report.recovery == ()
    out = report.to_json()
    assert out == {"schema_version": SCHEMA_VERSION, **REPORT}
    assert "recovery" not in out and "sensitivity" not in out and "fallback" not in out
    assert Report.from_json(json.loads(json.dumps(out))) == report


def test_report_keeps_recovery_sensitivity_and_fallback_when_present() -> None:
    steps = ({"name": "gptq", "phase": "pre", "applied": False, "reason": "needs calibration data"},)
    unavailable = {"available": False, "reason": "implicit int8 has no Q/DQ nodes"}
    report = Report.from_json({**REPORT, "recovery": list(steps), "sensitivity": unavailable})
    out = report.to_json()
    assert out["recovery"] == list(steps) and out["sensitivity"] == unavailable
    assert report.sensitivity is not None and report.sensitivity.reason == unavailable["reason"]
    assert (
        Report.from_json(out).recovery == report.recovery and report.recovery[0].reason == steps[0]["reason"]
    )


def test_files_from_before_versioning_read_as_version_0() -> None:
    assert Report.from_json(REPORT).schema_version == 0


def test_a_report_from_before_intervals_takes_its_verdict_from_passed() -> None:
    # version 1 had no verdict: passed was the point estimates' two-way verdict
    old = {k: v for k, v in REPORT.items() if k != "verdict"}
    assert Report.from_json({**old, "schema_version": 1}).verdict == "passed"
    assert Report.from_json({**old, "passed": False, "schema_version": 1}).verdict == "failed"
    with pytest.raises(SourceError, match=r"report\.json: no 'verdict' entry"):  # version 2 must have one
        Report.from_json({**old, "schema_version": 2})


def test_a_newer_schema_is_refused_with_what_to_do() -> None:
    with pytest.raises(SourceError, match="schema_version 99 is newer than this qconvert reads"):
        Report.from_json({**REPORT, "schema_version": 99})


def test_a_report_with_missing_entries_is_a_source_error() -> None:
    with pytest.raises(SourceError, match=r"report\.json: no 'verdict' entry"):
        Report.from_json({"passed": True, "schema_version": 2})


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
        "validation": {"passed": False, "samples": 60, "outputs": {}, "checks": []},
    }
    run = ValidationReport.from_json(old)
    assert run.schema_version == 0 and run.verdict == "failed" and run.tolerance == ("cosine>=0.99",)
    assert run.validation.verdict == "failed"
    # upgraded to this version's shape: the verdicts, and the validation's newer entries (empty)
    written, validation = run.to_json(), old.pop("validation")
    assert written.pop("validation") == {**validation, **run.validation.to_json(), "verdict": "failed"}
    assert written == {"schema_version": 0, **old, "verdict": "failed"}
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
    with pytest.raises(SourceError, match="validation: no 'checks' entry"):
        Figures.from_json({"passed": True, "samples": 1, "outputs": {}})
    with pytest.raises(SourceError, match="expected a JSON object"):
        Figures.from_json([])  # type: ignore[arg-type]


def test_a_key_a_writer_adds_and_its_entry_lacks_is_an_internal_error() -> None:
    """`written` guards the writers: report.json never silently loses a figure someone added."""
    size = {"fp32_bytes": 10, "model_bytes": 5, "ratio": 0.5}
    assert written(Size, size, "size") == Size(fp32_bytes=10, model_bytes=5, ratio=0.5)
    with pytest.raises(InternalError, match=r"size: results\.Size does not write back.*'new_figure'"):
        written(Size, {**size, "new_figure": 1}, "size")
