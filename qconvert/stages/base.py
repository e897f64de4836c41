"""The stage protocol and its runner (onnx-ir's PassBase + Sequential, NNCF's PTQ pipeline).

A stage is a small class: `needs` (context fields it reads, checked before it runs), `gives` (the
fields it sets, checked after), `requires(ctx)` for any other precondition (checked before expensive
work), `run(ctx)` and `ensures(ctx)`. The order is a tuple in one file per pipeline
(`pipeline/exporting.py`, `pipeline/validating.py`). Stages never import each other; they share only the context.

A failure names the stage and the stages that ran before it: a user error (QConvertError) keeps its
message and exit code and gains `.in_stage` / `.after`; anything else is an InternalError saying
"unexpected failure in the 'X' stage (after a, b, c)".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Generic, TypeVar

from qconvert.errors import InternalError, QConvertError, raise_latched
from qconvert.stages._shared import Progress

C = TypeVar("C")


class Stage(Generic[C]):
    """One step of a pipeline over a context of type C."""

    name: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()
    gives: ClassVar[tuple[str, ...]] = ()

    def message(self, ctx: C) -> str | None:
        """The progress line; None: the stage is silent (no progress event)."""
        return None

    def skip(self, ctx: C) -> bool:
        """True when the settings leave this stage nothing to do."""
        return False

    def requires(self, ctx: C) -> None:
        missing = [f for f in self.needs if not hasattr(ctx, f)]
        if missing:
            raise InternalError(f"stage {self.name!r} runs before {', '.join(missing)} is set")

    def run(self, ctx: C) -> None:
        raise NotImplementedError

    def ensures(self, ctx: C) -> None:
        missing = [f for f in self.gives if not hasattr(ctx, f)]
        if missing:
            raise InternalError(f"stage {self.name!r} did not set {', '.join(missing)}")


def run_stages(stages: Sequence[Stage[Any]], ctx: Any, progress: Progress) -> list[str]:
    """Run `stages` in order on `ctx`; return the names of those that ran."""
    done: list[str] = []
    for stage in stages:
        if stage.skip(ctx):
            continue
        message = stage.message(ctx)
        if message is not None:
            progress(stage.name, message, None, None)
        try:
            stage.requires(ctx)
            stage.run(ctx)
            stage.ensures(ctx)
        except QConvertError as e:
            e.in_stage = stage.name  # type: ignore[attr-defined]
            e.after = tuple(done)  # type: ignore[attr-defined]
            raise
        except InternalError as e:
            if not getattr(e, "after", None):
                e.after = tuple(done)  # type: ignore[attr-defined]
            raise
        except Exception as e:
            after = f" (after {', '.join(done)})" if done else ""
            raise InternalError(
                f"unexpected failure in the {stage.name!r} stage{after}: {type(e).__name__}: {e}"
            ) from e
        raise_latched()  # a signal whose exception something inside the stage caught and swallowed
        done.append(stage.name)
    return done
