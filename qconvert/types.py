"""Small value types: one model input (`--input NAME:SHAPE[:DTYPE]`) and how the target decides to
quantize (QuantizeConfig, built by the target from the settings; not a user setting itself)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from qconvert.errors import ConfigError

# The valid bit widths, modes, calibration methods and weight algorithms come from the registries
# (qconvert.choices). 4-bit weight-only (MatMulNBits): the default block size along K (each block of
# that many input channels has its own scale and zero point)
DEFAULT_BLOCK_SIZE = 32
MIN_BLOCK_SIZE = 16  # onnxruntime's MatMulNBits takes powers of two from 16

_DTYPES = {
    "float32": "float32",
    "float": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "int64": "int64",
    "long": "int64",
    "int32": "int32",
    "int": "int32",
    "bool": "bool",
    "uint8": "uint8",
}


@dataclass(frozen=True)
class InputSpec:
    """One model input: `--input NAME:SHAPE[:DTYPE]`, e.g. `pixels:1x3x32x32:float32` (a NAME may carry a
    TensorFlow-style output index: `image:0:1x3x224x224`).

    The first axis is the batch axis and is exported as dynamic.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @classmethod
    def parse(cls, text: str) -> InputSpec:
        parts = text.split(":")
        if len(parts) >= 3 and parts[1].isdigit() and parts[2].lower() not in _DTYPES:
            # a TensorFlow-style name with an output index, `image:0:1x3x224x224`
            parts = [f"{parts[0]}:{parts[1]}", *parts[2:]]
        if len(parts) not in (2, 3) or not parts[0]:
            raise ConfigError(
                f"--input {text!r} is not NAME:SHAPE[:DTYPE]. Example: --input pixels:1x3x32x32:float32"
            )
        name, shape_text = parts[0], parts[1]
        dims = [d for d in re.split(r"[x,]", shape_text.strip("[]()")) if d]
        if not dims or not all(d.isdigit() and int(d) > 0 for d in dims):
            raise ConfigError(
                f"--input {text!r}: shape {shape_text!r} must be positive integers joined by 'x', "
                "e.g. 1x3x32x32"
            )
        dtype = _DTYPES.get(parts[2].lower()) if len(parts) == 3 else "float32"
        if dtype is None:
            raise ConfigError(
                f"--input {text!r}: unknown dtype {parts[2]!r}. Valid: {', '.join(sorted(_DTYPES))}"
            )
        from qconvert.trust import check_input_shape

        check_input_shape(text, tuple(int(d) for d in dims), dtype)  # before anything is allocated
        return cls(name=name, shape=tuple(int(d) for d in dims), dtype=dtype)


def _fp16_keep_fp32_ops() -> frozenset[str]:
    from qconvert.quantize.float16 import FP16_KEEP_FP32_OPS  # the fp16 converter's own table

    return FP16_KEEP_FP32_OPS


@dataclass(frozen=True)
class QuantizeConfig:
    """How to quantize, as the target decides it: format, types, symmetry, granularity."""

    bits: int
    mode: str  # a QUANTIZERS name: static | dynamic | weight-only | fp16 | bf16 | implicit | a plugin's
    format: str = "qdq"  # qdq | qoperator | fp16 | bf16 | matmulnbits
    activation_type: str = "uint8"  # int8 | uint8 | int16 | uint16
    weight_type: str = "int8"
    per_channel: bool = True
    activation_symmetric: bool = False
    weight_symmetric: bool = True
    reduce_range: bool = False
    quantize_bias: bool = True
    calibration_method: str = "minmax"
    forbidden_ops: frozenset[str] = frozenset()
    nodes_to_exclude: tuple[str, ...] = ()
    nodes_to_include: tuple[str, ...] = ()  # empty: every node the quantizer can take
    external_data: bool = False  # write weights beside the model (models over 2 GB)
    # fp16 only: op types left in fp32 (default: quantize.float16.FP16_KEEP_FP32_OPS), and whether
    # graph inputs and outputs stay fp32 (with Casts at the edges)
    keep_fp32_ops: frozenset[str] = field(default_factory=_fp16_keep_fp32_ops)
    keep_io_types: bool = True
    # implicit quantization: the graph stays fp32 and this table (a path relative to OUT_DIR)
    # carries the activation ranges
    calibration_table: str | None = None
    # static only: onnxruntime `extra_options` a target needs beyond the fields above (e.g. QNN's
    # MinimumRealRange, or UseQDQContribOps for 16-bit Q/DQ below opset 21); merged last, so they win
    extra_options: tuple[tuple[str, object], ...] = ()
    # 4-bit weight-only (MatMulNBits, format "matmulnbits"): weights in blocks of `block_size` input
    # channels, each with its own scale (and zero point unless weight_symmetric), rounded by
    # `weight_algorithm`; `accuracy_level` is MatMulNBits' own (0: unset, the kernel computes in the
    # input's type; 4: the CPU kernel quantizes activations to int8 per block and uses integer dot products)
    block_size: int = DEFAULT_BLOCK_SIZE
    weight_algorithm: str = "rtn"
    accuracy_level: int = 0
    # (node, format) for the layers of a static Q/DQ graph that --recover mixed_precision raised above
    # int8 (targets.base.LAYER_FORMATS). It describes the graph, for the target's rules and the
    # manifest; the quantizer does not read it.
    layer_formats: tuple[tuple[str, str], ...] = ()

    def selects(self, node: str) -> bool:
        """Whether --exclude/--include leave node `node` to the quantizer (its op type aside)."""
        return node not in self.nodes_to_exclude and (
            not self.nodes_to_include or node in self.nodes_to_include
        )
