"""Renders a `qconvert validate` result as JUnit XML, for CI systems that show test results.

One <testcase> per tolerance check: classname = the output (or `model` for whole-model checks
such as task_drop and speedup), name = the metric. A failed check carries a <failure> whose message
gives the measured value, its confidence interval, the bound, and the tolerance that would have
passed; an INCONCLUSIVE one a <failure type="Inconclusive"> (a CI must not show it green) saying how
many held-out samples would settle it. Computes nothing.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from qconvert.report import INCONCLUSIVE, check_line, level_text

if TYPE_CHECKING:
    from qconvert.results import ValidationReport

SUITE = "qconvert validate"


def render_junit(run: ValidationReport) -> str:
    """`run` is the --json document (`ValidationRun.report`); returns the XML document as text."""
    checks = run.figures.checks
    failed = sum(1 for c in checks if not c.passed)
    counts = {"tests": str(len(checks)), "failures": str(failed), "errors": "0", "skipped": "0"}
    seconds = f"{run.seconds:.3f}"
    root = ET.Element("testsuites", {"name": SUITE, **counts, "time": seconds})
    suite = ET.SubElement(root, "testsuite", {"name": SUITE, **counts, "time": seconds})
    props = ET.SubElement(suite, "properties")
    confidence = run.figures.confidence
    level = level_text(run)
    properties = {
        "candidate": run.candidate,
        "reference": run.reference,
        "data": run.data,
        "samples": run.samples,
        "provider": run.provider,
        "bits": run.bits,
        "tolerance_source": run.tolerance_source,
        "verdict": run.verdict,
        "confidence": confidence,
    }
    for name, value in properties.items():
        if value is not None:
            ET.SubElement(props, "property", {"name": name, "value": str(value)})
    for check in checks:
        case = ET.SubElement(
            suite, "testcase", {"classname": check.output, "name": check.metric, "time": "0"}
        )
        if check.passed:
            ET.SubElement(case, "system-out").text = check_line(check, level)
        else:
            message = check_line(check, level)
            kind = "Inconclusive" if check.verdict == INCONCLUSIVE else "OutOfTolerance"
            failure = ET.SubElement(case, "failure", {"message": message, "type": kind})
            failure.text = message
    if run.notes:
        ET.SubElement(suite, "system-out").text = "\n".join(f"note: {n}" for n in run.notes)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
