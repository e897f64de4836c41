"""What every command shares: consoles, the progress view, error rendering, the summary line."""

from __future__ import annotations

import functools
import inspect
import shlex
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from qconvert.errors import QConvertError

if TYPE_CHECKING:
    from qconvert.results import Report, ValidationReport

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
STATE = {"debug": False, "verbose": False, "quiet": False}
STARTED = time.perf_counter()  # replaced by cli.STARTED (taken before the imports) when the CLI runs


def set_verbosity(
    *, debug: bool = False, verbose: bool = False, quiet: bool = False, reset: bool = False
) -> None:
    """-q/-v/--debug, before or after the subcommand: the root callback resets (one invocation's
    flags never leak into the next, in-process), the subcommand's flags add to the root's."""
    import logging

    if reset:
        STATE.update(debug=False, verbose=False, quiet=False)
    STATE["debug"] = STATE["debug"] or debug
    STATE["verbose"] = STATE["verbose"] or verbose
    STATE["quiet"] = (STATE["quiet"] or quiet) and not (STATE["debug"] or STATE["verbose"])
    if STATE["debug"]:
        level = logging.DEBUG
    elif STATE["verbose"]:
        level = logging.INFO
    elif STATE["quiet"]:
        level = logging.ERROR
    else:
        level = logging.WARNING
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)


def command(fn: Callable[..., int]) -> Callable[..., None]:
    """The error boundary, and the exit codes CI acts on (errors.EXIT_CODES): a QConvertError becomes one
    clean message and its own code (2 bad input, 1 out of tolerance); SIGTERM/SIGHUP/Ctrl-C exit 128 +
    the signal; anything else is a bug in qconvert: its traceback, a request to report it, and code 3.
    `--debug` adds the traceback to a QConvertError's message, and the pipeline stage it came from with
    the stages before it; it never changes a code."""
    import traceback

    from typer._click import ClickException  # typer vendors click; click itself may not be installed

    from qconvert.errors import EXIT_CODES, Terminated, latch_interrupts

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        set_verbosity(**{name: kwargs.pop(name) for name in VERBOSITY})
        old_handler = latch_interrupts()
        try:
            code = fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, ClickException):
            raise
        except QConvertError as e:
            if STATE["debug"]:
                err.print(escape(traceback.format_exc()), soft_wrap=True)
                in_stage = getattr(e, "in_stage", None)  # set by stages.base.run_stages
                if in_stage:
                    after = ", ".join(getattr(e, "after", ())) or "none"
                    err.print(f"in the {in_stage!r} stage (after: {escape(after)})", soft_wrap=True)
            err.print(f"[bold red]error[/] ({e.stage}): {escape(str(e))}", soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except Terminated as e:
            err.print(f"[bold red]stopped[/]: {escape(str(e))}; nothing was left half-written.")
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err.print("[bold red]interrupted[/]; nothing was written.")
            raise typer.Exit(130) from None
        except Exception as e:
            err.print(escape(traceback.format_exc()), soft_wrap=True)
            err.print(
                f"[bold red]internal error[/]: {escape(type(e).__name__)}: {escape(str(e))}\n"
                "This is a bug in qconvert, not a problem with your model or data: please report it with "
                "the traceback above and the command you ran. Exit code 3 "
                f"({escape(EXIT_CODES[3].split(':')[0])}).",
                soft_wrap=True,
            )
            raise typer.Exit(3) from None
        finally:
            out.file = None  # type: ignore[assignment]  # undo json_on_stdout: sys.stdout, looked up late
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)  # type: ignore[arg-type]
        raise typer.Exit(code)

    signature = inspect.signature(fn)
    extra = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=bool)
        for name, option in VERBOSITY.items()
    ]
    run.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), *extra]
    )
    return run


# -q/-v/--debug after the subcommand too (`qconvert export -v`), as polygraphy's and optimum's users type
VERBOSITY = {
    "quiet": typer.Option(
        False, "-q", "--quiet", help="No progress display and no warnings: results, errors, summary."
    ),
    "verbose": typer.Option(False, "-v", "--verbose", help="Show info logs."),
    "debug": typer.Option(
        False, "--debug", help="Show tracebacks and debug logs (exit codes stay the same)."
    ),
}


class ProgressView:
    """Draws the library's progress callbacks: one line per stage, a bar where there is a count."""

    def __init__(self) -> None:
        self._progress = Progress(
            SpinnerColumn(finished_text="[green]✓"),
            TextColumn("{task.description}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=False,
            disable=STATE["quiet"],
        )
        self._tasks: dict[str, TaskID] = {}
        self._current: str | None = None

    def __enter__(self) -> ProgressView:
        self._progress.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self._finish_current()
        self._progress.__exit__(exc_type, exc, tb)

    def _finish_current(self) -> None:
        if self._current is not None:
            task = self._tasks[self._current]
            total = self._progress.tasks[task].total or 1
            self._progress.update(task, total=total, completed=total)

    def __call__(self, stage: str, message: str, done: int | None = None, total: int | None = None) -> None:
        if stage not in self._tasks:
            self._finish_current()
            self._tasks[stage] = self._progress.add_task(message, total=total)
            self._current = stage
        self._progress.update(self._tasks[stage], description=message, completed=done or 0, total=total)


STDOUT = Path("-")


def json_on_stdout(path: Path | None) -> bool:
    """`--json -`: the JSON is the only thing on stdout, so from here on the tables, notes and the
    summary line go to stderr (`command` puts them back when the command ends)."""
    if path != STDOUT:
        return False
    out.file = sys.stderr
    return True


def write_json_stdout(value: Any) -> None:
    import json

    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")
    sys.stdout.flush()


def print_table(table: Table) -> None:
    """Print a table that folds long cells onto more lines instead of cutting them with `…`: a CI log
    is 80 columns wide, and the cut part (an option's choices, a file name) is often the one needed."""
    for column in table.columns:
        column.overflow = "fold"
        column.no_wrap = False
    out.print(table)


def process_seconds() -> float | None:
    """Seconds since this process started (interpreter start-up and every import included), from
    /proc on Linux; None elsewhere (then the line counts from cli.STARTED, before qconvert's imports)."""
    import os

    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


VERDICT_STYLES = {"passed": "bold green", "failed": "bold red", "inconclusive": "bold yellow"}


def summary_line(verdict: str, started: float) -> None:
    """`PASSED | N s | command` (or FAILED, INCONCLUSIVE): N is the whole run, from before the
    imports (cli.STARTED)."""
    shown = f"[{VERDICT_STYLES[verdict]}]{verdict.upper()}[/]"
    command = shlex.join(["qconvert", *sys.argv[1:]])
    seconds = max(time.perf_counter() - min(started, STARTED), process_seconds() or 0.0)
    out.print(f"{shown} | {seconds:.1f} s | {escape(command)}")


def print_verdict_lines(report: Report | ValidationReport) -> None:
    """On stderr: the run's notes, its failed checks (for an INCONCLUSIVE run whose figures miss the
    bounds, its worst layers, under report.failure_tag's milder tag), and what would settle it."""
    from qconvert.report import failure_lines, failure_tag, inconclusive_lines

    for note in report.notes:
        err.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    tag, colour = failure_tag(report)
    for line in failure_lines(report):
        err.print(f"[{colour}]{tag}:[/] {escape(line)}", soft_wrap=True)
    for line in inconclusive_lines(report):
        err.print(f"[yellow]inconclusive:[/] {escape(line)}", soft_wrap=True)
