"""Files written by `qconvert export`, `validate --json` and `sweep` before their entries were typed
(tests/golden/records/, see the README there) read back into the typed records and are written again
byte for byte: typing the entries changed no byte of any file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
