"""Files written by `qconvert export`, `validate --json` and `sweep` before their entries were typed
(tests/golden/records/, see the README there) read back into the typed records and are written again
byte for byte: typing the entries changed no byte of any file."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from qconvert.errors import SourceError
from qconvert.results import Manifest, Report, SweepReport, ValidationReport

RECORDS = Path(__file__).resolve().parents[1] / "golden" / "records"
KINDS = {"report": Report, "qconvert": Manifest, "validate": ValidationReport, "sweep": SweepReport}


def _kind(path: Path) -> type[Report] | type[Manifest] | type[ValidationReport] | type[SweepReport]:
    return KINDS[path.stem.split("-")[0]]


@pytest.mark.parametrize("path", sorted(RECORDS.glob("*.json")), ids=lambda p: p.name)
def test_a_stored_file_reads_back_and_is_written_byte_identically(path: Path) -> None:
    text = path.read_text()
    record = _kind(path).from_json(json.loads(text))
    assert json.dumps(record.to_json(), indent=2, default=str) + "\n" == text


@pytest.mark.parametrize(
    ("name", "path", "key", "where"),
    [
        ("report-cpu-int8-auto.json", ("size",), "ratio", "report.json: size"),
        ("report-cpu-int8-auto.json", ("latency", "fp32"), "p50_ms", "report.json: latency.fp32"),
        ("report-cpu-int8-auto.json", ("accuracy", "intervals", "drop"), "low", "accuracy.intervals.drop"),
        ("report-cpu-int8-auto.json", ("sensitivity", "ranking", 0), "op_type", "sensitivity.ranking[0]"),
        ("report-cpu-int8-auto.json", ("tradeoff", "configurations", 1), "sqnr_db", "configurations[1]"),
        ("report-cpu-int8-auto.json", ("ops",), "float_between_qdq", "report.json: ops"),
        ("report-cpu-int8-failed.json", ("sensitivity",), "ranking", "report.json: sensitivity"),
        ("report-tensorrt-int8.json", ("on_cpu_kernels", "checks", 0), "bound", "on_cpu_kernels.checks[0]"),
        ("report-bert-dynamic.json", ("fusions",), "fused", "report.json: fusions"),
        ("validate-task-speed.json", ("task",), "drop", "validate --json: task"),
        ("validate-task-speed.json", ("speed", "candidate"), "runs", "validate --json: speed.candidate"),
        ("validate-collapse.json", ("collapse", "families", "count"), "lost", "collapse.families.count"),
        ("sweep.json", ("rows", 1), "top1_agreement", "sweep.json: rows[1]"),
        ("sweep.json", ("recommendation",), "text", "sweep.json: recommendation"),
        ("qconvert-cpu-int8-images.json", ("source", "inputs", 0), "dims", "qconvert.json: source.inputs[0]"),
        ("qconvert-cpu-int8-images.json", ("source", "files", 1), "sha256", "qconvert.json: source.files[1]"),
        (
            "qconvert-cpu-int8-images.json",
            ("data", "calibration"),
            "origin",
            "qconvert.json: data.calibration",
        ),
        (
            "qconvert-cpu-int4-weight-only.json",
            ("quantization",),
            "block_size",
            "qconvert.json: quantization",
        ),
        ("qconvert-cpu-int4-weight-only.json", ("data",), "calibration", "qconvert.json: data"),
        ("qconvert-cpu-int8-failed.json", ("providers", 0), "options", "qconvert.json: providers[0]"),
        ("qconvert-cpu-int8-failed.json", ("validated_on",), "exact_qdq", "qconvert.json: validated_on"),
        ("qconvert-cpu-int8-failed.json", ("validation",), "failures", "qconvert.json: validation"),
        ("qconvert-cpu-int8-failed.json", ("target",), "facts", "qconvert.json: target"),
        ("qconvert-cpu-int8-failed.json", ("export",), "opset", "qconvert.json: export"),
        ("qconvert-cpu-int8-failed.json", (), "settings", "qconvert.json"),
    ],
)
def test_a_renamed_key_in_a_stored_file_is_an_error_naming_the_file_and_key(
    name: str, path: tuple[str | int, ...], key: str, where: str
) -> None:
    """Not a KeyError, and not a row or a figure silently left out of a table."""
    doc = json.loads((RECORDS / name).read_text())
    entry: Any = doc
    for step in path:
        entry = entry[step]
    entry[key + "_renamed"] = entry.pop(key)
    with pytest.raises(SourceError, match=re.escape(where) + f".*: no '{key}' entry"):
        _kind(RECORDS / name).from_json(doc)
