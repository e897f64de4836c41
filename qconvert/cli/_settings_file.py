"""`qconvert export --config qconvert.toml`: the export's flags in a file, so a CI job is one short line.

The `[export]` table takes the flags' own names as keys (`target = "tensorrt"`, `calibration-method =
"entropy"`, `target-option = ["format=qdq"]`); a flag given on the command line wins over the file.
An unknown key is refused (exit 2) and named. `[tolerance]` (read by `qconvert validate`) may sit in
the same file; any other table is refused, so a misspelt section never passes silently."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

TABLE = "export"
ALLOWED_TABLES = {TABLE, "tolerance"}
NOT_SETTINGS = {"help", "config", "quiet", "verbose", "debug"}


def flag_names(command: Any) -> dict[str, Any]:
    """`calibration-method` -> its parameter, for every option of `command` that takes a setting."""
    names: dict[str, Any] = {}
    for param in command.params:
        if param.param_type_name == "argument":
            names[str(param.name)] = param
            continue
        for opt in param.opts:
            if opt.startswith("--"):
                names.setdefault(opt[2:], param)
    return {k: v for k, v in names.items() if v.name not in NOT_SETTINGS and k not in NOT_SETTINGS}


def read_settings(path: Path, command: Any) -> dict[str, Any]:
    """The file's `[export]` table as click's default_map (parameter name -> value)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    if not path.is_file():
        raise typer.BadParameter(f"{path}: no such file.", param_hint="--config")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise typer.BadParameter(f"{path}: not valid TOML ({e}).", param_hint="--config") from None
    for key, value in doc.items():
        if key not in ALLOWED_TABLES:
            raise typer.BadParameter(
                f"{path}: unknown {'table' if isinstance(value, dict) else 'key'} {key!r}. Put the export's "
                f'settings in [{TABLE}] (keys: the flags\' names, e.g. target = "tensorrt").',
                param_hint="--config",
            )
    table = doc.get(TABLE, {})
    if not isinstance(table, dict):
        raise typer.BadParameter(f"{path}: {TABLE!r} must be a table.", param_hint="--config")
    known = flag_names(command)
    settings: dict[str, Any] = {}
    for key, value in table.items():
        param = known.get(key) or known.get(key.replace("_", "-"))
        if param is None:
            raise typer.BadParameter(
                f"{path}: [{TABLE}] key {key!r} is not a setting of `qconvert export`. "
                f"Keys: {', '.join(sorted(known))}.",
                param_hint="--config",
            )
        settings[str(param.name)] = _value(param, value)
    return settings


def _value(param: Any, value: Any) -> Any:
    """TOML's value as the command line would give it: text for choices and numbers, a list for a
    repeatable flag."""
    if getattr(param, "multiple", False):
        items = value if isinstance(value, list) else [value]
        return [str(v) for v in items]
    if isinstance(value, bool):
        return value
    return str(value)


def load(ctx: typer.Context, param: typer.CallbackParam, value: Path | None) -> Path | None:
    """The --config callback (eager: it runs before the other options take their defaults)."""
    if value is not None:
        ctx.default_map = {**(ctx.default_map or {}), **read_settings(value, ctx.command)}
    return value


def source_of(name: str) -> str:
    """Where the current command's setting `name` came from: 'flag', 'config' or 'default'."""
    from typer._click.core import ParameterSource
    from typer._click.globals import get_current_context

    ctx = get_current_context(silent=True)
    source = None if ctx is None else ctx.get_parameter_source(name)
    if source == ParameterSource.DEFAULT_MAP:
        return "config"
    if source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
        return "flag"
    return "default"
