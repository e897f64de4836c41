"""The stage runner: order, contracts checked before and after, failures that name the stage."""

from __future__ import annotations

import pytest

from qconvert.errors import ConfigError, InternalError
from qconvert.stages.base import Stage, run_stages


class Ctx:
    def __init__(self) -> None:
        self.seen: list[str] = []


class SetA(Stage[Ctx]):
    name = "set-a"
    gives = ("a",)

    def run(self, ctx: Ctx) -> None:
        ctx.a = 1  # type: ignore[attr-defined]
        ctx.seen.append(self.name)


class NeedsA(Stage[Ctx]):
    name = "needs-a"
    needs = ("a",)

    def run(self, ctx: Ctx) -> None:
        ctx.seen.append(self.name)


class Forgets(Stage[Ctx]):
    name = "forgets"
    gives = ("b",)

    def run(self, ctx: Ctx) -> None:
        ctx.seen.append(self.name)


class Broken(Stage[Ctx]):
    name = "broken"

    def run(self, ctx: Ctx) -> None:
        raise ZeroDivisionError("boom")


class UserError(Stage[Ctx]):
    name = "user-error"

    def run(self, ctx: Ctx) -> None:
        raise ConfigError("--flag is wrong: pass --flag 3")


class Skipped(Stage[Ctx]):
    name = "skipped"

    def skip(self, ctx: Ctx) -> bool:
        return True

    def run(self, ctx: Ctx) -> None:
        raise AssertionError("a skipped stage ran")


def _progress_log() -> tuple[list[str], object]:
    events: list[str] = []

    def progress(stage: str, message: str, done: int | None = None, total: int | None = None) -> None:
        events.append(stage)

    return events, progress


def test_stages_run_in_order_and_skipped_ones_do_not() -> None:
    ctx = Ctx()
    _, progress = _progress_log()
    done = run_stages([SetA(), Skipped(), NeedsA()], ctx, progress)  # type: ignore[arg-type]
    assert done == ["set-a", "needs-a"] and ctx.seen == done


def test_a_stage_that_runs_before_what_it_needs_is_refused_before_it_runs() -> None:
    ctx = Ctx()
    with pytest.raises(InternalError, match="'needs-a' runs before a is set"):
        run_stages([NeedsA()], ctx, lambda *a: None)
    assert ctx.seen == []


def test_a_stage_that_does_not_set_what_it_gives_is_caught() -> None:
    with pytest.raises(InternalError, match="'forgets' did not set b"):
        run_stages([Forgets()], Ctx(), lambda *a: None)


def test_an_unexpected_failure_names_the_stage_and_the_stages_before_it() -> None:
    with pytest.raises(InternalError) as info:
        run_stages([SetA(), NeedsA(), Broken()], Ctx(), lambda *a: None)
    assert str(info.value) == (
        "unexpected failure in the 'broken' stage (after set-a, needs-a): ZeroDivisionError: boom"
    )
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_a_user_error_keeps_its_message_and_code_and_learns_where_it_happened() -> None:
    with pytest.raises(ConfigError) as info:
        run_stages([SetA(), UserError()], Ctx(), lambda *a: None)
    assert str(info.value) == "--flag is wrong: pass --flag 3"
    assert info.value.exit_code == 2
    assert info.value.in_stage == "user-error"  # type: ignore[attr-defined]
    assert info.value.after == ("set-a",)  # type: ignore[attr-defined]
