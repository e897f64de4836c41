"""Settings for every stage, as frozen dataclasses. Defaults live here and only here."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from qconvert import choices
from qconvert.errors import ConfigError

DEFAULT_OPSET = 18
DEFAULT_BITS = 8
DEFAULT_TARGET = "cpu"
DEFAULT_OUT_ROOT = Path("qconvert-out")
DEFAULT_LATENCY_REPEATS = 50
DEFAULT_LATENCY_BATCH = 1
DEFAULT_SENSITIVITY_SAMPLES = 64  # held-out samples the per-layer sensitivity runs on
DEFAULT_SENSITIVITY_ISOLATED = 8  # nodes given an isolated measurement (one quantization each)
# When no held-out data is given, this share of the calibration samples is set aside (never used
# for calibration) and the model is validated on it; more where the tolerance needs more to pass at
# all, as long as MIN_CALIBRATION_SAMPLES are left to calibrate on (stages/data.py).
HOLDOUT_FRACTION = 0.2
MIN_CALIBRATION_SAMPLES = 64
# --confidence: the level of the intervals a verdict reads (validation/intervals.py)
DEFAULT_CONFIDENCE = 0.95
CONFIDENCE_RANGE = (0.5, 0.999)

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
    "rel_error": "max",  # mean |a-b| / mean |a|
    "top5_agreement": "min",  # reference top-1 among the candidate's top 5 (more than 5 classes)
    "kl_div": "max",  # KL(softmax(reference) || softmax(candidate)), class-score outputs
    # token outputs of text models ([N, S, ...], with the attention mask of the inputs):
    "embedding_cosine": "min",  # encoders: cosine of the mask-weighted mean-pooled embeddings
    "next_token_agreement": "min",  # decoders: same argmax at each sequence's last real token
    # measured by `qconvert validate` only:
    "task_drop": "max",  # --metric: the reference's score minus the candidate's
    "speedup": "min",  # reference p50 latency / candidate p50 (--require-speedup is speedup>=1)
    # --probe collapse: share of held-out pairs the reference tells apart and the candidate does not
    "collapse_rate": "max",
}

# metrics that belong to the whole model rather than to one output
MODEL_METRICS = ("task_drop", "speedup", "collapse_rate")

# `qconvert validate --probe NAME`: extra measurements beyond comparing outputs sample by sample
PROBES = ("collapse",)

# Defaults per bit width. A default for a metric that does not apply to an output (top-1 on a
# non-classifier, accuracy without labels) is skipped; an explicit one is an error.
DEFAULT_TOLERANCES: dict[int, dict[str, float]] = {
    16: {"cosine": 0.9999, "top1_agreement": 0.995, "accuracy_drop": 0.005, "nonfinite": 0},
    8: {"cosine": 0.99, "top1_agreement": 0.97, "accuracy_drop": 0.01, "nonfinite": 0},
    4: {"cosine": 0.95, "top1_agreement": 0.90, "accuracy_drop": 0.03, "nonfinite": 0},
}
# Text models, on top of the above (same rule: skipped where the output is not a token output).
TEXT_TOLERANCES: dict[int, dict[str, float]] = {
    16: {"embedding_cosine": 0.999, "next_token_agreement": 0.98},
    8: {"embedding_cosine": 0.98, "next_token_agreement": 0.90},
    4: {"embedding_cosine": 0.95, "next_token_agreement": 0.80},
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

    def slack(self, measured: float) -> float:
        """How far `measured` lies inside the bound, relative to the bound (negative: outside)."""
        gap = measured - self.value if self.kind == "min" else self.value - measured
        return gap / max(abs(self.value), 1e-6)

    def describe(self) -> str:
        op = ">=" if self.kind == "min" else "<="
        where = f"{self.output}:" if self.output else ""
        short = f"{self.value:g}"  # exact where it can be: 0.9999999 must not read as 1
        return f"{where}{self.metric}{op}{short if float(short) == self.value else repr(self.value)}"


@dataclass(frozen=True)
class Tolerance:
    bounds: tuple[Bound, ...]

    @classmethod
    def for_bits(cls, bits: int, spec: str | None = None, text: bool = False) -> Tolerance:
        """The bit width's defaults (with `text`, also TEXT_TOLERANCES'), with `spec` (`--tolerance`)
        overriding metric by metric."""
        given = parse_tolerance(spec) if spec else ()
        overridden = {b.metric for b in given if b.output is None}
        table = {**DEFAULT_TOLERANCES[bits], **(TEXT_TOLERANCES[bits] if text else {})}
        defaults = tuple(Bound(m, v) for m, v in table.items() if m not in overridden)
        return cls(bounds=defaults + given)

    @classmethod
    def layered(cls, bits: int, *layers: tuple[Bound, ...], text: bool = False) -> Tolerance:
        """The bit width's defaults (with `text`, also TEXT_TOLERANCES'), then each layer in turn (e.g.
        a tolerance file, then `--tolerance`). A later layer's bound replaces earlier bounds on the same
        output and metric; an unscoped one (no OUTPUT:) replaces every earlier bound on that metric."""
        table = {**DEFAULT_TOLERANCES[bits], **(TEXT_TOLERANCES[bits] if text else {})}
        bounds: list[Bound] = [Bound(m, v) for m, v in table.items()]
        for layer in layers:
            unscoped = {b.metric for b in layer if b.output is None}
            scoped = {(b.output, b.metric) for b in layer if b.output is not None}
            bounds = [
                b for b in bounds if b.metric not in unscoped and (b.output, b.metric) not in scoped
            ] + list(layer)
        return cls(bounds=tuple(bounds))


TOLERANCE_FILE = "qconvert.toml"  # [tolerance]
PYPROJECT = "pyproject.toml"  # [tool.qconvert.tolerance]


def tolerance_from_files(directory: str | Path) -> tuple[tuple[Bound, ...], str | None]:
    """Bounds from `qconvert.toml` (`[tolerance]`) or, failing that, `pyproject.toml`
    (`[tool.qconvert.tolerance]`) in `directory`, and the file they came from (None: no table).

    Keys are `[OUTPUT:]METRIC`, values numbers; the direction is the metric's own, e.g.
    `cosine = 0.99` means cosine>=0.99 and `"logits:max_abs" = 0.5` means logits:max_abs<=0.5."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    for name, table_path in (
        (TOLERANCE_FILE, ("tolerance",)),
        (PYPROJECT, ("tool", "qconvert", "tolerance")),
    ):
        path = Path(directory) / name
        if not path.is_file():
            continue
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid TOML ({e}). Fix the file or remove it.") from None
        table: object = doc
        for i, key in enumerate(table_path):
            if not isinstance(table, dict) or key not in table:
                table = None
                break
            table = table[key]
            if not isinstance(table, dict) and i < len(table_path) - 1:
                raise ConfigError(f"{path}: key {'.'.join(table_path[: i + 1])!r} must be a table.")
        if table is None:
            if name == TOLERANCE_FILE:
                raise ConfigError(
                    f"{path}: has no [tolerance] table. Add one, e.g. [tolerance] cosine = 0.99, or remove "
                    "the file."
                )
            continue
        where = ".".join(table_path)
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {where!r} must be a table of METRIC = VALUE, e.g. cosine = 0.99.")
        return tuple(_file_bound(path, where, k, v) for k, v in table.items()), str(path)
    return (), None


def _file_bound(path: Path, where: str, key: str, value: object) -> Bound:
    output, _, metric = key.rpartition(":")
    if metric not in METRIC_BOUNDS:
        raise ConfigError(
            f"{path}: [{where}] key {key!r}: unknown metric {metric!r}. Keys are [OUTPUT:]METRIC; valid "
            f"metrics: {', '.join(METRIC_BOUNDS)}"
        )
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(
            f"{path}: [{where}] key {key!r}: the value must be a number, e.g. {metric} = 0.5 (got {value!r})."
        )
    if output and metric in MODEL_METRICS:
        raise ConfigError(
            f"{path}: [{where}] key {key!r}: {metric} is for the whole model; drop {output!r}:."
        )
    return Bound(metric, float(value), output=output or None, explicit=True)


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
        if m["out"] and metric in MODEL_METRICS:
            raise ConfigError(f"--tolerance: {metric} is for the whole model; give it without an output")
        bounds.append(Bound(metric, value, output=m["out"], explicit=True))
    return tuple(bounds)


def confidence_text(level: float) -> str:
    """0.95 -> '95%', 0.975 -> '97.5%'."""
    return f"{100 * level:g}%"


def check_confidence(level: float) -> None:
    """--confidence must be a probability in CONFIDENCE_RANGE (0.95 is the usual choice)."""
    low, high = CONFIDENCE_RANGE
    if not low <= level <= high:
        raise ConfigError(
            f"--confidence {level:g}: give the confidence level of the verdict's intervals as a fraction "
            f"from {low:g} to {high:g}, e.g. --confidence 0.95 (the default) or 0.99 for a stricter gate."
        )


@dataclass(frozen=True)
class DataOptions:
    """How DATA that is not already arrays becomes feed dicts (image folders, text files).

    Shared by `--calibration` and `--data`; each reader checks the fields it needs and ignores the
    rest. Arrays (.npz/.npy) ignore all of them."""

    # image folders: resize to HxW, scale to [0, 1], then (x - mean) / std per channel, in layout
    image_size: tuple[int, int] | None = None  # None: the model input's own H and W
    mean: tuple[float, ...] | None = None  # per channel; None: no mean subtracted
    std: tuple[float, ...] | None = None  # per channel; None: no division
    layout: str = "nchw"  # nchw | nhwc
    # text files (one sample per line): the tokenizer and how sequences are shaped
    tokenizer: str | None = None  # file.py:fn / module:fn, or a Hugging Face folder; None: the source's
    max_length: int | None = None  # pad/truncate to this many tokens; None: the tokenizer's default
    padding: str = "max_length"  # max_length | longest
    truncation: bool = True


TEXT_PADDING = ("max_length", "longest")


IMAGE_LAYOUTS = ("nchw", "nhwc")
# `--calibration random`: seeded normal inputs of the model's shapes. Only when asked for by name;
# without --data, validation then runs on another seeded random set of RANDOM_HELDOUT_SAMPLES.
RANDOM_DATA = "random"
RANDOM_CALIBRATION_SAMPLES = 64  # when --samples is not given
RANDOM_HELDOUT_SAMPLES = 100
RANDOM_CALIBRATION_SEED = 0
RANDOM_HELDOUT_SEED = 1


@dataclass(frozen=True)
class RunConfig:
    """Everything `qconvert export` does, as one value. The CLI builds exactly this."""

    source: str | None = None  # None: the built-in default model
    bits: int = DEFAULT_BITS
    target: str = DEFAULT_TARGET
    mode: str | None = None  # None: the target's default for these bits
    calibration: str | None = None  # None: the built-in model's calibration set, if any
    # None: the model family's (qconvert.recover.defaults: mse for depthwise conv nets), else minmax
    calibration_method: str | None = None
    samples: int | None = None  # calibration samples to use; None: all
    data: str | None = None  # held-out validation data; None: built-in set, or a split of calibration
    data_options: DataOptions = DataOptions()  # image folders and text files, for both DATA flags
    inputs: tuple[InputSpec, ...] = ()
    # --task: what a Hugging Face folder is exported for (e.g. feature-extraction, text-generation);
    # None: detected from its config.json
    task: str | None = None
    opset: int = DEFAULT_OPSET
    out_dir: Path | None = None  # None: DEFAULT_OUT_ROOT / <model>-<target>-<format>
    tolerance: str | None = None
    confidence: float = DEFAULT_CONFIDENCE  # --confidence: the level of the verdict's intervals
    target_options: tuple[tuple[str, str], ...] = ()  # --target-option NAME=VALUE, checked by the target
    force: bool = False
    latency_repeats: int = DEFAULT_LATENCY_REPEATS
    latency_batch: int = DEFAULT_LATENCY_BATCH
    # --exclude / --include selectors: [name:|op:|module:]GLOB or re:REGEX
    exclude: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    # --auto: when validation fails, keep the most sensitive nodes in float until it passes
    auto: bool = False
    # --auto-budget: most nodes kept in float; None: 10 or 25% of the quantized nodes, the smaller
    auto_budget: int | None = None
    # --auto-seconds: time --auto may spend on recovery attempts before it keeps layers in float
    auto_seconds: float = 600.0
    # --block-size / --algorithm: 4-bit weight-only only (quantize.int4.WEIGHT_ALGORITHMS)
    block_size: int = DEFAULT_BLOCK_SIZE
    weight_algorithm: str = "rtn"
    # per-layer sensitivity: held-out samples it runs on, and how many nodes (worst cumulative SQNR
    # first) get an isolated measurement (one quantization each)
    sensitivity_samples: int = DEFAULT_SENSITIVITY_SAMPLES
    sensitivity_isolated: int = DEFAULT_SENSITIVITY_ISOLATED
    # --recover: accuracy-recovery steps (qconvert.recover.RECOVERY names), run in pipeline order
    # (Recovery.order): `pre` steps before quantization, `post` steps after it; None: the family's defaults
    # (qconvert.recover.defaults), () (`--recover none`): none
    recover: tuple[str, ...] | None = None
    # --placement: where static int8 puts its Q/DQ pairs (quantize.placement); None: the family's
    placement: str | None = None

    def to_argv(self, out_dir: Path) -> list[str]:
        """The `qconvert export` command line that makes this run (the manifest's `command`)."""
        config = self
        parts = ["qconvert", "export"]
        if config.source:
            parts.append(config.source)
        parts += ["--bits", str(config.bits), "--target", config.target]
        for flag, value in (
            ("--mode", config.mode),
            ("--calibration", config.calibration),
            ("--data", config.data),
            ("--samples", config.samples),
            ("--tolerance", config.tolerance),
            ("--confidence", None if config.confidence == DEFAULT_CONFIDENCE else f"{config.confidence:g}"),
        ):
            if value is not None:
                parts += [flag, str(value)]
        for flag, selectors in (("--exclude", config.exclude), ("--include", config.include)):
            for selector in selectors:
                parts += [flag, selector]
        if config.bits == 4:
            parts += ["--block-size", str(config.block_size), "--algorithm", config.weight_algorithm]
        images = config.data_options
        if images.image_size is not None:
            parts += ["--image-size", "x".join(map(str, images.image_size))]
        for flag, channel_values in (("--mean", images.mean), ("--std", images.std)):
            if channel_values is not None:
                parts += [flag, ",".join(map(str, channel_values))]
        if images.layout != "nchw":
            parts += ["--layout", images.layout]
        if config.task is not None:
            parts += ["--task", config.task]
        text = config.data_options
        if text.tokenizer is not None:
            parts += ["--tokenizer", text.tokenizer]
        if text.max_length is not None:
            parts += ["--max-length", str(text.max_length)]
        if text.padding != "max_length":
            parts += ["--padding", text.padding]
        if not text.truncation:
            parts.append("--no-truncation")
        if config.latency_batch != DEFAULT_LATENCY_BATCH:
            parts += ["--latency-batch", str(config.latency_batch)]
        if config.calibration_method is not None:
            parts += ["--calibration-method", config.calibration_method]
        if config.placement is not None:
            parts += ["--placement", config.placement]
        for name, value in config.target_options:
            parts += ["--target-option", f"{name}={value}"]
        if config.recover is not None:
            parts += ["--recover", ",".join(config.recover) or "none"]
        if config.auto:
            parts.append("--auto")
            if config.auto_budget is not None:
                parts += ["--auto-budget", str(config.auto_budget)]
            if config.auto_seconds != 600.0:
                parts += ["--auto-seconds", f"{config.auto_seconds:g}"]
        for spec in config.inputs:
            parts += ["--input", f"{spec.name}:{'x'.join(map(str, spec.shape))}:{spec.dtype}"]
        parts += ["--opset", str(config.opset), "-o", str(out_dir)]
        return parts

    def __post_init__(self) -> None:
        _plain_paths(self, ("out_dir",), ("source", "calibration", "data"))
        check_bits(self.bits)
        if self.mode is not None and self.mode not in choices.modes():
            raise ConfigError(f"--mode {self.mode!r} is not a mode. Valid: {', '.join(choices.modes())}")
        if (
            self.calibration_method is not None
            and self.calibration_method not in choices.calibration_methods()
        ):
            raise ConfigError(
                f"--calibration-method {self.calibration_method!r} is not supported. "
                f"Valid: {', '.join(choices.calibration_methods())}"
            )
        if self.samples is not None and self.samples < 1:
            raise ConfigError(f"--samples must be at least 1 (got {self.samples})")
        if self.placement is not None and self.placement not in choices.placements():
            raise ConfigError(
                f"--placement {self.placement!r} is not a placement. Valid: {', '.join(choices.placements())}"
            )
        if not 7 <= self.opset <= 23:
            raise ConfigError(f"--opset {self.opset} is outside the range qconvert supports (7..23)")
        if self.latency_repeats < 1:
            raise ConfigError("latency_repeats must be at least 1")
        if self.auto_budget is not None and self.auto_budget < 0:
            raise ConfigError(f"--auto-budget must be 0 or more nodes (got {self.auto_budget})")
        check_weight_only_4bit(self.bits, self.block_size, self.weight_algorithm)
        if self.sensitivity_samples < 1 or self.sensitivity_isolated < 0:
            raise ConfigError("sensitivity_samples must be at least 1 and sensitivity_isolated at least 0")
        check_confidence(self.confidence)
        given = Tolerance.for_bits(self.bits, self.tolerance)  # fail early on a malformed --tolerance
        validate_only = sorted({b.metric for b in given.bounds if b.explicit and b.metric in MODEL_METRICS})
        if validate_only:
            raise ConfigError(
                f"--tolerance: {', '.join(validate_only)} is measured by `qconvert validate` (task_drop: "
                "--metric, speedup: --require-speedup, collapse_rate: --probe collapse), not by export. "
                "Drop it here and gate the exported folder with `qconvert validate OUT_DIR`."
            )


EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class SweepConfig:
    """Everything `qconvert sweep` does, as one value: one export per (bits, mode) trial, each
    built as a RunConfig from these fields. The CLI builds exactly this."""

    source: str | None = None  # None: the built-in default model
    bits: tuple[int, ...] = field(default_factory=choices.bits)  # default: every bit width
    target: str = DEFAULT_TARGET
    modes: tuple[str, ...] | None = None  # None: the target's default mode per bit width
    calibration: str | None = None
    calibration_method: str = "minmax"
    samples: int | None = None
    data: str | None = None
    data_options: DataOptions = DataOptions()
    inputs: tuple[InputSpec, ...] = ()
    task: str | None = None  # Hugging Face folders, as RunConfig.task
    opset: int = DEFAULT_OPSET
    tolerance: str | None = None  # applied on top of each bit width's defaults
    confidence: float = DEFAULT_CONFIDENCE
    target_options: tuple[tuple[str, str], ...] = ()
    out_dir: Path | None = None  # None: DEFAULT_OUT_ROOT / <model>-<target>-sweep
    force: bool = False
    workers: int | None = None  # local executor; None: one per core, at most 4 and one per trial
    executor: str = "local"  # local | ray
    # --ray-address; None: ray.init()'s default (RAY_ADDRESS, a local `ray start`, else a new local Ray)
    ray_address: str | None = None
    latency_repeats: int = DEFAULT_LATENCY_REPEATS
    latency_batch: int = DEFAULT_LATENCY_BATCH

    def __post_init__(self) -> None:
        _plain_paths(self, ("out_dir",), ("source", "calibration", "data"))
        if not self.bits:
            raise ConfigError("--bits: give at least one bit width, e.g. --bits 16,8,4")
        for bits in self.bits:
            if bits not in choices.bits():
                raise ConfigError(
                    f"--bits {bits} is not a bit width qconvert knows. Valid: {', '.join(map(str, choices.bits()))} "
                    "(comma-separated, e.g. --bits 16,8,4)"
                )
        if len(set(self.bits)) < len(self.bits):
            raise ConfigError(f"--bits {','.join(map(str, self.bits))}: a bit width is listed twice")
        if self.modes is not None:
            if not self.modes:
                raise ConfigError("--modes: give at least one mode, e.g. --modes static,dynamic")
            for mode in self.modes:
                if mode not in choices.modes():
                    raise ConfigError(f"--modes: {mode!r} is not a mode. Valid: {', '.join(choices.modes())}")
        if self.executor not in EXECUTORS:
            raise ConfigError(
                f"--executor {self.executor!r} is not an executor. Valid: {', '.join(EXECUTORS)}"
            )
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers must be at least 1 (got {self.workers})")
        if self.ray_address is not None and self.executor != "ray":
            raise ConfigError("--ray-address needs --executor ray")
        if self.workers is not None and self.executor == "ray":
            raise ConfigError(
                "--workers is for the local executor: on Ray each trial reserves one CPU and Ray decides "
                "how many run at once. Drop --workers, or size the cluster with `ray start --num-cpus N`."
            )
        if self.latency_repeats < 1 or self.latency_batch < 1:
            raise ConfigError("latency_repeats and --latency-batch must be at least 1")
        check_confidence(self.confidence)
        for bits in self.bits:  # fail early on a malformed --tolerance
            Tolerance.for_bits(bits, self.tolerance)


def check_bits(bits: int) -> None:
    """--bits must be a bit width some target takes (qconvert.choices.bits)."""
    if bits not in choices.bits():
        raise ConfigError(f"--bits {bits} is not supported. Valid: {', '.join(map(str, choices.bits()))}")


def check_weight_only_4bit(bits: int, block_size: int, algorithm: str) -> None:
    """--block-size must be a power of two from MIN_BLOCK_SIZE and --algorithm one the quantizers take
    (qconvert.choices.weight_algorithms); both belong to --bits 4 (MatMulNBits), so a non-default value
    at other bit widths is refused."""
    if block_size < MIN_BLOCK_SIZE or block_size & (block_size - 1):
        raise ConfigError(
            f"--block-size {block_size}: must be a power of two, {MIN_BLOCK_SIZE} or more (onnxruntime's "
            f"MatMulNBits takes 16, 32, 64, 128, 256). Default: {DEFAULT_BLOCK_SIZE}."
        )
    if algorithm not in choices.weight_algorithms():
        raise ConfigError(
            f"--algorithm {algorithm!r} is not supported. Valid: {', '.join(choices.weight_algorithms())}"
        )
    if bits != 4 and (block_size != DEFAULT_BLOCK_SIZE or algorithm != "rtn"):
        raise ConfigError(
            f"--block-size and --algorithm apply to --bits 4 (4-bit weight-only, MatMulNBits); this run is "
            f"--bits {bits}. Drop them, or use --bits 4 --mode weight-only."
        )


def _plain_paths(config: object, as_path: tuple[str, ...] = (), as_text: tuple[str, ...] = ()) -> None:
    """Let the Python API take `str` or any `os.PathLike` for every path (issue 14): fields typed Path
    become Path, fields that hold a path inside text (SOURCE, DATA) become str. Frozen: set in place."""
    import os

    for name in as_path:
        value = getattr(config, name)
        if value is not None and not isinstance(value, Path):
            object.__setattr__(config, name, Path(os.fspath(value)))
    for name in as_text:
        value = getattr(config, name)
        if value is not None and not isinstance(value, str) and isinstance(value, os.PathLike):
            object.__setattr__(config, name, os.fspath(value))


@dataclass(frozen=True)
class ValidateConfig:
    """Everything `qconvert validate` does, as one value. The CLI builds exactly this."""

    candidate: str | Path  # an .onnx file, or an OUT_DIR written by `qconvert export`
    reference: str | None = None  # .onnx or a torch SOURCE; None: the OUT_DIR's reference.onnx
    data: str | None = None  # held-out data; None: the OUT_DIR's validation data, if it is a file
    data_options: DataOptions = DataOptions()  # image folders and text files given as --data
    tolerance: str | None = None  # overrides the tolerance file, which overrides the defaults
    confidence: float = DEFAULT_CONFIDENCE  # the level of the verdict's intervals
    json_out: Path | None = None
    junit_out: Path | None = None
    html_out: Path | None = None
    calibration_data: str | None = None  # to warn when --data is the calibration data
    metric: str | None = None  # file.py:fn or module:fn, fn(outputs, labels) -> float, higher = better
    require_speedup: bool = False  # the candidate must be faster than the reference ONNX
    bits: int | None = None  # picks the default tolerances; None: the manifest's, else DEFAULT_BITS
    force: bool = False  # replace existing --json / --junit files
    # where qconvert.toml / pyproject.toml are looked for; None: tolerance files are not read
    settings_dir: Path | None = Path()
    latency_repeats: int = DEFAULT_LATENCY_REPEATS
    latency_batch: int = DEFAULT_LATENCY_BATCH
    probes: tuple[str, ...] = ()  # --probe NAME (PROBES)
    probe_options: tuple[tuple[str, str], ...] = ()  # --probe-option KEY=VALUE, checked by the probe

    def __post_init__(self) -> None:
        _plain_paths(
            self,
            ("json_out", "junit_out", "html_out", "settings_dir"),
            ("reference", "data", "calibration_data", "metric"),
        )
        if not isinstance(self.candidate, (str, Path)):
            object.__setattr__(self, "candidate", Path(self.candidate))
        if self.bits is not None:
            check_bits(self.bits)
        if self.latency_repeats < 1 or self.latency_batch < 1:
            raise ConfigError("latency_repeats and latency_batch must be at least 1")
        unknown = [p for p in self.probes if p not in PROBES]
        if unknown:
            raise ConfigError(f"--probe {unknown[0]!r} is not a probe. Valid: {', '.join(PROBES)}")
        if self.probe_options and not self.probes:
            raise ConfigError("--probe-option applies to a probe: add --probe collapse.")
        check_confidence(self.confidence)
        if self.tolerance:
            parse_tolerance(self.tolerance)  # fail early on a malformed --tolerance


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


DEFAULT_BENCHMARK_REPEATS = 100
DEFAULT_BENCHMARK_BATCH = 1


@dataclass(frozen=True)
class BenchmarkConfig:
    """Everything `qconvert benchmark` does, as one value. The CLI builds exactly this.

    `model` and `vs` are .onnx files or folders written by `qconvert export`; a folder alone (no
    `vs`) compares its model.onnx against its reference.onnx, a folder given as `vs` stands for its
    model.onnx."""

    model: Path
    vs: Path | None = None
    data: str | None = None  # .npz/.npy (first --batch samples); None: seeded random inputs
    batch: int = DEFAULT_BENCHMARK_BATCH
    repeats: int = DEFAULT_BENCHMARK_REPEATS
    threads: int | None = None  # intra-op threads; None: onnxruntime's default
    memory: bool = True  # measure peak memory (one child process per model, plus a baseline)

    def __post_init__(self) -> None:
        _plain_paths(self, ("model", "vs"), ("data",))
        for flag, value in (
            ("--batch", self.batch),
            ("--repeats", self.repeats),
            ("--threads", self.threads),
        ):
            if value is not None and value < 1:
                raise ConfigError(f"{flag} must be at least 1 (got {value})")
