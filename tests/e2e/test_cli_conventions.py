"""CLI conventions users of optimum-cli / polygraphy type without thinking (issue 14, item 3): `-h`,
-q/-v/--debug after the subcommand, `--json -` (JSON alone on stdout), `targets --json`,
`inspect --json` and `inspect OUT_DIR`, shell completion, case-insensitive target names, and an export
settings file (`--config`, flags win, unknown keys refused)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qconvert.targets import TARGETS


def qconvert(*argv: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run the CLI; (process, seconds from launch until its last stdout line arrived)."""
    env = {**os.environ, "COLUMNS": "80", "TERM": "dumb", "NO_COLOR": "1"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    cmd = [sys.executable, "-c", "from qconvert.cli import main; main()", *argv]
    started = time.perf_counter()
    with subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        lines, last = [], 0.0
        for line in proc.stdout:  # stderr is small here (-q, or a short error)
            lines.append(line)
            last = time.perf_counter() - started
        stderr = proc.stderr.read()
        code = proc.wait(timeout=600)
    return subprocess.CompletedProcess(cmd, code, "".join(lines), stderr), last


@pytest.fixture(scope="module")
def exported(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], float, Path]:
    """One export whose settings come from a --config file, with a flag that overrides one of them
    and -q after the subcommand: (process, wall seconds, working directory)."""
    work = tmp_path_factory.mktemp("conventions")
    (work / "ci.toml").write_text(
        '[export]\ntarget = "TensorRT"\nbits = 16\ntolerance = "top1_agreement>=0.9"\nout = "from-config"\n'
    )
    proc, wall = qconvert("export", "--config", "ci.toml", "--bits", "8", "-q", cwd=work)
    return proc, wall, work


def test_config_file_settings_and_flags_win(
    exported: tuple[subprocess.CompletedProcess[str], float, Path],
) -> None:
    proc, _, work = exported
    assert proc.returncode == 0, proc.stderr
    settings = json.loads((work / "from-config" / "qconvert.json").read_text())["settings"]
    assert settings["target"] == "tensorrt"  # from the file, in any case
    assert settings["bits"] == 8  # the flag wins over the file's 16
    assert settings["tolerance"] == "top1_agreement>=0.9"
    assert "bounds: --config ci.toml" in proc.stdout  # the table says where the bounds came from


def test_quiet_after_the_subcommand_hides_progress(
    exported: tuple[subprocess.CompletedProcess[str], float, Path],
) -> None:
    proc, _, _ = exported
    assert proc.returncode == 0, proc.stderr
    assert "✓" not in proc.stderr and "exporting" not in proc.stderr
    assert "PASSED |" in proc.stdout


def test_passed_line_counts_the_whole_run(
    exported: tuple[subprocess.CompletedProcess[str], float, Path],
) -> None:
    proc, seen, _ = exported
    match = re.search(r"PASSED \| ([0-9.]+) s \|", proc.stdout)
    assert match, proc.stdout
    # from the process's start (imports included: torch alone takes seconds) to the line itself
    assert seen - 1.0 <= float(match.group(1)) <= seen + 0.1


def test_unknown_config_key_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text('[export]\ntargte = "cpu"\n')
    proc, _ = qconvert("export", "--config", "bad.toml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "'targte'" in proc.stderr and "target" in proc.stderr
    (tmp_path / "bad2.toml").write_text('[expor]\ntarget = "cpu"\n')
    proc, _ = qconvert("export", "--config", "bad2.toml", cwd=tmp_path)
    assert proc.returncode == 2 and "unknown table 'expor'" in proc.stderr
    assert not (tmp_path / "qconvert-out").exists()


def test_validate_json_dash_is_json_alone_on_stdout(
    exported: tuple[subprocess.CompletedProcess[str], float, Path],
) -> None:
    _, _, work = exported
    proc, _ = qconvert("validate", "from-config", "--json", "-", cwd=work)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # nothing but the JSON
    assert result["passed"] is True and "validation" in result and "tolerance_source" in result
    assert "PASSED |" in proc.stderr
    assert not (work / "-").exists()


def test_inspect_out_dir_and_json(exported: tuple[subprocess.CompletedProcess[str], float, Path]) -> None:
    _, _, work = exported
    proc, _ = qconvert("inspect", "from-config", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert "from-config/model.onnx" in proc.stdout and "QuantizeLinear" in proc.stdout
    proc, _ = qconvert("inspect", "from-config", "--json", cwd=work)
    facts = json.loads(proc.stdout)
    assert facts["path"].endswith("model.onnx")
    assert facts["inputs"][0]["name"] == "input" and facts["ops"]["QuantizeLinear"] > 0
    (work / "empty").mkdir(exist_ok=True)
    proc, _ = qconvert("inspect", "empty", cwd=work)
    assert proc.returncode == 2 and "without model.onnx" in proc.stderr


def test_targets_json(tmp_path: Path) -> None:
    proc, _ = qconvert("targets", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    assert [t["name"] for t in listed] == [name for name, _ in TARGETS]
    cpu = next(t for t in listed if t["name"] == "cpu")
    assert "8" in cpu["modes"] and any(p["name"] == "CPUExecutionProvider" for p in cpu["providers"])


def test_short_help_verbosity_after_subcommand_and_completion(tmp_path: Path) -> None:
    for argv in (("-h",), ("export", "-h"), ("validate", "-h")):
        proc, _ = qconvert(*argv, cwd=tmp_path)
        assert proc.returncode == 0 and proc.stdout.startswith("Usage: qconvert"), argv
    proc, _ = qconvert("targets", "-v", "--debug", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc, _ = qconvert("-V", cwd=tmp_path)
    assert proc.stdout.strip().startswith("qconvert ")
    # --show-completion names the shell it finds among the process's ancestors (typer asks shellingham),
    # so run it from a bash that stays the parent: a suite started without a shell ancestor (nohup,
    # a container's entry point) printed "Shell  not supported." and exit 1
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    script = f"{sys.executable} -c 'from qconvert.cli import main; main()' --show-completion; exit $?"
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "complete" in done.stdout, done.stderr


def test_target_names_are_case_insensitive(tmp_path: Path) -> None:
    # the target parses in any case; the (bad) bit width is what is refused, before any work
    proc, _ = qconvert("export", "--target", "TensorRT", "--bits", "3", cwd=tmp_path)
    assert proc.returncode == 2
    assert "'--bits'" in proc.stderr and "--target" not in proc.stderr


def test_validate_table_says_a_tolerance_file_applied(
    exported: tuple[subprocess.CompletedProcess[str], float, Path], tmp_path: Path
) -> None:
    _, _, work = exported
    (tmp_path / "qconvert.toml").write_text("[tolerance]\ncosine = 0.9\n")
    proc, _ = qconvert("validate", str(work / "from-config"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "bounds: the defaults for --bits 8 < qconvert.toml" in " ".join(proc.stdout.split())
