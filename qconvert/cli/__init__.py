"""The `qconvert` command line: a thin view over the library.

The one error boundary is `cli._common.command`: it turns a QConvertError into a clean message
and its exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import time
from collections.abc import Callable

STARTED = time.perf_counter()  # the `PASSED | N s` line counts from here: imports included

import typer  # noqa: E402

from qconvert import __version__  # noqa: E402
from qconvert.cli import _common, _help  # noqa: E402

app = typer.Typer(
    name="qconvert",
    help="PyTorch model -> quantized ONNX for a named target, with accuracy, size and latency measured.\n\n"
    "Exit codes: 0 PASSED; 1 validated and FAILED (outside tolerance) or INCONCLUSIVE (too few held-out "
    "samples to tell); 2 bad input or usage (the message names the "
    "file or flag and the fix); 3 internal error, a bug in qconvert (traceback shown; please report it). "
    "--debug adds tracebacks and never changes a code.",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"qconvert {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(
        False, "--debug", help="Show tracebacks and debug logs (exit codes stay the same)."
    ),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Show info logs."),
    quiet: bool = typer.Option(
        False, "-q", "--quiet", help="No progress display and no warnings: results, errors, summary."
    ),
    version: bool = typer.Option(
        False, "-V", "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    _common.STARTED = STARTED
    _common.set_verbosity(debug=debug, verbose=verbose, quiet=quiet, reset=True)


def _register() -> None:
    from qconvert.cli import export_cmd, inspect_cmd, run_cmd, targets_cmd, validate_cmd

    def add(name: str, fn: Callable[..., int]) -> None:
        app.command(name, cls=_help.HelpCommand, short_help=_help.short_help(fn))(_common.command(fn))

    add("export", export_cmd.export)
    add("targets", targets_cmd.targets)
    add("inspect", inspect_cmd.inspect)
    add("run", run_cmd.run)
    add("validate", validate_cmd.validate)
    from qconvert.cli import benchmark_cmd

    add("benchmark", benchmark_cmd.benchmark)
    from qconvert.cli import sweep_cmd

    add("sweep", sweep_cmd.sweep)


_register()


def main() -> None:
    """Console-script entry point."""
    app(prog_name="qconvert")
