"""4-bit weight-only: constant MatMul weights stored as 4-bit blocks for onnxruntime's MatMulNBits.

Activations stay float. Each weight [K, N] is cut into blocks of `QuantizeConfig.block_size` input
channels (along K); each block of each output column has its own float scale and, unless the
target wants symmetric weights, a 4-bit zero point. The weights are rounded by one of three
algorithms (`QuantizeConfig.weight_algorithm`), the first two run by onnxruntime's
`matmul_nbits_quantizer`:

- rtn: round to nearest with min/max ranges per block (its `DefaultWeightOnlyQuantConfig`, the C++
  block quantizer). No data needed. Also turns embedding tables (a Gather on a constant [V, D]
  float table) into GatherBlockQuantized with int4 data, blocked along D; that needs int4 tensor
  types, so the model is first converted to opset 21 with onnx's version converter (when it cannot
  be, the tables stay float and the notes say so).
- hqq: half-quadratic quantization, which optimizes each block's scale and (float) zero point to
  minimise the weight error; no data needed. Always asymmetric.
- gptq: GPTQ, which rounds one input channel at a time and moves the error onto the channels not
  yet rounded, weighted by the layer's input statistics (the Hessian), so it needs calibration data.
  This one is qconvert's own (`quantize/gptq.py`): onnxruntime 1.32's GPTQ runs but propagates no
  error, so its weights equal RTN's. MatMul weights only; 2-D weights only.

PyTorch exports `nn.Linear` as Gemm, which MatMulNBits does not replace: a Gemm with a constant
weight is first rewritten as MatMul (+ Add for its bias), so Linear layers are not silently left in
fp32. A model with no constant MatMul weight at all (a pure conv net) is refused.

What was done is recorded in the model's metadata under `METADATA_KEY` (see `int4_notes`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qconvert.artifacts import save_onnx
from qconvert.calibrate import Dataset
from qconvert.errors import CalibrationError, ConfigError, QuantizationError
from qconvert.quantize._common import check_output, unique_name
from qconvert.types import MIN_BLOCK_SIZE, QuantizeConfig

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

FORMAT = "matmulnbits"  # QuantizeConfig.format of 4-bit weight-only graphs
METADATA_KEY = "qconvert.int4"
INT4_OPSET = 21  # int4/uint4 tensors (GatherBlockQuantized's table) need opset 21 and IR version 10
INT4_IR_VERSION = 10
CONTRIB_DOMAIN = "com.microsoft"
# how weights are rounded (`--algorithm`, QuantizeConfig.weight_algorithm), the first being the default:
# round to nearest, half-quadratic, GPTQ (needs calibration)
WEIGHT_ALGORITHMS = ("rtn", "hqq", "gptq")


@dataclass(frozen=True)
class Int4Record:
    """What `quantize_int4` did, stored in the model's metadata."""

    algorithm: str
    block_size: int
    symmetric: bool
    accuracy_level: int
    matmuls: int  # MatMuls with a constant weight (Gemms rewritten as MatMul included)
    quantized: int  # of those, now MatMulNBits
    gemms_rewritten: int
    embeddings: int  # embedding tables (constant float Gather data)
    embeddings_quantized: int  # of those, now GatherBlockQuantized
    embeddings_note: str = ""  # why tables stayed float, when they did


def _taken_names(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer} | {v.name for v in graph.input}
    for node in graph.node:
        names.update(node.output)
        names.add(node.name)
    return names


def name_unnamed_nodes(graph: onnx.GraphProto) -> None:
    """Give every node a unique name: onnxruntime's quantizer excludes nodes by name, and an empty
    name would match every unnamed node."""
    taken = _taken_names(graph)
    for node in graph.node:
        if not node.name:
            node.name = unique_name(f"{node.op_type}_{node.output[0]}", taken)


def _constant_floats(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """fp32 initializers that are true constants (not graph inputs, which a caller may override)."""
    from onnx import TensorProto

    overridable = {v.name for v in graph.input}
    return {
        t.name: t for t in graph.initializer if t.data_type == TensorProto.FLOAT and t.name not in overridable
    }


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    from onnx import helper

    found = next((a for a in node.attribute if a.name == name), None)
    return default if found is None else helper.get_attribute_value(found)


def _readers(graph: onnx.GraphProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            counts[name] = counts.get(name, 0) + 1
    return counts


def matmuls_from_gemms(model: onnx.ModelProto) -> int:
    """Rewrite each Gemm whose B is a constant 2-D fp32 weight as MatMul (+ Add for C), in place:
    Y = alpha * A' @ B' + beta * C becomes MatMul(A', alpha * B') and Add(.., beta * C), with A'
    a Transpose of A when transA. Returns how many were rewritten."""
    from onnx import helper, numpy_helper

    graph = model.graph
    consts = _constant_floats(graph)
    readers = _readers(graph)
    taken = _taken_names(graph)
    new_nodes: list[onnx.NodeProto] = []
    dropped: set[str] = set()
    rewritten = 0
    for node in graph.node:
        b = node.input[1] if node.op_type == "Gemm" and node.domain in ("", "ai.onnx") else ""
        c = node.input[2] if len(node.input) > 2 else ""
        alpha, beta = float(_attr(node, "alpha", 1.0)), float(_attr(node, "beta", 1.0))
        if b not in consts or len(consts[b].dims) != 2 or (c and beta != 1.0 and c not in consts):
            new_nodes.append(node)
            continue
        weight = numpy_helper.to_array(consts[b]).astype(np.float32)
        if _attr(node, "transB", 0):
            weight = weight.T
        w_name = unique_name(f"{b}_matmul", taken)
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight * alpha), w_name))
        a = node.input[0]
        if _attr(node, "transA", 0):
            a_t = unique_name(f"{a}_transposed", taken)
            new_nodes.append(
                helper.make_node(
                    "Transpose", [a], [a_t], name=unique_name(f"{node.name}_transA", taken), perm=[1, 0]
                )
            )
            a = a_t
        out = node.output[0]
        product = unique_name(f"{out}_matmul", taken) if c else out
        new_nodes.append(helper.make_node("MatMul", [a, w_name], [product], name=node.name))
        bias = c
        if c:
            if beta != 1.0:
                bias = unique_name(f"{c}_scaled", taken)
                scaled = numpy_helper.to_array(consts[c]).astype(np.float32) * beta
                graph.initializer.append(numpy_helper.from_array(scaled, bias))
            new_nodes.append(helper.make_node("Add", [product, bias], [out], name=f"{node.name}_bias"))
        for name in (b, c if c != bias else ""):  # B, and C when a scaled copy replaced it
            if name:
                readers[name] -= 1
                if readers[name] == 0 and name in consts:
                    dropped.add(name)
        rewritten += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    kept = [t for t in graph.initializer if t.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return rewritten


def _is_matrix(tensor: onnx.TensorProto) -> bool:
    """2-D, or N-D with leading ones (onnxruntime squeezes those to [K, N])."""
    dims = list(tensor.dims)
    return len(dims) >= 2 and all(d == 1 for d in dims[:-2])


def weight_matmuls(graph: onnx.GraphProto) -> tuple[list[str], list[str]]:
    """(MatMuls whose B is a constant fp32 matrix, other MatMuls with a constant B) by node name."""
    consts = _constant_floats(graph)
    every = {t.name for t in graph.initializer}
    good: list[str] = []
    other: list[str] = []
    for node in graph.node:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or node.input[1] not in every:
            continue
        tensor = consts.get(node.input[1])
        (good if tensor is not None and _is_matrix(tensor) else other).append(node.name)
    return good, other


def embedding_gathers(graph: onnx.GraphProto) -> list[str]:
    """Gathers that look rows up in a constant fp32 [V, D] table along axis 0 (embeddings), where
    nothing but such Gathers reads the table: a table also read elsewhere (tied to an output
    projection through a Transpose, say) would have to stay in fp32 too, and 4 bits would only add a
    copy."""
    consts = _constant_floats(graph)
    gathers = [
        n
        for n in graph.node
        if n.op_type == "Gather"
        and n.domain in ("", "ai.onnx")
        and n.input[0] in consts
        and len(consts[n.input[0]].dims) == 2
        and int(_attr(n, "axis", 0)) in (0, -2)
    ]
    readers = _readers(graph)
    per_table: dict[str, int] = {}
    for n in gathers:
        per_table[n.input[0]] = per_table.get(n.input[0], 0) + 1
    return [n.name for n in gathers if readers[n.input[0]] == per_table[n.input[0]]]


def _ai_onnx_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _at_int4_opset(model: onnx.ModelProto) -> tuple[onnx.ModelProto | None, str]:
    """The model at opset >= 21 (onnx's version converter), or (None, why it could not be)."""
    import onnx

    if _ai_onnx_opset(model) >= INT4_OPSET:
        return model, ""
    try:
        converted = onnx.version_converter.convert_version(model, INT4_OPSET)
        onnx.checker.check_model(converted)
    except Exception as e:
        return None, f"the model could not be converted to opset {INT4_OPSET} ({type(e).__name__}: {e})"
    converted.ir_version = max(converted.ir_version, INT4_IR_VERSION)
    return converted, ""


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime's matmul_nbits_quantizer calls logging.basicConfig when imported (adding a handler
    to the root logger, which would make every library log print): keep the root logger as it was."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        with warnings.catch_warnings():
            # HQQ hands torch a read-only numpy view (torch warns; the quantizer does not write to it)
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def _nbits() -> Any:
    """onnxruntime.quantization.matmul_nbits_quantizer, imported without its logging side effect."""
    with _quiet_quantizer():
        from onnxruntime.quantization import matmul_nbits_quantizer

    return matmul_nbits_quantizer


def _algo_config(qc: QuantizeConfig, gathers: bool) -> Any:
    """onnxruntime's configuration for rtn (DefaultWeightOnlyQuantConfig) or hqq."""
    nbits = _nbits()
    if qc.weight_algorithm == "hqq":
        return nbits.HQQWeightOnlyQuantConfig(
            block_size=qc.block_size, bits=4, op_types_to_quantize=("MatMul",)
        )
    return nbits.DefaultWeightOnlyQuantConfig(
        block_size=qc.block_size,
        is_symmetric=qc.weight_symmetric,
        accuracy_level=qc.accuracy_level or None,
        op_types_to_quantize=("MatMul", "Gather") if gathers else ("MatMul",),
        quant_axes=(("MatMul", 0), ("Gather", 1)),
        bits=4,
    )


def _run_quantizer(
    model: onnx.ModelProto, qc: QuantizeConfig, config: Any, exclude: list[str]
) -> onnx.ModelProto:
    with _quiet_quantizer():
        quantizer = _nbits().MatMulNBitsQuantizer(
            model,
            bits=4,
            block_size=qc.block_size,
            is_symmetric=qc.weight_symmetric,
            accuracy_level=qc.accuracy_level or None,
            nodes_to_exclude=exclude,
            algo_config=config,
        )
        quantizer.process()
    out: onnx.ModelProto = quantizer.model.model
    return out


def _check_settings(qc: QuantizeConfig, calibration: Dataset | None) -> None:
    """What 4-bit weight-only needs, checked before any work."""
    if qc.bits != 4:
        raise ConfigError(f"4-bit weight-only (MatMulNBits) needs --bits 4 (got --bits {qc.bits}).")
    if qc.format != FORMAT:
        raise ConfigError(
            f"4-bit weight-only writes onnxruntime's MatMulNBits (format {FORMAT}); this target's settings ask "
            f"for format {qc.format}, so it cannot take 4-bit weights."
        )
    if qc.block_size < MIN_BLOCK_SIZE or qc.block_size & (qc.block_size - 1):
        raise ConfigError(f"--block-size {qc.block_size}: must be a power of two, {MIN_BLOCK_SIZE} or more.")
    if qc.weight_algorithm not in WEIGHT_ALGORITHMS:
        raise ConfigError(
            f"--algorithm {qc.weight_algorithm!r} is not supported. Valid: {', '.join(WEIGHT_ALGORITHMS)}"
        )
    if qc.weight_algorithm == "hqq" and qc.weight_symmetric:
        raise ConfigError(
            "--algorithm hqq writes asymmetric weights (a float zero point per block), but this target asks "
            "for symmetric 4-bit weights. Use --algorithm rtn or gptq."
        )
    if qc.weight_algorithm == "gptq" and (calibration is None or len(calibration) == 0):
        raise CalibrationError(
            "--algorithm gptq needs calibration data (it weighs each layer's rounding by that layer's inputs): "
            "pass --calibration DATA (.npz keyed by input name), or use --algorithm rtn or hqq, which need none."
        )


def quantize_int4(
    src: Path,
    dest: Path,
    qc: QuantizeConfig,
    calibration: Dataset | None,
    on_batch: Callable[[int, int], None] | None = None,
) -> Path:
    """Calibration data is used by gptq only."""
    from onnx import helper

    _check_settings(qc, calibration)
    model, rewritten, good, other = _weight_matmuls_of(src, qc)
    model, tables, embeddings_note = _with_embeddings(model, qc)
    gathers = bool(tables) and not embeddings_note
    if not any(o.domain == CONTRIB_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(CONTRIB_DOMAIN, 1))
    log.info(
        "4-bit weight-only (%s, block %d): %d MatMul weights (%d from Gemm), %d embedding tables%s",
        qc.weight_algorithm,
        qc.block_size,
        len(good),
        rewritten,
        len(tables),
        f" kept float: {embeddings_note}" if embeddings_note else "",
    )
    try:
        if qc.weight_algorithm == "gptq":
            assert calibration is not None  # _check_settings
            quantized = _quantize_gptq(model, good, qc, calibration, on_batch)
        else:
            keep_float = other + ([] if gathers else tables)
            quantized = _run_quantizer(model, qc, _algo_config(qc, gathers), keep_float)
    except Exception as e:
        raise QuantizationError(
            f"4-bit weight-only quantization ({qc.weight_algorithm}) failed: {type(e).__name__}: {e}"
        ) from e
    ops = [n.op_type for n in quantized.graph.node]
    record = Int4Record(
        algorithm=qc.weight_algorithm,
        block_size=qc.block_size,
        symmetric=qc.weight_symmetric,
        accuracy_level=0 if qc.weight_algorithm == "hqq" else qc.accuracy_level,  # HQQ's nodes get none
        matmuls=len(good) + len(other),
        quantized=ops.count("MatMulNBits"),
        gemms_rewritten=rewritten,
        embeddings=len(tables),
        embeddings_quantized=ops.count("GatherBlockQuantized"),
        embeddings_note=embeddings_note,
    )
    left, _ = weight_matmuls(quantized.graph)
    if record.quantized != len(good) or set(left) & set(good):
        raise QuantizationError(
            f"4-bit weight-only ({qc.weight_algorithm}) wrote {record.quantized} MatMulNBits for {len(good)} "
            f"MatMul weights and left {', '.join(sorted(set(left) & set(good))[:5]) or 'none'} in fp32."
        )
    props = {p.key: p.value for p in quantized.metadata_props}
    props[METADATA_KEY] = json.dumps(asdict(record))
    helper.set_model_props(quantized, props)
    try:
        save_onnx(quantized, dest, qc.external_data)
    except Exception as e:
        raise QuantizationError(f"writing the 4-bit model failed: {type(e).__name__}: {e}") from e
    return check_output(dest)


def _weight_matmuls_of(src: Path, qc: QuantizeConfig) -> tuple[onnx.ModelProto, int, list[str], list[str]]:
    """The prepared model (Gemms with a constant weight rewritten as MatMul, every node named), how
    many Gemms were rewritten, and the MatMuls to quantize and to keep float. None to quantize is a
    ConfigError: a convolutional model wants --bits 8."""
    import onnx

    try:
        model = onnx.load(str(src))
    except Exception as e:
        raise QuantizationError(f"cannot read the prepared model {src.name}: {e}") from e
    name_unnamed_nodes(model.graph)
    rewritten = matmuls_from_gemms(model)
    good, other = weight_matmuls(model.graph)
    if not good:
        ops = sorted({n.op_type for n in model.graph.node})
        raise ConfigError(
            "--bits 4 (weight-only, MatMulNBits) quantizes MatMul and Linear/Gemm weights, and this model has "
            f"no MatMul or Gemm with a constant fp32 weight (its ops: {', '.join(ops[:12])}"
            f"{' ...' if len(ops) > 12 else ''}). Use --bits 8 for convolutional models."
        )
    if qc.weight_algorithm == "gptq":  # 2-D weights only; the others stay float
        flat = _two_dimensional(model.graph, good)
        good, other = flat, other + [n for n in good if n not in flat]
    return model, rewritten, good, other


def _with_embeddings(model: onnx.ModelProto, qc: QuantizeConfig) -> tuple[onnx.ModelProto, list[str], str]:
    """The model (at the int4 opset where rtn quantizes embedding tables), its embedding Gathers, and
    why they stay float ("" when they are quantized)."""
    tables = embedding_gathers(model.graph)
    if tables and qc.weight_algorithm != "rtn":
        return model, tables, f"--algorithm {qc.weight_algorithm} quantizes MatMul weights only"
    if not tables:
        return model, tables, ""
    converted, note = _at_int4_opset(model)
    return (model if converted is None else converted), tables, note


def _two_dimensional(graph: onnx.GraphProto, names: list[str]) -> list[str]:
    init = {t.name: t for t in graph.initializer}
    return [n.name for n in graph.node if n.name in names and len(init[n.input[1]].dims) == 2]


def _quantize_gptq(
    model: onnx.ModelProto,
    names: list[str],
    qc: QuantizeConfig,
    calibration: Dataset,
    on_batch: Callable[[int, int], None] | None,
) -> onnx.ModelProto:
    """Replace the named MatMuls (2-D constant weights) with MatMulNBits rounded by `gptq.gptq_codes`."""
    from onnx import helper, numpy_helper

    from qconvert.quantize.gptq import gptq_codes, input_hessians, pack_matmul_nbits

    graph = model.graph
    targets = [n for n in graph.node if n.name in set(names)]
    hessians = input_hessians(model, sorted({n.input[0] for n in targets}), calibration, on_batch)
    init = {t.name: t for t in graph.initializer}
    taken = _taken_names(graph)
    replaced: set[str] = set()
    for node in targets:
        weight = numpy_helper.to_array(init[node.input[1]])
        k, n = weight.shape
        codes, scales, zeros = gptq_codes(weight, hessians[node.input[0]], qc.block_size, qc.weight_symmetric)
        packed, scale, zero = pack_matmul_nbits(codes, scales, zeros, qc.block_size, qc.weight_symmetric)
        stem = node.input[1]
        inputs = [node.input[0], unique_name(f"{stem}_Q4", taken), unique_name(f"{stem}_scales", taken)]
        new_inits = [numpy_helper.from_array(packed, inputs[1]), numpy_helper.from_array(scale, inputs[2])]
        if zero is not None:
            inputs.append(unique_name(f"{stem}_zero_points", taken))
            new_inits.append(numpy_helper.from_array(zero, inputs[3]))
        graph.initializer.extend(new_inits)
        replaced.add(stem)
        attrs = {"K": k, "N": n, "bits": 4, "block_size": qc.block_size}
        if qc.accuracy_level:
            attrs["accuracy_level"] = qc.accuracy_level
        quantized = helper.make_node(
            "MatMulNBits", inputs, list(node.output), name=f"{node.name}_Q4", domain=CONTRIB_DOMAIN, **attrs
        )
        node.CopyFrom(quantized)
    still_read = {name for n in graph.node for name in n.input}
    kept = [t for t in graph.initializer if t.name not in replaced or t.name in still_read]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model


def int4_record(model: onnx.ModelProto) -> Int4Record | None:
    """What `quantize_int4` recorded in the model's metadata, or None."""
    value = next((p.value for p in model.metadata_props if p.key == METADATA_KEY), None)
    return None if value is None else Int4Record(**json.loads(value))


def int4_notes(path: Path) -> list[str]:
    """The run's notes on a 4-bit model: how many MatMuls went to 4 bits, and what stayed float."""
    import onnx

    record = int4_record(onnx.load(str(path), load_external_data=False))
    if record is None:
        return []
    zero = "symmetric, no zero points" if record.symmetric else "asymmetric, a zero point per block"
    lines = [
        f"4-bit weight-only ({record.algorithm}, blocks of {record.block_size}, {zero}"
        + (f", accuracy_level {record.accuracy_level}" if record.accuracy_level else "")
        + f"): {record.quantized} of {record.matmuls} MatMul weight(s) went to 4 bits (MatMulNBits)"
        + (
            f", {record.gemms_rewritten} of them Gemm (Linear) layers rewritten as MatMul first"
            if record.gemms_rewritten
            else ""
        )
        + "; everything else, and all activations, stays fp32"
    ]
    if record.algorithm == "hqq":
        lines.append(
            "hqq writes float zero points (and no accuracy_level): onnxruntime's CPU MatMulNBits kernel has no "
            "fast path for them and runs far slower than with rtn/gptq's 4-bit zero points; the CUDA kernel "
            "takes them natively"
        )
    if record.embeddings:
        lines.append(
            f"{record.embeddings_quantized} of {record.embeddings} embedding table(s) went to 4 bits "
            "(GatherBlockQuantized)"
            + (f"; kept fp32: {record.embeddings_note}" if record.embeddings_note else "")
        )
    return lines
