"""The `qconvert` command line: a thin view over the library.

The one error boundary is `cli._common.command`: it turns a QConvertError into a clean message
and its exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging

import typer

from qconvert import __version__
from qconvert.cli import _common

app = typer.Typer(
    name="qconvert",
    help="PyTorch model -> quantized ONNX for a named target, with accuracy, size and latency measured.\n\n"
    "Exit codes: 0 passed; 1 validated and outside tolerance; 2 bad input or usage (the message names the "
    "file or flag and the fix); 3 internal error, a bug in qconvert (traceback shown; please report it). "
    "--debug adds tracebacks and never changes a code.",
    no_args_is_help=True,
    add_completion=False,
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
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    _common.STATE["debug"] = debug
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _register() -> None:
    from qconvert.cli import export_cmd, inspect_cmd, run_cmd, targets_cmd, validate_cmd

    app.command("export")(_common.command(export_cmd.export))
    app.command("targets")(_common.command(targets_cmd.targets))
    app.command("inspect")(_common.command(inspect_cmd.inspect))
    app.command("run")(_common.command(run_cmd.run))
    app.command("validate")(_common.command(validate_cmd.validate))
    from qconvert.cli import benchmark_cmd

    app.command("benchmark")(_common.command(benchmark_cmd.benchmark))
    from qconvert.cli import sweep_cmd

    app.command("sweep")(_common.command(sweep_cmd.sweep))


_register()


def main() -> None:
    """Console-script entry point."""
    app(prog_name="qconvert")
