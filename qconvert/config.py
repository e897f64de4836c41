"""Settings for every stage, as frozen dataclasses. Defaults live here and only here."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from qconvert.errors import ConfigError

DEFAULT_OPSET = 18
DEFAULT_BITS = 8
DEFAULT_TARGET = "cpu"
DEFAULT_OUT_ROOT = Path("qconvert-out")
DEFAULT_LATENCY_REPEATS = 50
DEFAULT_LATENCY_BATCH = 1
# When no held-out data is given, this share of the calibration samples is set aside (never used
# for calibration) and the model is validated on it.
HOLDOUT_FRACTION = 0.2

SUPPORTED_BITS = (16, 8, 4)
MODES = ("static", "dynamic", "weight-only", "fp16")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")

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
    """One model input: `--input NAME:SHAPE[:DTYPE]`, e.g. `pixels:1x3x32x32:float32`.

    The first axis is the batch axis and is exported as dynamic.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @classmethod
    def parse(cls, text: str) -> InputSpec:
        parts = text.split(":")
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
        return cls(name=name, shape=tuple(int(d) for d in dims), dtype=dtype)


# metric name -> "min" (the value must be at least the bound) or "max" (at most the bound)
METRIC_BOUNDS: dict[str, str] = {
    "cosine": "min",
    "sqnr_db": "min",
    "top1_agreement": "min",
    "max_abs": "max",
    "mean_abs": "max",
    "accuracy_drop": "max",
    # NaN/Inf in the candidate where the reference is finite (e.g. fp16 overflow); always checked
    "nonfinite": "max",
}

# Defaults per bit width. A default for a metric that does not apply to an output (top-1 on a
# non-classifier, accuracy without labels) is skipped; an explicit one is an error.
DEFAULT_TOLERANCES: dict[int, dict[str, float]] = {
    16: {"cosine": 0.9999, "top1_agreement": 0.995, "accuracy_drop": 0.005, "nonfinite": 0},
    8: {"cosine": 0.99, "top1_agreement": 0.97, "accuracy_drop": 0.01, "nonfinite": 0},
    4: {"cosine": 0.95, "top1_agreement": 0.90, "accuracy_drop": 0.03, "nonfinite": 0},
}


@dataclass(frozen=True)
class Bound:
    """One tolerance: `metric >= value` (min) or `metric <= value` (max), for one output or all."""

    metric: str
    value: float
    output: str | None = None  # None: every output the metric applies to
    explicit: bool = False  # given by the user (must apply) rather than a default (may be skipped)

    @property
    def kind(self) -> str:
        return METRIC_BOUNDS[self.metric]

    def holds(self, measured: float) -> bool:
        return measured >= self.value if self.kind == "min" else measured <= self.value

    def describe(self) -> str:
        op = ">=" if self.kind == "min" else "<="
        where = f"{self.output}:" if self.output else ""
        return f"{where}{self.metric}{op}{self.value:g}"


@dataclass(frozen=True)
class Tolerance:
    bounds: tuple[Bound, ...]

    @classmethod
    def for_bits(cls, bits: int, spec: str | None = None) -> Tolerance:
        """The bit width's defaults, with `spec` (`--tolerance`) overriding metric by metric."""
        given = parse_tolerance(spec) if spec else ()
        overridden = {b.metric for b in given if b.output is None}
        defaults = tuple(Bound(m, v) for m, v in DEFAULT_TOLERANCES[bits].items() if m not in overridden)
        return cls(bounds=defaults + given)


def parse_tolerance(spec: str) -> tuple[Bound, ...]:
    """Parse `--tolerance`: comma-separated `[OUTPUT:]METRIC>=VALUE` or `<=VALUE`.

    Example: `top1_agreement>=0.99,logits:max_abs<=0.5`.
    """
    bounds = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        m = re.fullmatch(
            r"(?:(?P<out>[^:<>=]+):)?(?P<metric>\w+)\s*(?P<op>>=|<=)\s*(?P<val>[-+0-9.eE]+)", item
        )
        if not m:
            raise ConfigError(
                f"--tolerance item {item!r} is not [OUTPUT:]METRIC>=VALUE or <=VALUE. "
                f"Example: --tolerance 'top1_agreement>=0.99,max_abs<=0.5'"
            )
        metric, op = m["metric"], m["op"]
        if metric not in METRIC_BOUNDS:
            raise ConfigError(
                f"--tolerance: unknown metric {metric!r}. Valid metrics: {', '.join(METRIC_BOUNDS)}"
            )
        want = ">=" if METRIC_BOUNDS[metric] == "min" else "<="
        if op != want:
            raise ConfigError(f"--tolerance: {metric} is bounded with {want} (got {item!r})")
        try:
            value = float(m["val"])
        except ValueError:
            raise ConfigError(f"--tolerance: {m['val']!r} in {item!r} is not a number") from None
        bounds.append(Bound(metric, value, output=m["out"], explicit=True))
    return tuple(bounds)


def parse_target_option(text: str) -> tuple[str, str]:
    """`--target-option NAME=VALUE`."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ConfigError(f"--target-option {text!r} is not NAME=VALUE. Example: --target-option device=GPU")
    return name.strip(), value.strip()


@dataclass(frozen=True)
class RunConfig:
    """Everything `qconvert export` does, as one value. The CLI builds exactly this."""

    source: str | None = None  # None: the built-in default model
    bits: int = DEFAULT_BITS
    target: str = DEFAULT_TARGET
    mode: str | None = None  # None: the target's default for these bits
    calibration: str | None = None  # None: the built-in model's calibration set, if any
    calibration_method: str = "minmax"
    samples: int | None = None  # calibration samples to use; None: all
    data: str | None = None  # held-out validation data; None: built-in set, or a split of calibration
    inputs: tuple[InputSpec, ...] = ()
    opset: int = DEFAULT_OPSET
    out_dir: Path | None = None  # None: DEFAULT_OUT_ROOT / <model>-<target>-<format>
    tolerance: str | None = None
    target_options: tuple[tuple[str, str], ...] = ()  # --target-option NAME=VALUE, checked by the target
    force: bool = False
    latency_repeats: int = DEFAULT_LATENCY_REPEATS
    latency_batch: int = DEFAULT_LATENCY_BATCH

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_BITS:
            raise ConfigError(
                f"--bits {self.bits} is not supported. Valid: {', '.join(map(str, SUPPORTED_BITS))}"
            )
        if self.mode is not None and self.mode not in MODES:
            raise ConfigError(f"--mode {self.mode!r} is not a mode. Valid: {', '.join(MODES)}")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise ConfigError(
                f"--calibration-method {self.calibration_method!r} is not supported. "
                f"Valid: {', '.join(CALIBRATION_METHODS)}"
            )
        if self.samples is not None and self.samples < 1:
            raise ConfigError(f"--samples must be at least 1 (got {self.samples})")
        if not 7 <= self.opset <= 23:
            raise ConfigError(f"--opset {self.opset} is outside the range qconvert supports (7..23)")
        if self.latency_repeats < 1:
            raise ConfigError("latency_repeats must be at least 1")
        Tolerance.for_bits(self.bits, self.tolerance)  # fail early on a malformed --tolerance


# fp16: op types kept in fp32 unless a target says otherwise. It is onnxruntime's
# float16.DEFAULT_OP_BLOCK_LIST (ops with no fp16 kernels: classical-ML ops, TopK, NonMaxSuppression,
# RoiAlign, Range, CumSum, Min/Max, Upsample, random ops; a test keeps this a superset of it), plus:
# - ops whose ONNX schema has no float16 at common opsets: Celu, IsInf;
# - ops whose result is in range but whose inner sum or exponential leaves fp16's range (max 65504)
#   on ordinary inputs: ReduceL2, ReduceLogSum, ReduceLogSumExp, LpNormalization, Softplus.
# An op whose *output* leaves the range (a large MatMul, say) cannot be fixed by blocking that op
# alone, since its output is cast back to fp16; the always-on `nonfinite` check catches those.
FP16_KEEP_FP32_OPS = frozenset(
    {
        "ArrayFeatureExtractor",
        "Binarizer",
        "CastMap",
        "CategoryMapper",
        "DictVectorizer",
        "FeatureVectorizer",
        "Imputer",
        "LabelEncoder",
        "LinearClassifier",
        "LinearRegressor",
        "Normalizer",
        "OneHotEncoder",
        "RandomUniformLike",
        "SVMClassifier",
        "SVMRegressor",
        "Scaler",
        "TreeEnsembleClassifier",
        "TreeEnsembleRegressor",
        "TreeEnsemble",
        "ZipMap",
        "NonMaxSuppression",
        "TopK",
        "RoiAlign",
        "Range",
        "CumSum",
        "Min",
        "Max",
        "Upsample",
        "Celu",
        "IsInf",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "LpNormalization",
        "Softplus",
    }
)


@dataclass(frozen=True)
class QuantizeConfig:
    """How to quantize, as the target decides it: format, types, symmetry, granularity."""

    bits: int
    mode: str  # static | dynamic | weight-only | fp16
    format: str = "qdq"  # qdq | qoperator | fp16
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
    external_data: bool = False  # write weights beside the model (models over 2 GB)
    # fp16 only: op types left in fp32 (see FP16_KEEP_FP32_OPS), and whether graph inputs and
    # outputs stay fp32 (with Casts at the edges)
    keep_fp32_ops: frozenset[str] = FP16_KEEP_FP32_OPS
    keep_io_types: bool = True
    # implicit quantization: the graph stays fp32 and this table (a path relative to OUT_DIR)
    # carries the activation ranges
    calibration_table: str | None = None
    # static only: onnxruntime `extra_options` a target needs beyond the fields above (e.g. QNN's
    # MinimumRealRange, or UseQDQContribOps for 16-bit Q/DQ below opset 21); merged last, so they win
    extra_options: tuple[tuple[str, object], ...] = ()
