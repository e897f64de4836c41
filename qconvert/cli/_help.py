"""`--help` that survives an 80-column CI log: plain click layout (wraps, never cuts with `…`),
no Rich markup (so `pip install "qconvert[hf]"` keeps its `[hf]`), and metavars a user reads
(`TEXT`, `INTEGER`, `[a|b]`, `SOURCE`) instead of Python types (`<str>`, `<list[str]>`, `<bool>`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from typer import _click as click
from typer._click import _textwrap
from typer.core import TyperCommand


class _SpacesOnly(_textwrap.TextWrapper):
    """click's wrapper breaks "--max-length" into "--max-" / "length" (and "qconvert-out/..." the same
    way); an option name or a path must stay whole, so only spaces are break points in help text."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "break_on_hyphens": False})


# click's wrap_text imports its TextWrapper when it is called, so this is the wrapper every help uses
_textwrap.TextWrapper = _SpacesOnly  # type: ignore[misc]

# Help text that names what a registry holds, filled in when the help is drawn rather than when the
# command module is imported: the recovery steps' modules import onnx (about 0.4 s), which
# `qconvert --help` and every other command would pay for.
RECOVERY_STEPS = "{recovery steps}"


def _recovery_steps() -> str:
    from qconvert import choices

    return ", ".join(choices.recovery_steps())


_LATE: dict[str, Callable[[], str]] = {RECOVERY_STEPS: _recovery_steps}


def fill_late(text: str) -> str:
    """`text` with each late placeholder (RECOVERY_STEPS) replaced by what it names."""
    for mark, names in _LATE.items():
        if mark in text:
            text = text.replace(mark, names())
    return text


_TYPE_NAMES = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "path": "PATH", "bool": "BOOLEAN"}


def metavar(param: Any, ctx: click.Context) -> str:
    """What a user types for this parameter: TEXT, INTEGER, PATH or [a|b|c]."""
    label = str(param.display_type(ctx)).strip("<>")
    if label.startswith("list[") and label.endswith("]"):
        label = label[len("list[") : -1]
    if "|" in label:
        return f"[{label}]"
    label = label.removesuffix(" range")
    return _TYPE_NAMES.get(label, label.upper())


def short_help(fn: Any) -> str:
    """A command's first sentence, whole: click would cut it to fit the command list with `...`."""
    doc = " ".join((fn.__doc__ or "").split())
    return doc.split(". ")[0].rstrip(".") + "."


class HelpCommand(TyperCommand):
    """A typer command whose help is the plain click layout with readable metavars."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if param.param_type_name == "argument" and param.metavar is None:
                param.metavar = str(param.name).upper()

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                pieces.append(str(param.metavar) if param.required else f"[{param.metavar}]")
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        args: list[tuple[str, str]] = []
        opts: list[tuple[str, str]] = []
        for param in self.get_params(ctx):
            takes_value = not getattr(param, "is_flag", False) and not getattr(param, "count", False)
            if param.param_type_name == "option" and param.metavar is None and takes_value:
                param.metavar = metavar(param, ctx)
            if getattr(param, "help", None):
                param.help = fill_late(param.help)  # type: ignore[attr-defined]
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                args.append((str(param.metavar), record[1]))
            elif param.param_type_name == "option":
                opts.append(record)
        if args:
            with formatter.section("Arguments"):
                formatter.write_dl(args)
        if opts:
            with formatter.section("Options"):
                formatter.write_dl(opts)
