"""`--exclude` / `--include`: choose nodes by name, op type, or the PyTorch module they came from.

A selector is `[name:|op:|module:]PATTERN`, where PATTERN is a glob (`features.0.*`) or, after
`re:`, a regular expression. Without a field it is tried against all three. The module path is
read from the exporter's node metadata (`pkg.torch.onnx.name_scopes`), so a selector written
against the PyTorch model survives re-export, where node names may change.

A selector that matches no node is an error, never silence.
"""

from __future__ import annotations

import ast
import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from qconvert.errors import ConfigError

FIELDS = ("name", "op", "module")
SCOPES_KEY = "pkg.torch.onnx.name_scopes"


@dataclass(frozen=True)
class NodeInfo:
    name: str
    op: str
    module: str | None  # dotted PyTorch module path, e.g. "features.0"; None when unknown


def node_infos(model_path: Path) -> list[NodeInfo]:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return [NodeInfo(n.name, n.op_type, _module_of(n)) for n in model.graph.node if n.name]


def _module_of(node: object) -> str | None:
    props = {p.key: p.value for p in getattr(node, "metadata_props", [])}
    text = props.get(SCOPES_KEY)
    if not text:
        return None
    try:
        scopes = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    # [..., "features", "features.0", "conv2d"]: the last entry names the op, the one before the module
    modules = [s for s in scopes[:-1] if s] if isinstance(scopes, list) else []
    return modules[-1] if modules else None


def _matcher(pattern: str) -> re.Pattern[str]:
    if pattern.startswith("re:"):
        try:
            return re.compile(pattern[3:])
        except re.error as e:
            raise ConfigError(f"selector {pattern!r}: not a valid regular expression ({e}).") from None
    return re.compile(fnmatch.translate(pattern))


def matches(selector: str, node: NodeInfo) -> bool:
    field, sep, pattern = selector.partition(":")
    if not sep or field not in FIELDS:
        field, pattern = "", selector
    rx = _matcher(pattern)
    candidates: list[str] = []
    if field in ("", "name"):
        candidates.append(node.name)
    if field in ("", "op"):
        candidates.append(node.op)
    if field in ("", "module") and node.module:
        # "features.0.*" also selects the module "features.0" itself
        candidates += [node.module, f"{node.module}."]
    match = rx.search if pattern.startswith("re:") else rx.fullmatch
    return any(match(c) for c in candidates)


def select(nodes: Sequence[NodeInfo], selectors: Sequence[str], flag: str) -> list[str]:
    """Names of the nodes any selector matches; a selector matching nothing is a ConfigError."""
    chosen: dict[str, None] = {}
    for selector in selectors:
        hit = [n.name for n in nodes if matches(selector, n)]
        if not hit:
            modules = sorted({n.module for n in nodes if n.module})
            raise ConfigError(
                f"{flag} {selector!r} matches no node, so it would change nothing. Selectors are "
                "[name:|op:|module:]GLOB or re:REGEX. This model has ops "
                f"{', '.join(sorted({n.op for n in nodes}))}; modules {', '.join(modules[:12]) or '(none recorded)'}"
                f"{' ...' if len(modules) > 12 else ''}; nodes such as {', '.join(n.name for n in nodes[:6])}."
            )
        chosen.update(dict.fromkeys(hit))
    return list(chosen)
