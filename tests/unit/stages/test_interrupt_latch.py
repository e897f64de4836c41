"""A Ctrl-C that library code swallows still stops the run at the next stage boundary (a Ctrl-C inside
torch's dynamo import was caught there, and the export went on with the TorchScript exporter)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from dataclasses import dataclass, field

import pytest

from qconvert.errors import INTERRUPTED, latch_interrupts
from qconvert.stages.base import Stage, run_stages


@dataclass
class _Ctx:
    ran: list[str] = field(default_factory=list)


class _SwallowsCtrlC(Stage[_Ctx]):
    name = "swallows"

    def run(self, ctx: _Ctx) -> None:
        # a real Ctrl-C delivered to this process, caught the way a careless `except:` in a dependency does
        with contextlib.suppress(BaseException):
            os.kill(os.getpid(), signal.SIGINT)
        ctx.ran.append(self.name)


class _Next(Stage[_Ctx]):
    name = "next"

    def run(self, ctx: _Ctx) -> None:
        ctx.ran.append(self.name)


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals: main thread")
def test_a_swallowed_ctrl_c_stops_at_the_next_stage() -> None:
    old = latch_interrupts()
    try:
        ctx = _Ctx()
        with pytest.raises(KeyboardInterrupt):
            run_stages((_SwallowsCtrlC(), _Next()), ctx, lambda *a: None)
        assert ctx.ran == ["swallows"]  # the stage finished, the next one never started
        assert INTERRUPTED.is_set()
    finally:
        signal.signal(signal.SIGINT, old)  # type: ignore[arg-type]
        INTERRUPTED.clear()


def test_without_an_interrupt_every_stage_runs() -> None:
    old = latch_interrupts()
    try:
        ctx = _Ctx()
        run_stages((_Next(),), ctx, lambda *a: None)
        assert ctx.ran == ["next"]
    finally:
        signal.signal(signal.SIGINT, old)  # type: ignore[arg-type]


class _SwallowsSigterm(Stage[_Ctx]):
    name = "swallows_sigterm"

    def run(self, ctx: _Ctx) -> None:
        with contextlib.suppress(BaseException):
            os.kill(os.getpid(), signal.SIGTERM)
        ctx.ran.append(self.name)


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals: main thread")
def test_a_swallowed_sigterm_stops_at_the_next_stage_with_its_own_code() -> None:
    """SIGTERM's Terminated swallowed inside torch's exporter let a killed export finish with exit 0."""
    from qconvert.artifacts import _CleanupOnSignals
    from qconvert.errors import Terminated

    old = latch_interrupts()
    try:
        ctx = _Ctx()
        with _CleanupOnSignals(), pytest.raises(Terminated) as caught:
            run_stages((_SwallowsSigterm(), _Next()), ctx, lambda *a: None)
        assert ctx.ran == ["swallows_sigterm"]
        assert caught.value.exit_code == 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGINT, old)  # type: ignore[arg-type]
        INTERRUPTED.clear()
