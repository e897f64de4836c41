"""`qconvert inspect MODEL`: inputs, outputs, opset, size and op counts of an ONNX file (no torch)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from qconvert.cli._common import out, print_table
from qconvert.errors import SourceError
from qconvert.report import human_bytes


def inspect(model: Path = typer.Argument(..., help="An .onnx file.")) -> int:
    """Show an ONNX model's inputs, outputs, opset, size and operators."""
    import onnx

    from qconvert.artifacts import onnx_size

    if not model.is_file():
        raise SourceError(f"MODEL {model}: no such file.")
    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception as e:
        raise SourceError(f"MODEL {model}: not a valid ONNX file ({e}).") from e

    def shape(vi: onnx.ValueInfoProto) -> str:
        dims = vi.type.tensor_type.shape.dim
        return "[" + ", ".join(d.dim_param or str(d.dim_value) for d in dims) + "]"

    init = {i.name for i in proto.graph.initializer}
    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in proto.opset_import)
    out.print(f"[bold]{escape(str(model))}[/]  {human_bytes(onnx_size(model))}  opsets: {opsets}")
    for label, values in (
        ("input", [i for i in proto.graph.input if i.name not in init]),
        ("output", proto.graph.output),
    ):
        for vi in values:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
            out.print(escape(f"  {label} {vi.name}: {dtype} {shape(vi)}"))
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    table = Table("op", "count")
    for op, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        table.add_row(op, str(n))
    print_table(table)
    return 0
