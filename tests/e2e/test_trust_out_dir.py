"""The output folder when runs race, get killed, or meet a folder qconvert did not write (issue 13,
items 7, 8 and 9): real exports in real processes, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from _trust_helpers import export_args, qconvert, qconvert_process
from conftest import leftovers

from qconvert.artifacts import sweep_stale


def _temporaries(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.slow
def test_two_concurrent_exports_to_one_folder_one_wins_the_other_exits_2(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = export_args(tmp_path, out)
    procs = [qconvert_process(*args, cwd=tmp_path) for _ in range(2)]
    results = [(p.wait(timeout=300), p.communicate()) for p in procs]
    codes = sorted(code for code, _ in results)

    assert codes == [0, 2], [r[1][1][-2000:] for r in results]
    loser = next(stderr for code, (_, stderr) in results if code == 2)
    flat = " ".join(loser.split())
    assert f"-o {out}" in flat and ("another qconvert run" in flat or "already exists" in flat), flat
    manifest = json.loads((out / "qconvert.json").read_text())
    assert manifest["settings"]["force"] is False
    assert _temporaries(tmp_path) == []  # no lock, no temporary folder left


def _wait_for(predicate: Callable[[], bool], timeout: float = 240.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_during_an_export_cleans_up_like_ctrl_c(tmp_path: Path, signum: int) -> None:
    out = tmp_path / "results" / "out"
    proc = qconvert_process(*export_args(tmp_path, out), cwd=tmp_path)
    parent = out.parent
    started = _wait_for(lambda: parent.exists() and any(".tmp-" in n for n in _temporaries(parent)))
    assert started, proc.communicate()[1][-2000:]
    proc.send_signal(signum)
    code = proc.wait(timeout=120)
    _, stderr = proc.communicate()

    assert code == 128 + signum, stderr[-2000:]
    assert "Traceback" not in stderr
    assert not out.exists()
    assert not parent.exists(), _temporaries(parent)  # the folder it made, its temporary and its lock


@pytest.mark.slow
def test_temporaries_of_a_killed_export_are_swept_by_the_next_run(tmp_path: Path) -> None:
    """SIGKILL cannot be caught: the next run removes what the dead process left."""
    out = tmp_path / "out"
    args = export_args(tmp_path, out)
    proc = qconvert_process(*args, cwd=tmp_path)
    assert _wait_for(lambda: any(".tmp-" in n for n in _temporaries(tmp_path))), proc.communicate()[1]
    proc.kill()
    proc.wait(timeout=60)
    left = _temporaries(tmp_path)
    assert any(".tmp-" in n for n in left) and f".{out.name}.lock" in left

    code, text = qconvert(*args)

    assert code == 0, text
    assert _temporaries(tmp_path) == []
    assert leftovers(tmp_path) == []


def test_sweep_keeps_a_live_processs_temporaries_and_restores_a_half_swapped_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    live = tmp_path / f".out.tmp-{os.getpid()}-abc"
    live.mkdir()
    stale = tmp_path / f".out.tmp-{dead_pid}-def"
    stale.mkdir()
    backup = tmp_path / f".out.old-{dead_pid}-ghi"
    (backup / "old").mkdir(parents=True)
    (backup / "old" / "qconvert.json").write_text("{}")

    sweep_stale(out)

    assert live.is_dir() and not stale.exists() and not backup.exists()
    assert (out / "qconvert.json").read_text() == "{}"  # the user's previous OUT_DIR, put back


def test_force_does_not_replace_a_folder_qconvert_did_not_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "unrelated.txt").write_text("the user's work")

    code, text = qconvert(*export_args(tmp_path, out), "--force")

    assert code == 2, text
    assert f"-o {out}" in text and "--force replaces only an empty folder or one qconvert wrote" in text
    assert (out / "unrelated.txt").read_text() == "the user's work"
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_force_replaces_an_empty_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    out.mkdir()

    code, text = qconvert(*export_args(tmp_path, out), "--force")

    assert code == 0, text
    assert (out / "qconvert.json").is_file()
