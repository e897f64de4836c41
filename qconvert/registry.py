"""A small generic registry: targets and quantizers register themselves by name.

Built-ins register in their package's __init__; third parties register the same way through
entry points (`load_plugins`): group `qconvert.targets` (a Target), `qconvert.quantizers` (a
quantize.Method or a quantizer function) or `qconvert.recoveries` (a recover.Recovery or its class),
the entry point's name being the registry name. The CLI's choices come from these registries
(`qconvert.choices`), so a plugin shows up in `--help` and in validation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any, Generic, TypeVar

from qconvert.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to entries; unknown names raise a ConfigError listing the valid ones. With a
    plugin group, the group's entry points are registered on first use (after the built-ins, so
    plugin modules may import qconvert freely). Names are listed sorted, or with `by_name=False` in
    the order they were registered (built-ins first, then plugins)."""

    def __init__(self, kind: str, flag: str, *, by_name: bool = True) -> None:
        self.kind = kind
        self.flag = flag
        self.by_name = by_name
        self._entries: dict[str, T] = {}
        self._plugins: tuple[str, Callable[[Any], T] | None] | None = None

    def plugins(self, group: str, convert: Callable[[Any], T] | None = None) -> None:
        """Take third-party entries from entry-point `group` (loaded when the registry is first read)."""
        self._plugins = (group, convert)

    def _load_plugins(self) -> None:
        if self._plugins is not None:
            group, convert = self._plugins
            self._plugins = None
            load_plugins(self, group, convert)

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        self._load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(self.names())
            raise ConfigError(
                f"{self.flag} {name!r} is not a known {self.kind}. Valid choices: {valid}."
            ) from None

    def names(self) -> list[str]:
        return [name for name, _ in self]

    def __iter__(self) -> Iterator[tuple[str, T]]:
        self._load_plugins()
        items = list(self._entries.items())
        return iter(sorted(items) if self.by_name else items)

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._entries


def load_plugins(registry: Registry[T], group: str, convert: Callable[[Any], T] | None = None) -> list[str]:
    """Register every entry point of `group` (name -> loaded object, through `convert`); a plugin
    that fails to load or names a built-in is skipped with a warning, never breaking the built-ins.
    Returns the names registered."""
    added = []
    for entry in metadata.entry_points(group=group):
        if entry.name in registry._entries:
            log.warning(
                "%s plugin %r (%s) is ignored: that name is built in", registry.kind, entry.name, entry.value
            )
            continue
        try:
            loaded = entry.load()
            registry.register(entry.name)(convert(loaded) if convert else loaded)
        except Exception as e:  # a broken plugin must not break qconvert
            log.warning(
                "%s plugin %r (%s) failed to load: %s: %s",
                registry.kind,
                entry.name,
                entry.value,
                type(e).__name__,
                e,
            )
            continue
        added.append(entry.name)
    return added
