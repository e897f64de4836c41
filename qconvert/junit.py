"""Renders a `qconvert validate` result as JUnit XML, for CI systems that show test results.

One <testcase> per tolerance check: classname = the output (or `model` for whole-model checks
such as task_drop and speedup), name = the metric. A failed check carries a <failure> whose message
gives the measured value, the bound, and the tolerance that would have passed. Computes nothing.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

SUITE = "qconvert validate"


def failure_message(check: dict[str, Any]) -> str:
    text = f"{check['output']}: {check['metric']} = {check['measured']:.6g}, needs {check['bound']}"
    if check.get("needed"):  # never for speedup: a gate is not told to accept a slowdown
        text += f" (would pass with --tolerance '{check['needed']}')"
    return f"{text}: {check['hint']}" if check.get("hint") else text


def render_junit(run: dict[str, Any]) -> str:
    """`run` is `ValidationRun.as_json()`; returns the XML document as text."""
    checks: list[dict[str, Any]] = run["validation"]["checks"]
    failed = sum(1 for c in checks if not c["passed"])
    counts = {"tests": str(len(checks)), "failures": str(failed), "errors": "0", "skipped": "0"}
    seconds = f"{run.get('seconds', 0.0):.3f}"
    root = ET.Element("testsuites", {"name": SUITE, **counts, "time": seconds})
    suite = ET.SubElement(root, "testsuite", {"name": SUITE, **counts, "time": seconds})
    props = ET.SubElement(suite, "properties")
    for name in ("candidate", "reference", "data", "samples", "provider", "bits", "tolerance_source"):
        value = run.get(name)
        if value is not None:
            ET.SubElement(props, "property", {"name": name, "value": str(value)})
    for check in checks:
        case = ET.SubElement(
            suite, "testcase", {"classname": check["output"], "name": check["metric"], "time": "0"}
        )
        if check["passed"]:
            out = ET.SubElement(case, "system-out")
            out.text = f"{check['metric']} = {check['measured']:.6g} (needs {check['bound']})"
        else:
            message = failure_message(check)
            failure = ET.SubElement(case, "failure", {"message": message, "type": "OutOfTolerance"})
            failure.text = message
    notes = run.get("notes") or []
    if notes:
        ET.SubElement(suite, "system-out").text = "\n".join(f"note: {n}" for n in notes)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
