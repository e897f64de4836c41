"""Golden files: the key sets of report.json / qconvert.json from real exports, the key set of
`qconvert validate --json`, and every `--help` at 80 columns.

Regenerate (after a deliberate change; the diff is the review):

    PYTHONPATH=. python tests/golden/regen.py

`tests/e2e/test_golden.py` runs the same exports and compares. A key whose children are data (output
names, op types, file names, package names) is recorded as `*`, so the files pin the schema, not the
model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).resolve().parent
REPO = GOLDEN.parents[1]

# (name, export argv): small, fast, and together they reach every top-level report entry
EXPORTS: dict[str, tuple[str, ...]] = {
    "cpu-int8-static": ("--bits", "8", "--target", "cpu"),
    "cpu-int8-dynamic": ("--bits", "8", "--target", "cpu", "--mode", "dynamic"),
    "tensorrt-int8": ("--bits", "8", "--target", "tensorrt"),
    "cpu-fp16": ("--bits", "16", "--target", "cpu"),
}
# dicts keyed by data, not by schema: their children are recorded as "*"
DATA_KEYED = {
    "outputs",
    "export_fidelity",
    "abs_error_histograms",
    "ops.fp32",
    "ops.model",
    "ops.float_between_qdq",
    "versions",
    "files",
    "target.options",
    "target.facts",
    "fusions.fused",
    "options",
    "by_output",
    "scatter",
    "intervals",
}
COMMANDS = ("", "export", "validate", "inspect", "benchmark", "sweep", "targets", "run")


def key_paths(value: Any, prefix: str = "") -> set[str]:
    """Every dotted key path in a JSON value; list items are `[]`, data-keyed children `*`."""
    paths: set[str] = set()
    if isinstance(value, dict):
        data_keyed = prefix in DATA_KEYED or prefix.rsplit(".", 1)[-1] in DATA_KEYED
        for key, child in value.items():
            name = "*" if data_keyed else key
            path = f"{prefix}.{name}" if prefix else name
            paths.add(path)
            paths |= key_paths(child, path)
    elif isinstance(value, list):
        for child in value:
            paths |= key_paths(child, f"{prefix}[]")
    return paths


def _env() -> dict[str, str]:
    env = {**os.environ, "COLUMNS": "80", "TERM": "dumb", "NO_COLOR": "1", "PYTHONPATH": str(REPO)}
    env.pop("FORCE_COLOR", None)
    return env


def qconvert(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", "from qconvert.cli import main; main()", *argv]
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)


def help_text(command: str, cwd: Path) -> str:
    proc = qconvert(*([command] if command else []), "--help", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def export_keys(name: str, work: Path) -> dict[str, list[str]]:
    """Run one export; the sorted key paths of its report.json and qconvert.json."""
    out = work / name
    proc = qconvert("export", *EXPORTS[name], "-o", str(out), cwd=work)
    assert proc.returncode in (0, 1), proc.stderr
    report = json.loads((out / "report.json").read_text())
    manifest = json.loads((out / "qconvert.json").read_text())
    return {"report": sorted(key_paths(report)), "manifest": sorted(key_paths(manifest))}


def validate_keys(out: Path, work: Path) -> list[str]:
    target = work / "validate.json"
    proc = qconvert("validate", str(out), "--json", str(target), "--force", cwd=work)
    assert proc.returncode in (0, 1), proc.stderr
    return sorted(key_paths(json.loads(target.read_text())))


def golden(work: Path) -> dict[str, str]:
    """file name -> content, for everything under tests/golden/ this module owns."""
    files: dict[str, str] = {}
    for command in COMMANDS:
        files[f"help/{command or 'qconvert'}.txt"] = help_text(command, work)
    for name in EXPORTS:
        keys = export_keys(name, work)
        files[f"report_keys/{name}.txt"] = "\n".join(keys["report"]) + "\n"
        files[f"manifest_keys/{name}.txt"] = "\n".join(keys["manifest"]) + "\n"
    files["validate_keys.txt"] = "\n".join(validate_keys(work / "cpu-int8-static", work)) + "\n"
    return files


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for rel, text in golden(Path(tmp)).items():
            path = GOLDEN / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(path.relative_to(REPO))


if __name__ == "__main__":
    main()
