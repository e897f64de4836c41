""" "would pass with" (issue 14): rounded to the digits that matter, always passing, never for speedup."""

from __future__ import annotations

import pytest

from qconvert.report import check_line, failure_lines
from qconvert.results import CheckRecord, ValidationReport
from qconvert.tolerance import Bound, parse_tolerance
from qconvert.validation import Check, passing_round


@pytest.mark.parametrize(
    ("measured", "bound", "shown"),
    [
        (0.97, Bound("top1_agreement", 0.99), "0.97"),
        (0.9699999999, Bound("top1_agreement", 0.99), "0.969"),  # never rounded up past the measurement
        (0.99871234, Bound("cosine", 0.999), "0.9987"),
        (2.5634, Bound("max_abs", 0.5), "2.6"),
        (0.9999865, Bound("cosine", 0.99999), "0.9999865"),  # a tight gap keeps its digits
    ],
)
def test_rounded_towards_passing(measured: float, bound: Bound, shown: str) -> None:
    assert passing_round(measured, bound) == shown
    check = Check("logits", bound, measured)
    (needed,) = parse_tolerance(str(check.needed))
    assert needed.holds(measured)


def test_speedup_is_never_suggested() -> None:
    check = Check("latency", Bound("speedup", 1.0, explicit=True), 0.7189941630969531)
    assert not check.passed and check.needed is None
    doc = check.as_json()
    assert "would pass" not in check_line(CheckRecord.from_json(doc))
    names = ("candidate", "model", "reference", "data", "provider")
    report = ValidationReport.from_json(
        {
            **dict.fromkeys(names, "-"),
            **dict.fromkeys(("tolerance_source", "task", "speed", "collapse", "manifest_sha256")),
            "passed": False,
            "verdict": "failed",
            "samples": 1,
            "labels": False,
            "exact_qdq": True,
            "bits": 8,
            "tolerance": ["speedup>=1"],
            "notes": [],
            "seconds": 0.0,
            "validation": {"passed": False, "samples": 1, "outputs": {}, "checks": [doc]},
        }
    )
    (line,) = [x for x in failure_lines(report) if "speedup" in x]
    assert "would pass" not in line and "0.718994" in line
