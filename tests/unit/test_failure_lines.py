"""The CLI's failure lines: "out of tolerance" only where a check FAILED. An INCONCLUSIVE export whose
measured figures miss the tolerance still names its worst layers and offers --auto, under a tag that
does not call it out of tolerance (EfficientNet-Lite1 at the default 8-bit bounds: top-1 96.5% [94.0,
98.0] against >= 97% was printed as "out of tolerance: worst layers ...")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qconvert.report import failure_lines, failure_tag
from qconvert.results import Report

FAILED_REPORT = Path(__file__).resolve().parents[1] / "golden" / "records" / "report-cpu-int8-failed.json"


def _as_inconclusive(data: dict[str, Any]) -> dict[str, Any]:
    """The same stored run, with every failed check (and so the run) straddling its bound instead."""
    validation = data["validation"]
    checks = [
        {**c, "verdict": "inconclusive"} if c["verdict"] == "failed" else c for c in validation["checks"]
    ]
    return {
        **data,
        "verdict": "inconclusive",
        "validation": {**validation, "checks": checks, "verdict": "inconclusive"},
    }


def test_a_failed_export_is_out_of_tolerance_and_names_its_failed_checks_and_worst_layers() -> None:
    report = Report.from_json(json.loads(FAILED_REPORT.read_text()))
    assert report.verdict == "failed"
    assert failure_tag(report) == ("out of tolerance", "red")
    lines = failure_lines(report)
    assert any(line.startswith("worst layers") for line in lines)
    assert any(not line.startswith(("worst layers", "rerun with --auto")) for line in lines)  # a check line


def test_an_inconclusive_export_keeps_the_worst_layers_but_is_not_called_out_of_tolerance() -> None:
    report = Report.from_json(_as_inconclusive(json.loads(FAILED_REPORT.read_text())))
    assert report.verdict == "inconclusive" and not report.figures.data_limited
    assert failure_tag(report) == ("below the tolerance as measured", "yellow")
    lines = failure_lines(report)
    assert lines and all(line.startswith(("worst layers", "rerun with --auto")) for line in lines)
