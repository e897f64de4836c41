"""Tolerances: the bounds a verdict reads, their defaults per bit width, `--tolerance` parsing and the
tolerance files (qconvert.toml `[tolerance]`, pyproject.toml `[tool.qconvert.tolerance]`)."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from qconvert.errors import ConfigError

# --confidence: the level of the intervals a verdict reads (validation/intervals.py)
DEFAULT_CONFIDENCE = 0.95
CONFIDENCE_RANGE = (0.5, 0.999)

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
