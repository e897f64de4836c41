"""fp32 ONNX -> prepared ONNX: transformer fusions, shape inference and graph clean-up before quantization.

Transformer fusions (`prepared_transformer`) come first, with onnxruntime's transformer optimizer:
attention, skip-layer-norm, GELU and bias fusions into com.microsoft contrib ops. Plain ONNX shape
inference knows nothing of those ops, and the quantizer needs a type and shape for every tensor it
touches, so a fused graph must go through onnxruntime's symbolic shape inference, which does know
them; where that fails, the fusions are dropped rather than handing the quantizer a graph it cannot
read. Dynamic axes (batch, sequence) must survive every step; a step that fixes one is an error.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qconvert.errors import PrepareError, brief

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransformerFusion:
    """The prepare stage's transformer fusions (onnxruntime.transformers.optimizer): what the graph is
    and the shapes the attention fusion must match."""

    model_type: str  # onnxruntime.transformers model type: bert, gpt2, ...
    num_heads: int
    hidden_size: int
    attention: bool = True  # fuse attention (off: only layer norm, GELU and bias fusions)


CONTRIB_DOMAIN = "com.microsoft"
SCOPES_KEY = "pkg.torch.onnx.name_scopes"  # node metadata: the PyTorch module path (quantize.selectors)
# Per-channel QuantizeLinear/DequantizeLinear (their `axis` attribute) exist from opset 13; an older
# graph (PaddlePaddle, tf2onnx, older torch exports: opset 10-12) is converted up to this first.
# (16-bit Q/DQ below opset 21 is written in the com.microsoft domain by onnxruntime's quantizer, and
# quantize.int4 converts to opset 21 itself, so neither needs a higher `min_opset` here.)
MIN_QDQ_OPSET = 13


def prepared_from_onnx(
    src: Path, dest: Path, external_data: bool = False, min_opset: int = MIN_QDQ_OPSET
) -> Path:
    """Run onnxruntime's quantization pre-processing (symbolic shape inference, constant
    folding and basic fusions, ONNX shape inference). Symbolic inference fails on some graphs;
    then it is skipped and plain ONNX shape inference is used, except on a graph with contrib ops,
    which plain inference cannot type: that is a PrepareError. A graph below `min_opset` is first
    converted up to it with onnx's version converter (`upgraded_opset`); the graph's input and
    output names are kept throughout."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src = upgraded_opset(src, dest.with_name(f"{dest.stem}-opset.onnx"), min_opset, external_data)
    save = {
        "save_as_external_data": external_data,
        "all_tensors_to_one_file": True,
        "external_data_location": f"{dest.name}.data",
    }
    src, dest = src.resolve(), dest.resolve()
    try:
        with _working_directory(dest.parent):
            quant_pre_process(str(src), str(dest), skip_symbolic_shape=False, **save)
    except Exception as first:
        contrib = contrib_ops(src)
        if contrib:
            raise PrepareError(
                f"symbolic shape inference failed on {src.name} ({type(first).__name__}: {brief(first)}), and the "
                f"graph has contrib ops ({', '.join(contrib)}) that plain ONNX shape inference cannot type."
            ) from first
        log.info("symbolic shape inference failed (%s); using ONNX shape inference only", first)
        try:
            quant_pre_process(str(src), str(dest), skip_symbolic_shape=True, **save)
        except Exception as e:
            raise PrepareError(f"preparing {src.name} for quantization failed: {e}") from e
    import onnx

    try:
        onnx.checker.check_model(str(dest))
    except Exception as e:
        raise PrepareError(f"the prepared model does not pass onnx.checker: {e}") from e
    lost = lost_dynamic_axes(src, dest)
    if lost:
        raise PrepareError(f"preparing {src.name} fixed dynamic axes: {'; '.join(lost)}")
    _check_io_names(src, dest)
    _restore_module_scopes(src, dest, external_data)
    return dest


def ai_onnx_opset(model: onnx.ModelProto) -> int:
    """The graph's default-domain opset (0: none declared)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def upgraded_opset(src: Path, dest: Path, min_opset: int, external_data: bool = False) -> Path:
    """`src` itself when its opset is `min_opset` or newer; else the graph converted to `min_opset`
    with onnx's version converter, saved to `dest`. A graph the converter cannot take there is a
    PrepareError naming the node that blocks it and what to try."""
    import onnx
    import onnx.version_converter

    from qconvert.artifacts import save_onnx

    header = onnx.load(str(src), load_external_data=False)
    opset = ai_onnx_opset(header)
    if opset >= min_opset:
        return src
    model = onnx.load(str(src))
    try:
        upgraded = onnx.version_converter.convert_version(model, min_opset)
        onnx.checker.check_model(upgraded, full_check=False)
    except Exception as e:
        raise PrepareError(_upgrade_failure(model, opset, min_opset, e)) from e
    # the converter sets the IR version to its own; onnxruntime reads any IR >= 7
    save_onnx(upgraded, dest, external=external_data or None)
    _check_io_names(src, dest)
    log.info("%s: opset %d converted to %d with onnx's version converter", src.name, opset, min_opset)
    return dest


def _upgrade_failure(model: onnx.ModelProto, opset: int, wanted: int, error: Exception) -> str:
    """The message for a graph the version converter cannot take from `opset` to `wanted`: the
    node it stopped at, when its message names an op type of the graph."""
    text = str(error)
    ops = {n.op_type for n in model.graph.node}
    blocking = next((op for op in sorted(ops, key=len, reverse=True) if op in text), None)
    node = next((n for n in model.graph.node if n.op_type == blocking), None)
    attribute = re.search(r"Attribute (\w+)", text)
    if node is None and attribute:  # the converter's adapters name the attribute, not the op
        node = next((n for n in model.graph.node if any(a.name == attribute[1] for a in n.attribute)), None)
    where = (
        f"the {node.op_type} node '{node.name or node.output[0]}' blocks it"
        + (f": {brief(error)}" if attribute else "")
        if node is not None
        else f"{type(error).__name__}: {brief(error)}"
    )
    return (
        f"this model is ONNX opset {opset}, and quantizing it to Q/DQ needs opset {wanted} or newer; onnx's "
        f"version converter cannot convert it ({where}). Re-export the model at opset {wanted} or newer "
        "(a PyTorch SOURCE: --opset 17; tf2onnx: --opset 17; paddle2onnx: --opset_version 17)."
    )


def _check_io_names(before: Path, after: Path) -> None:
    """A preparation step must keep the graph's input and output names: they are what the user feeds
    and reads."""
    import onnx

    def names(path: Path) -> tuple[list[str], list[str]]:
        model = onnx.load(str(path), load_external_data=False)
        init = {t.name for t in model.graph.initializer}
        return [i.name for i in model.graph.input if i.name not in init], [o.name for o in model.graph.output]

    old, new = names(before), names(after)
    if old != new:
        raise PrepareError(
            f"preparing {before.name} renamed its graph inputs {old[0]} -> {new[0]} or outputs {old[1]} -> {new[1]}"
        )


def _restore_module_scopes(src: Path, dest: Path, external_data: bool) -> None:
    """onnxruntime's optimization pass inside quant_pre_process can drop node metadata, and with it
    the PyTorch module paths that `--exclude module:...` selects by; carry them over from `src`."""
    import onnx

    from qconvert.artifacts import save_onnx

    before = onnx.load(str(src), load_external_data=False)
    if not any(p.key == SCOPES_KEY for n in before.graph.node for p in n.metadata_props):
        return
    after = onnx.load(str(dest))
    if carry_module_scopes(before, after):
        save_onnx(after, dest, external=external_data or None)


@contextlib.contextmanager
def _working_directory(folder: Path) -> Iterator[None]:
    """Where onnxruntime's symbolic shape inference, when it fails, writes its debug copy of the
    model (sym_shape_infer_temp.onnx and uuid-named weight files, into the current directory): the
    work folder, not the user's. Changes the process's directory for the duration."""
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


@dataclass(frozen=True)
class PreparedTransformer:
    """The prepared graph, the fused nodes it gained (op type -> count), and a note for the report."""

    path: Path
    model_type: str
    fused: dict[str, int] = field(default_factory=dict)
    note: str = ""


def prepared_transformer(
    src: Path, dest: Path, spec: TransformerFusion, external_data: bool = False
) -> PreparedTransformer:
    """Fuse `src` with onnxruntime's transformer optimizer for `spec`, then prepare it as
    `prepared_from_onnx` does. If the fused graph cannot be prepared, the unfused one is, and the
    note says why."""
    fused_path = dest.with_name(f"{dest.stem}-fused.onnx")
    try:
        fused = fused_from_onnx(src, fused_path, spec, external_data)
        if fused:
            path = prepared_from_onnx(fused_path, dest, external_data)
            counts = ", ".join(f"{op} {n}" for op, n in fused.items())
            note = (
                f"transformer fusions (onnxruntime.transformers, {spec.model_type}, {spec.num_heads} heads, "
                f"hidden {spec.hidden_size}): {counts}"
            )
            return PreparedTransformer(path, spec.model_type, fused, note)
        note = f"transformer fusions ({spec.model_type}): none of the patterns matched this graph"
    except PrepareError as e:
        log.info("transformer fusions dropped (%s); preparing the unfused graph", e)
        note = f"transformer fusions dropped: {str(e).rstrip('.')}; the unfused graph was quantized"
    return PreparedTransformer(prepared_from_onnx(src, dest, external_data), spec.model_type, note=note)


def fused_from_onnx(
    src: Path, dest: Path, spec: TransformerFusion, external_data: bool = False
) -> dict[str, int]:
    """Run onnxruntime's transformer fusions (python fusions only, opt_level 0: no provider-specific
    rewrites) on `src` and save the result to `dest`; return the fused ops it gained (op type ->
    count; empty: nothing matched, and `dest` is not written). Fused nodes get the PyTorch module path
    of the nodes they replaced."""
    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    from qconvert.artifacts import save_onnx

    before = onnx.load(str(src))
    options = FusionOptions(spec.model_type)
    options.enable_attention = spec.attention
    try:
        with _quiet_fusion_logs():
            optimized = optimize_model(
                before,
                model_type=spec.model_type,
                num_heads=spec.num_heads,
                hidden_size=spec.hidden_size,
                optimization_options=options,
                opt_level=0,
                use_gpu=False,
            )
        statistics = optimized.get_fused_operator_statistics()
    except Exception as e:
        raise PrepareError(
            f"onnxruntime's transformer fusions failed on {src.name} ({spec.model_type}): "
            f"{type(e).__name__}: {brief(e)}"
        ) from e
    after = optimized.model
    gained = _gained_ops(onnx.load(str(src), load_external_data=False), after, statistics)
    if not gained:
        return {}
    carry_module_scopes(onnx.load(str(src), load_external_data=False), after)
    if not any(o.domain == CONTRIB_DOMAIN for o in after.opset_import):
        after.opset_import.append(onnx.helper.make_opsetid(CONTRIB_DOMAIN, 1))
    try:
        onnx.checker.check_model(after, full_check=False)
    except Exception as e:
        raise PrepareError(f"the fused graph does not pass onnx.checker: {brief(e)}") from e
    save_onnx(after, dest, external=external_data or None)
    lost = lost_dynamic_axes(src, dest)
    if lost:
        raise PrepareError(f"the transformer fusions fixed dynamic axes: {'; '.join(lost)}")
    return gained


@contextlib.contextmanager
def _quiet_fusion_logs() -> Iterator[None]:
    """onnxruntime's fusion modules log each pattern they try or skip, under their bare module names
    (`fusion_embedlayer`, ...: the package puts its folder on sys.path); keep that out of the CLI's
    output unless qconvert itself logs at debug level."""
    import onnxruntime.transformers

    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    folder = Path(onnxruntime.transformers.__file__).parent
    loggers = [
        logging.getLogger(n) for n in ("onnxruntime.transformers", *(f.stem for f in folder.glob("*.py")))
    ]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _gained_ops(
    before: onnx.ModelProto, after: onnx.ModelProto, statistics: dict[str, int]
) -> dict[str, int]:
    """Fused op types (those onnxruntime counts) that the graph has more of after the fusions."""
    count_before = _op_counts(before.graph.node)
    count_after = _op_counts(after.graph.node)
    return {
        op: count_after[op] - count_before.get(op, 0)
        for op in sorted(statistics)
        if count_after.get(op, 0) > count_before.get(op, 0)
    }


def _op_counts(nodes: Iterable[onnx.NodeProto]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in nodes:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def contrib_ops(path: Path) -> list[str]:
    """The com.microsoft op types in a graph, sorted."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return sorted({n.op_type for n in model.graph.node if n.domain == CONTRIB_DOMAIN})


def _module_of(node: onnx.NodeProto) -> str | None:
    text = next((p.value for p in node.metadata_props if p.key == SCOPES_KEY), None)
    try:
        scopes = ast.literal_eval(text) if text else None
    except (ValueError, SyntaxError):
        return None
    modules = [s for s in scopes[:-1] if s] if isinstance(scopes, list) else []
    return modules[-1] if modules else None


def _parameter_module(names: Iterable[str]) -> str | None:
    """The module that owns these parameters: `embeddings.word_embeddings.weight` and
    `embeddings.LayerNorm.bias` -> `embeddings`."""
    paths = [n.split(".")[:-1] for n in names if "." in n and n.rsplit(".", 1)[-1] in ("weight", "bias")]
    if not paths:
        return None
    common = paths[0]
    for parts in paths[1:]:
        common = common[: _shared(common, parts)]
    return ".".join(common) or None


def _shared(a: list[str], b: list[str]) -> int:
    """How many leading parts `a` and `b` have in common."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def carry_module_scopes(before: onnx.ModelProto, after: onnx.ModelProto) -> int:
    """Give each node of `after` that has no module path the one of the `before` node with its name,
    or that produced the same output; a fused node whose outputs are all new gets the module owning
    the parameters it reads. Returns how many nodes got one."""
    by_name: dict[str, str] = {}
    by_output: dict[str, str] = {}
    for node in before.graph.node:
        module = _module_of(node)
        if module is None:
            continue
        by_name[node.name] = module
        by_output.update(dict.fromkeys(node.output, module))
    initializers = {t.name for t in after.graph.initializer}
    count = 0
    for node in after.graph.node:
        if _module_of(node) is not None:
            continue
        module = (
            by_name.get(node.name)
            or next((by_output[o] for o in node.output if o in by_output), None)
            or _parameter_module(i for i in node.input if i in initializers)
        )
        if module is None:
            continue
        prop = node.metadata_props.add()
        prop.key, prop.value = SCOPES_KEY, repr([module, node.op_type])
        count += 1
    return count


def _io_dims(model: Any) -> dict[str, list[str | int]]:
    """Graph input and output name -> per axis its symbol (dim_param), size, or "" (unknown)."""
    init = {t.name for t in model.graph.initializer}
    return {
        v.name: [
            d.dim_param or (d.dim_value if d.HasField("dim_value") else "")
            for d in v.type.tensor_type.shape.dim
        ]
        for v in [*model.graph.input, *model.graph.output]
        if v.name not in init
    }


def lost_dynamic_axes(before: Path, after: Path) -> list[str]:
    """Graph inputs and outputs (by name, in both graphs) with an axis that in `before` is one of the
    inputs' symbolic axes (batch_size, sequence_length, ...) and in `after` a fixed size; one line each."""
    import onnx

    old_model = onnx.load(str(before), load_external_data=False)
    old = _io_dims(old_model)
    new = _io_dims(onnx.load(str(after), load_external_data=False))
    init = {t.name for t in old_model.graph.initializer}
    symbols = {
        d
        for v in old_model.graph.input
        if v.name not in init
        for d in old[v.name]
        if isinstance(d, str) and d
    }
    lost = []
    for name, dims in old.items():
        for axis, (was, now) in enumerate(zip(dims, new.get(name, []), strict=False)):
            if was in symbols and isinstance(now, int):
                lost.append(f"{name} axis {axis} ({was}) became {now}")
    return lost
