"""What a target is: the graph rules it needs and the execution-provider settings it runs with.

A `Target` (what `TARGETS` holds) declares its capabilities as data: bit widths and modes, the
options it takes, the ops its provider runs in int8. `Target.bind(options)` checks the options once
and gives a `BoundTarget`, which is what the pipeline uses: quantization candidates, providers, the
last edits to model.onnx and the rule checks, whose findings are `Violation`s. A target module
implements the hooks (`quantize_config` or `quantize_candidates`, `providers`, ...); they receive
the options already checked and never re-resolve them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np

from qconvert.errors import ConfigError
from qconvert.types import QuantizeConfig

if TYPE_CHECKING:
    from pathlib import Path

    import onnx

    from qconvert.calibrate import ModelInput

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
# Per-layer formats in a static Q/DQ graph, lowest precision first: int8 (the run's own Q/DQ); a16w8
# (the layer's activation inputs through 16-bit Q/DQ, its weights int8); fp16 (the layer computes in
# float16 between Casts); fp32 (the layer reads float inputs and float weights).
LAYER_FORMATS = ("int8", "a16w8", "fp16", "fp32")
INTEGER_ONLY_OPS = frozenset(
    {
        "QLinearConv",
        "QLinearMatMul",
        "QLinearAdd",
        "QLinearMul",
        "QLinearGlobalAveragePool",
        "QLinearAveragePool",
        "QLinearConcat",
        "QLinearSigmoid",
        "QLinearLeakyRelu",
        "QLinearSoftmax",
        "QGemm",
        "ConvInteger",
        "MatMulInteger",
        "DynamicQuantizeLinear",
        "DynamicQuantizeMatMul",
    }
)
WEIGHT_CONSUMERS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}
# Where onnxruntime's quantizers use the weight type for a constant input (op -> input slots): the
# weights above, a constant MatMul operand on either side, and a normalization's scale. Any other
# constant they quantize (an Add's bias, a Mul's factor, a Gather's table) gets the activation type,
# since the int8 kernels take both operands of such ops in one type.
WEIGHT_SLOTS: dict[str, frozenset[int]] = {
    "Conv": frozenset({1}),
    "ConvTranspose": frozenset({1}),
    "Gemm": frozenset({1}),
    "MatMul": frozenset({0, 1}),
    "LayerNormalization": frozenset({1}),
    "InstanceNormalization": frozenset({1}),
    "BatchNormalization": frozenset({1}),
}
# Ops that int8-capable runtimes generally execute on quantized tensors, or pass through without
# leaving int8 (data movement). A target refines this with its own `int8_ops`.
COMMON_INT8_OPS = frozenset(
    {
        "Conv",
        "MatMul",
        "Gemm",
        "Add",
        "Mul",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "Concat",
        "Reshape",
        "Transpose",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Relu",
        "Clip",
        "Resize",
        "Split",
        "Slice",
        "Gather",
        "Pad",
        "Identity",
        "QuantizeLinear",
        "DequantizeLinear",
    }
)


# onnxruntime's CPU provider (x86 and ARM) fuses Q/DQ around these too
ORT_CPU_INT8_OPS = COMMON_INT8_OPS | {"Sigmoid", "LeakyRelu", "Softmax", "Where", "ArgMax", "ConvTranspose"}


@dataclass(frozen=True)
class Provider:
    """An onnxruntime execution provider with its options (values as onnxruntime takes them)."""

    name: str
    options: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        return {"name": self.name, "options": dict(self.options)}


@dataclass(frozen=True)
class TargetOption:
    """A setting a target accepts through `--target-option NAME=VALUE`."""

    name: str
    default: str
    help: str
    choices: tuple[str, ...] = ()  # empty: any text

    def check(self, target: str, value: str) -> str:
        if self.choices and value not in self.choices:
            raise ConfigError(
                f"--target-option {self.name}={value}: not valid for --target {target}. "
                f"Valid values: {', '.join(self.choices)}."
            )
        return value


Options = Mapping[str, str]  # option name -> value; every option of the target, checked by bind()


@dataclass(frozen=True)
class Violation:
    """A rule the quantized graph or its provider settings break: which rule, the node (or graph
    input) it is about when there is one, and the reason as the user reads it (it names the node)."""

    rule: str  # e.g. "forbidden-op", "quantized-type", "per-channel", "provider-missing"
    node: str | None
    reason: str

    def __str__(self) -> str:
        return self.reason


def missing_provider(label: str) -> Violation:
    """The target's own provider is not in the provider list at all."""
    return Violation("provider-missing", None, f"the {label} provider is missing from the provider list")


@dataclass(frozen=True)
class Target:
    """A hardware target. Subclasses declare their capabilities as data and implement the hooks.

    Use it through `bind(options)`. The hooks that depend on settings take `opts`, the options
    `resolve_options` checked (every option present); the BoundTarget passes them.
    """

    name: str
    description: str
    # bits -> modes it supports, the first being the default
    modes: dict[int, tuple[str, ...]]
    options: tuple[TargetOption, ...] = ()
    # ops this target's provider runs in int8 (empty: unknown, coverage is not checked)
    int8_ops: frozenset[str] = frozenset()
    # bits -> why this target does not take them (shown by `qconvert targets` and in the error)
    refused_bits: dict[int, str] = field(default_factory=dict)
    # The per-layer formats this target's provider runs inside a static int8 Q/DQ graph, lowest
    # precision first (LAYER_FORMATS names them); --recover mixed_precision chooses among them. Each
    # target module's docstring says why its list is what it is. Default: int8, or the layer left float.
    layer_formats: tuple[str, ...] = ("int8", "fp32")

    def bind(self, given: Options | None = None) -> BoundTarget:
        """This target with its options resolved and checked, once (see `resolve_options`)."""
        return BoundTarget(self, MappingProxyType(self.resolve_options(given)))

    def resolve_options(self, given: Options | None = None) -> dict[str, str]:
        """Defaults overridden by `given`; unknown names are refused with the list of valid ones. A
        target whose option values need more than a list of choices extends this."""
        known = {o.name: o for o in self.options}
        for key in given or {}:
            if key not in known:
                valid = ", ".join(known) or "none"
                raise ConfigError(
                    f"--target-option {key}: --target {self.name} has no such option. Valid options: {valid}."
                )
        return {
            name: opt.check(self.name, (given or {}).get(name, opt.default)) for name, opt in known.items()
        }

    def resolve_mode(self, bits: int, mode: str | None) -> str:
        """The mode to use for `bits`, or a ConfigError naming what this target supports."""
        supported = self.modes.get(bits)
        if not supported:
            valid = ", ".join(str(b) for b in sorted(self.modes, reverse=True))
            why = f" ({self.refused_bits[bits]})" if bits in self.refused_bits else ""
            raise ConfigError(
                f"--bits {bits} is not supported by --target {self.name}{why}. "
                f"Valid --bits for {self.name}: {valid}."
            )
        if mode is None:
            return supported[0]
        if mode not in supported:
            raise ConfigError(
                f"--mode {mode} is not supported by --target {self.name} at --bits {bits}"
                f"{self.why_not(bits, mode)}. Valid modes: {', '.join(supported)}."
            )
        return mode

    def why_not(self, bits: int, mode: str) -> str:
        """A short reason a mode is refused (override to explain)."""
        return ""

    # --- hooks, called by BoundTarget with the checked options ---

    def quantize_config(self, bits: int, mode: str, calibration_method: str, opts: Options) -> QuantizeConfig:
        """The one configuration for (bits, mode); a target implements this or `quantize_candidates`."""
        raise NotImplementedError

    def quantize_candidates(
        self, bits: int, mode: str, calibration_method: str, opts: Options
    ) -> list[QuantizeConfig]:
        """Configurations worth trying; with more than one, the pipeline keeps the fastest."""
        return [self.quantize_config(bits, mode, calibration_method, opts)]

    def providers(self, inputs: Sequence[ModelInput], opts: Options) -> list[Provider]:
        raise NotImplementedError

    def providers_for(
        self, inputs: Sequence[ModelInput], opts: Options, qc: QuantizeConfig
    ) -> list[Provider]:
        """The providers for a graph quantized with `qc` (a target whose provider options depend on
        the precision, e.g. TensorRT's bf16 flag, overrides this). Default: `providers`."""
        return self.providers(inputs, opts)

    def facts(self) -> dict[str, object]:
        """What this target detected or assumed about the machine, for the manifest."""
        return {}

    def graph_violations(self, model: onnx.ModelProto, qc: QuantizeConfig) -> list[Violation]:
        return graph_violations(model, qc)

    def provider_violations(self, model: onnx.ModelProto, providers: Sequence[Provider]) -> list[Violation]:
        return []

    def not_here(self, providers: Sequence[Provider]) -> str | None:
        """Why this machine cannot run the graph the way the target will (None: it can); validation
        then runs the graph's exact Q/DQ arithmetic instead. Default: the first provider is not
        installed in this onnxruntime."""
        import onnxruntime as ort

        first = providers[0].name if providers else "CPUExecutionProvider"
        return None if first in ort.get_available_providers() else f"{first} is not installed here"

    def finalize(self, model_path: Path, inputs: Sequence[ModelInput], opts: Options) -> str | None:
        """Last changes the target's runtime needs, made in place on the quantized model (e.g.
        fixing dynamic shapes); returns a note for the report, or None when nothing changed."""
        return None

    def float_nodes(self, model: onnx.ModelProto) -> list[str]:
        """Nodes fed by a dequantized activation whose op this target's provider does not run in
        int8: each costs a dequantize/quantize round trip and runs in float."""
        if not self.int8_ops:
            return []
        init = {t.name for t in model.graph.initializer}
        dequantized = {
            n.output[0]
            for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] not in init
        }
        return [
            f"{n.name or '?'} ({n.op_type})"
            for n in model.graph.node
            if n.op_type not in self.int8_ops and any(i in dequantized for i in n.input)
        ]


@dataclass(frozen=True)
class BoundTarget:
    """A target with its options resolved and checked once (`Target.bind`): what the pipeline asks."""

    target: Target
    options: Mapping[str, str]  # every option of the target, read-only

    @property
    def name(self) -> str:
        return self.target.name

    def resolve_mode(self, bits: int, mode: str | None) -> str:
        """The target's mode for `bits` (its modes do not depend on the options)."""
        return self.target.resolve_mode(bits, mode)

    def candidates(self, bits: int, mode: str, calibration_method: str) -> list[QuantizeConfig]:
        """The configurations worth trying for (bits, mode); the first is the portable default."""
        return self.target.quantize_candidates(bits, mode, calibration_method, self.options)

    def quantize_config(self, bits: int, mode: str, calibration_method: str) -> QuantizeConfig:
        return self.candidates(bits, mode, calibration_method)[0]

    def providers(self, inputs: Sequence[ModelInput], qc: QuantizeConfig | None = None) -> list[Provider]:
        """The providers, in priority order, for a graph quantized with `qc` (None: the target's
        defaults, which do not depend on the precision)."""
        if qc is None:
            return self.target.providers(inputs, self.options)
        return self.target.providers_for(inputs, self.options, qc)

    @property
    def layer_formats(self) -> tuple[str, ...]:
        """The per-layer formats its provider runs inside a static int8 graph (Target.layer_formats)."""
        return self.target.layer_formats

    def finalize(self, model_path: Path, inputs: Sequence[ModelInput]) -> str | None:
        """The target's last edits to the quantized model, in place; a note for the report, or None."""
        return self.target.finalize(model_path, inputs, self.options)

    def violations(
        self, model: onnx.ModelProto, qc: QuantizeConfig, providers: Sequence[Provider]
    ) -> tuple[Violation, ...]:
        """Every rule the graph (quantized with `qc`) and the provider settings break."""
        return (*self.target.graph_violations(model, qc), *self.target.provider_violations(model, providers))

    def float_nodes(self, model: onnx.ModelProto) -> list[str]:
        return self.target.float_nodes(model)

    def facts(self) -> dict[str, object]:
        return self.target.facts()


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def has_qdq(model: onnx.ModelProto) -> bool:
    return any(n.op_type in QDQ_OPS for n in model.graph.node)


def graph_violations(model: onnx.ModelProto, qc: QuantizeConfig) -> list[Violation]:
    """Check a quantized graph against the rules in `qc`: forbidden ops, the Q/DQ layout, and what
    weight-only and fp16/bf16 graphs keep float."""
    problems = [
        Violation(
            "forbidden-op",
            node.name or None,
            f"node {node.name or '?'} is {node.op_type}, which this target cannot run",
        )
        for node in model.graph.node
        if node.op_type in qc.forbidden_ops
    ]
    problems += _qdq_violations(model, qc)
    if qc.mode == "weight-only":
        init = _initializers(model)
        problems += [
            Violation(
                "weight-only",
                n.name or None,
                f"node {n.name or '?'} ({n.op_type}) quantizes an activation, but weight-only mode keeps "
                "activations float",
            )
            for n in model.graph.node
            if n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear")
            or (n.op_type == "DequantizeLinear" and n.input[0] not in init)
        ]
    if qc.mode in ("fp16", "bf16"):
        problems += _fp16_violations(model, qc)
    return problems


def _qdq_violations(model: onnx.ModelProto, qc: QuantizeConfig) -> list[Violation]:
    """Each Q/DQ node's zero point against `qc`: the type of weights, activations and other
    constants, symmetry, per-channel weights, and whether bias may be int32."""
    from onnx import helper, numpy_helper

    problems: list[Violation] = []
    init = _initializers(model)
    consumers: dict[str, list[tuple[str, int]]] = {}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node.op_type, i))
    act_type = helper.np_dtype_to_tensor_dtype(np.dtype(qc.activation_type))
    w_type = helper.np_dtype_to_tensor_dtype(np.dtype(qc.weight_type))
    # layers raised to a16w8 read 16-bit activations of the same signedness
    wide = {2: 4, 3: 5}.get(act_type) if any(f == "a16w8" for _, f in qc.layer_formats) else None
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS or len(node.input) < 3:
            continue
        zp = init.get(node.input[2])
        if zp is None:
            continue
        constant = node.op_type == "DequantizeLinear" and node.input[0] in init
        if constant and zp.data_type == 6:  # int32: a quantized bias
            if not qc.quantize_bias:
                reason = f"{node.name}: bias is quantized to int32, but this target wants float bias"
                problems.append(Violation("float-bias", node.name, reason))
            continue
        uses = consumers.get(node.output[0], [])
        is_weight = constant and any(i in WEIGHT_SLOTS.get(op, ()) for op, i in uses)
        kind = "weight" if is_weight else "constant operand" if constant else "activation"
        if zp.data_type != (w_type if is_weight else act_type) and not (
            wide is not None and not is_weight and zp.data_type == wide
        ):
            got = helper.tensor_dtype_to_np_dtype(zp.data_type)
            want = qc.weight_type if is_weight else qc.activation_type
            reason = f"{node.name}: {kind} quantized as {got}, but this target needs {want}"
            problems.append(Violation("quantized-type", node.name, reason))
        symmetric = qc.weight_symmetric if is_weight else qc.activation_symmetric
        # signed: symmetric means zero point 0
        if symmetric and zp.data_type in (3, 5) and numpy_helper.to_array(zp).any():
            reason = f"{node.name}: {kind} zero point is not 0, but this target needs symmetric {kind}s"
            problems.append(Violation("symmetric", node.name, reason))
        if is_weight and qc.per_channel:
            scale = init.get(node.input[1])
            feeds_weight = any(WEIGHT_CONSUMERS.get(op) == i for op, i in uses)
            weight_dims = init[node.input[0]].dims
            if feeds_weight and scale is not None and len(scale.dims) == 0 and len(weight_dims) > 1:
                reason = f"{node.name}: weight is quantized per tensor; this target wants per-channel"
                problems.append(Violation("per-channel", node.name, reason))
    return problems


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor whose type is known (after ONNX type inference, where it runs)."""
    from onnx import helper, shape_inference

    try:
        graph = shape_inference.infer_shapes(model).graph
    except Exception:  # e.g. over 2 GB: use the types the model carries
        graph = model.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for v in [*graph.input, *graph.output, *graph.value_info]:
        if v.type.HasField("tensor_type"):
            types[v.name] = v.type.tensor_type.elem_type
    for node in graph.node:
        if node.op_type == "Cast":
            to = next(a for a in node.attribute if a.name == "to")
            types[node.output[0]] = int(helper.get_attribute_value(to))
    return types


def _fp16_violations(model: onnx.ModelProto, qc: QuantizeConfig) -> list[Violation]:
    """An fp16 (bf16) graph has float16 (bfloat16) tensors, fp32 inputs/outputs when
    `keep_io_types`, and keeps the `keep_fp32_ops` in fp32."""
    from onnx import TensorProto

    fp16 = TensorProto.BFLOAT16 if qc.mode == "bf16" else TensorProto.FLOAT16
    name = "bfloat16" if qc.mode == "bf16" else "float16"
    types = _elem_types(model)
    problems = []
    if fp16 not in types.values():
        reason = f"the graph has no {name} tensors: it was not converted to {qc.mode}"
        problems.append(Violation("not-converted", None, reason))
    if qc.keep_io_types:
        for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
            problems += [
                Violation(
                    "fp32-io",
                    v.name,
                    f"graph {kind} {v.name} is {name}, but this target keeps fp32 inputs and outputs",
                )
                for v in values
                if v.type.tensor_type.elem_type == fp16
            ]
    for node in model.graph.node:
        if node.op_type in qc.keep_fp32_ops:
            half = [t for t in [*node.input, *node.output] if t and types.get(t) == fp16]
            if half:
                reason = (
                    f"node {node.name or '?'} ({node.op_type}) computes in {name} ({half[0]}), "
                    f"but this target keeps {node.op_type} in fp32"
                )
                problems.append(Violation("kept-fp32-op", node.name or None, reason))
    return problems
