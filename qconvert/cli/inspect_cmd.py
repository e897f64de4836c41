"""`qconvert inspect MODEL`: inputs, outputs, opset, size and op counts of an ONNX file (no torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from qconvert.cli._common import out, print_table, write_json_stdout
from qconvert.errors import SourceError
from qconvert.report import human_bytes


def inspect(
    model: Path = typer.Argument(
        ..., help="An .onnx file, or an OUT_DIR written by `qconvert export` (its model.onnx)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the facts as JSON on stdout instead."),
) -> int:
    """Show an ONNX model's inputs, outputs, opset, size and operators."""
    facts = model_facts(resolve_model(model))
    if as_json:
        write_json_stdout(facts)
        return 0
    opsets = ", ".join(f"{domain} {version}" for domain, version in facts["opsets"].items())
    out.print(f"[bold]{escape(facts['path'])}[/]  {human_bytes(facts['size_bytes'])}  opsets: {opsets}")
    for label in ("input", "output"):
        for vi in facts[f"{label}s"]:
            out.print(escape(f"  {label} {vi['name']}: {vi['dtype']} [{', '.join(map(str, vi['shape']))}]"))
    table = Table("op", "count")
    for op, n in facts["ops"].items():
        table.add_row(op, str(n))
    print_table(table)
    return 0


def resolve_model(model: Path) -> Path:
    """MODEL itself, or OUT_DIR/model.onnx for a folder `qconvert export` wrote."""
    if model.is_dir():
        inner = model / "model.onnx"
        if inner.is_file():
            return inner
        onnx_files = sorted(p.name for p in model.glob("*.onnx"))
        hint = f" .onnx files there: {', '.join(onnx_files)}." if onnx_files else ""
        raise SourceError(
            f"MODEL {model}: is a folder without model.onnx, so not an OUT_DIR of `qconvert export`.{hint} "
            "Pass the .onnx file itself."
        )
    if not model.is_file():
        raise SourceError(f"MODEL {model}: no such file or folder.")
    return model


def model_facts(model: Path) -> dict[str, Any]:
    """What `inspect` shows, as plain data (the --json output)."""
    import onnx

    from qconvert.artifacts import onnx_size

    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception as e:
        raise SourceError(f"MODEL {model}: not a valid ONNX file ({e}).") from e

    def value(vi: onnx.ValueInfoProto) -> dict[str, Any]:
        dims = vi.type.tensor_type.shape.dim
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        return {
            "name": vi.name,
            "dtype": str(dtype),
            "shape": [d.dim_param or d.dim_value for d in dims],
        }

    init = {i.name for i in proto.graph.initializer}
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return {
        "path": str(model),
        "size_bytes": onnx_size(model),
        "opsets": {o.domain or "ai.onnx": o.version for o in proto.opset_import},
        "inputs": [value(i) for i in proto.graph.input if i.name not in init],
        "outputs": [value(o) for o in proto.graph.output],
        "ops": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
    }
