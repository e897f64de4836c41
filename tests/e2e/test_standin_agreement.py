"""export and validate reach the same stand-in verdict (review P2: arm64 on x86 with the CPU
provider first used to validate exact Q/DQ arithmetic in export and fused x86 kernels in validate)."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qconvert.cli import app

X86 = platform.machine().lower() in ("x86_64", "amd64")


@pytest.mark.slow
@pytest.mark.skipif(not X86, reason="on an ARM64 machine the arm64 target runs natively")
def test_arm64_export_and_validate_both_run_exact_qdq_on_x86(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    exported = runner.invoke(
        app, ["export", "--target", "arm64", "--target-option", "xnnpack=false", "-o", "out"]
    )
    assert exported.exit_code == 0, exported.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["validated_on"] == "CPUExecutionProvider" and report["validation_exact_qdq"] is True

    checked = runner.invoke(app, ["validate", "out", "--json", "v.json"])
    assert checked.exit_code == 0, checked.output
    run = json.loads((tmp_path / "v.json").read_text())
    assert run["provider"] == "CPUExecutionProvider"
    assert run["exact_qdq"] is report["validation_exact_qdq"]
    assert any("not ARM64" in note for note in run["notes"])
