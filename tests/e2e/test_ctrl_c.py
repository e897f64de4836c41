"""Ctrl-C (issue 14): one line, "interrupted; nothing was written", exit 130, nothing left behind; and
`sweep` stops its workers at once instead of waiting for the running trials."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _start(*argv: str, cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", "from qconvert.cli import main; main()", *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the SIGINT a terminal sends to the whole job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _workers(pid: int) -> list[int]:
    """The spawned worker processes of `pid` (children running multiprocessing's spawn_main)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = next((line.split()[1] for line in status.splitlines() if line.startswith("PPid:")), "")
        if ppid == str(pid) and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def _interrupt(proc: subprocess.Popen[str]) -> tuple[str, str, float]:
    sent = time.perf_counter()
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return out, err, time.perf_counter() - sent


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_export_ctrl_c_prints_one_line(tmp_path: Path) -> None:
    proc = _start("export", "-o", "out", cwd=tmp_path)
    time.sleep(2.5)  # imports or the first stages: the run cannot have finished
    out, err, _ = _interrupt(proc)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted; nothing was written."
    assert "Traceback" not in err and "PASSED" not in out
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_sweep_ctrl_c_stops_the_workers_at_once(tmp_path: Path) -> None:
    proc = _start("sweep", "--bits", "8,4", "--workers", "2", "-o", "sw", cwd=tmp_path)
    deadline = time.monotonic() + 300
    while len(_workers(proc.pid)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = _workers(proc.pid)
    assert len(workers) == 2, "the sweep never started its two workers"
    time.sleep(1.0)  # inside the trials
    _, err, seconds = _interrupt(proc)
    assert proc.returncode == 130, err
    assert "interrupted; nothing was written." in err and "Traceback" not in err
    # not after the running trials end (5-13 s before): the workers are stopped at once. Measured
    # about 1.0 s on a loaded 2-core machine, most of it the interpreter's own exit.
    assert seconds < 3.0, seconds
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no sw/, no temporary folder
