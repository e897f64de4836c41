"""Typed, versioned results: `Report` (report.json), `Manifest` (qconvert.json), `ValidationReport`
(`qconvert validate --json`) and `SweepReport` (sweep.json); `RunResult`, `ValidationRun` and
`SweepResult`, what `qconvert.export`, `qconvert.validate` and `qconvert.sweep` return (with `SweepRow`
and `Recommendation`).

The four records are frozen, typed all the way down: every entry of a fixed shape is an `_Entry`
(a frozen dataclass) whose `to_json()` writes exactly the JSON the files have always had, key for key
and in the same order, and whose `from_json()` reads it back, refusing a missing entry with a
SourceError that names the file and the key. The records add `schema_version`; files from before
versioning read as version 0, and a newer schema than this qconvert knows is refused. The renderers
(report.py, report_html.py, junit.py, sweep_report.py, the CLI's tables) read these attributes, never
the JSON. Entries whose keys are data stay JSON objects by design: per-output metrics (`outputs`,
`export_fidelity`: output -> metric -> value, the metrics depending on the model), histograms,
scatter samples, operator counts, the recovery details, a target's options and facts. So do the
manifest's `settings` (the flat settings as written, in the writer's key order), which
`Manifest.run_config()` reads back into the settings that made the run.

Versions: 1 added `schema_version`. 2: the verdict reads confidence intervals
(validation/intervals.py). `verdict` (passed | failed | inconclusive) stands beside `passed`, which is
now true only for PASSED: a file that said `passed: true` under version 1 may say `false`,
`inconclusive` for the same figures. Each check gains `verdict`, `interval` and `samples_to_settle`,
the validation `confidence`, `intervals` and `samples_to_settle`, the accuracy `intervals`. A version
0 or 1 file reads with `verdict` taken from `passed`.

No key changed since, but one value: qconvert.json's `settings.mode` was the mode the run resolved
and is now `--mode` as given (None where the target's or the model family's default chose it, which
`quantization.mode` records), so that the settings re-run the export as its `command` does. Older
files read back with the resolved mode as if it had been given.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from qconvert.errors import InternalError, SourceError

if TYPE_CHECKING:
    from qconvert.settings import ExportSettings
    from qconvert.validation import ValidationResult

SCHEMA_VERSION = 2  # bump on any change a reader must know about; additions keep the version

E = TypeVar("E", bound="_Entry")
R = TypeVar("R", bound="_Record")
Reader = Callable[[Any, str], Any]  # (a JSON value, where it is) -> the typed value


def _dump(value: Any, top: bool = True) -> Any:
    """A typed value as JSON: entries by their to_json, and maps and lists entry by entry. A field's
    tuple becomes a list; a tuple inside an open JSON object (a manifest's settings) is left as the
    writer gave it, as it always was."""
    if isinstance(value, _Entry):
        return value.to_json()
    if isinstance(value, dict):
        return {k: _dump(v, False) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        items = [_dump(v, False) for v in value]
        return items if top or isinstance(value, list) else tuple(items)
    return value


def _object(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise SourceError(f"{what}: expected a JSON object, got {type(data).__name__}.")
    return data


def _within(what: str, key: str) -> str:
    """Where an entry is: `report.json: size`, `report.json: size.ratio`, `a sweep row: collapse`."""
    return f"{what}.{key}" if ": " in what else f"{what}: {key}"


def _require(data: dict[str, Any], keys: Sequence[str], what: str) -> None:
    """A missing or renamed key is an error that names the file and the key, never a row left out."""
    for key in keys:
        if key not in data:
            raise SourceError(
                f"{what}: no {key!r} entry (a renamed or missing key). Give a file written by qconvert."
            )


def _list(data: Any, what: str) -> list[Any]:
    if not isinstance(data, list):
        raise SourceError(f"{what}: expected a JSON list, got {type(data).__name__}.")
    return data


def many(cls: type[E]) -> Reader:
    """Reads a JSON list of `cls` entries as a tuple."""
    return lambda data, what: tuple(cls.from_json(x, f"{what}[{i}]") for i, x in enumerate(_list(data, what)))


def _reader(read: type[_Entry] | Reader) -> Reader:
    return read.from_json if isinstance(read, type) and issubclass(read, _Entry) else read


def by_name(read: type[_Entry] | Reader) -> Reader:
    """Reads a JSON object keyed by data (an output name, a family) whose values `read` reads."""
    one = _reader(read)
    return lambda data, what: {k: one(v, _within(what, k)) for k, v in _object(data, what).items()}


Readers = dict[str, "type[_Entry] | Reader"]  # field -> how its JSON is read


class _Entry:
    """A fixed-shape entry of a record: a frozen dataclass written as a JSON object with its fields in
    declaration order (the order the files have always had; most are `kw_only` so that order is free).
    `OMIT`: fields left out when None (keys some writers never set); `READ`: how a field's JSON is read
    (an `_Entry` class, or a reader from `many` / `by_name`); others are taken as they are, a list as a
    tuple."""

    OMIT: ClassVar[frozenset[str]] = frozenset()
    READ: ClassVar[Readers] = {}

    def _left_out(self, name: str, value: Any) -> bool:
        return name in self.OMIT and value is None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if not self._left_out(f.name, value):
                out[f.name] = _dump(value)
        return out

    @classmethod
    def _value(cls, name: str, value: Any, what: str) -> Any:
        read = cls.READ.get(name)
        if value is None:
            return None
        if read is None:
            return tuple(value) if isinstance(value, list) else value
        return _reader(read)(value, what)

    @classmethod
    def from_json(cls: type[E], data: Any, what: str) -> E:
        """The entry from its JSON object (`what`: where it is, e.g. `report.json: size`, for the
        errors). Keys it does not name (from a newer qconvert) are left; a missing one is an error."""
        data = _object(data, what)
        every = fields(cls)  # type: ignore[arg-type]
        _require(data, [f.name for f in every if f.default is MISSING and f.default_factory is MISSING], what)
        return cls(
            **{
                f.name: cls._value(f.name, data[f.name], _within(what, f.name))
                for f in every
                if f.name in data
            }
        )


def written(cls: type[E], data: dict[str, Any], what: str) -> E:
    """For writers: the entry `data` (the JSON a live result writes, e.g. ValidationResult.as_json)
    is, refusing any key the entry would not write back. A key a writer adds must be added to its
    entry here, or report.json would silently lose it."""
    entry = cls.from_json(data, what)
    if json.dumps(entry.to_json(), sort_keys=True, default=str) != json.dumps(
        data, sort_keys=True, default=str
    ):
        raise InternalError(
            f"{what}: results.{cls.__name__} does not write back what was measured (a key added to its "
            f"writer and not to the entry?): {sorted(_keys(data) ^ _keys(entry.to_json()))}"
        )
    return entry


def _keys(value: Any, prefix: str = "") -> set[str]:
    if isinstance(value, dict):
        return {f"{prefix}{k}" for k in value} | {
            p for k, v in value.items() for p in _keys(v, f"{prefix}{k}.")
        }
    if isinstance(value, list):
        return {p for v in value for p in _keys(v, f"{prefix}[].")}
    return set()


def _verdict_of(data: dict[str, Any]) -> dict[str, Any]:
    """Before version 2 a check or a validation had `passed` and no `verdict` (two outcomes only)."""
    if not isinstance(data, dict) or "verdict" in data or "passed" not in data:
        return data
    return {**data, "verdict": "passed" if data["passed"] else "failed"}


class _Record(_Entry):
    """A whole file: `schema_version` first; `OPTIONAL` entries are left out when empty."""

    OPTIONAL: ClassVar[frozenset[str]] = frozenset()
    FILE: ClassVar[str] = ""
    schema_version: int  # a field of every record

    def _left_out(self, name: str, value: Any) -> bool:
        return name == "schema_version" or (name in self.OPTIONAL and not value)

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": self.schema_version, **super().to_json()}

    @classmethod
    def from_json(cls: type[R], data: Any, what: str = "") -> R:
        data = _object(data, what or cls.FILE)
        version = data.get("schema_version", 0)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise SourceError(
                f"{cls.FILE}: schema_version {version!r} is newer than this qconvert reads ({SCHEMA_VERSION}). "
                "Upgrade qconvert, or re-export with this one."
            )
        data = {**cls._upgrade(data, version), "schema_version": version}
        return super().from_json(data, what or cls.FILE)

    @classmethod
    def _upgrade(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        """An older file's entries in this version's shape: before version 2 a record with `passed`
        had no `verdict` (two outcomes only), so it is read from `passed`."""
        return _verdict_of(data) if version < 2 else data

    @classmethod
    def load(cls: type[R], out_dir: Path) -> R:
        path = Path(out_dir) / cls.FILE
        try:
            return cls.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            raise SourceError(
                f"{out_dir}: no {cls.FILE} here. Give a folder written by `qconvert export`."
            ) from None
        except ValueError as e:
            raise SourceError(f"{path}: not valid JSON ({e}).") from e


# --- the entries ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Interval(_Entry):
    """A confidence interval (validation.intervals.Interval.as_json): `method` says how it was made;
    share-beyond is an interval on the share of inputs beyond a limit."""

    low: float
    high: float
    method: str
    samples: int
    discordant: tuple[int, int] | None = None  # a paired interval's (first only, second only)

    OMIT = frozenset({"discordant"})


@dataclass(frozen=True, kw_only=True)
class CheckRecord(_Entry):
    """One tolerance check as the reports hold it (validation.Check.as_json)."""

    output: str  # the output, or `model` for whole-model checks (task_drop, speedup)
    metric: str
    bound: str  # the bound as text, e.g. `cosine>=0.99`
    measured: float
    passed: bool
    verdict: str  # passed | failed | inconclusive
    interval: Interval | None = None  # the interval the verdict reads; None: the measured value decides
    samples_to_settle: int | None = None  # held-out samples in all that would settle an inconclusive one
    needed: str | None = None  # the tolerance that would have let it pass
    hint: str | None = None

    READ: ClassVar[Readers] = {"interval": Interval}

    @classmethod
    def from_json(cls, data: Any, what: str = "a tolerance check") -> CheckRecord:
        return super().from_json(_verdict_of(data), what)


@dataclass(frozen=True, kw_only=True)
class LabelIntervals(_Entry):
    reference: Interval
    candidate: Interval
    drop: Interval  # paired: the same samples under both models

    READ: ClassVar[Readers] = {"reference": Interval, "candidate": Interval, "drop": Interval}


@dataclass(frozen=True, kw_only=True)
class LabelAccuracy(_Entry):
    """A validation's task accuracy on the held-out labels (validation `accuracy`): the reference's,
    the candidate's, the drop, and their intervals (by the same names)."""

    output: str | None = None
    reference: float
    candidate: float
    drop: float
    intervals: LabelIntervals | None = None  # since version 2

    OMIT = frozenset({"output", "intervals"})
    READ: ClassVar[Readers] = {"intervals": LabelIntervals}


@dataclass(frozen=True, kw_only=True)
class Figures(_Entry):
    """A validation (validation.ValidationResult.as_json): the verdict, the checks, and the figures
    behind them. `outputs` (output -> metric -> value), `abs_error_histograms` and `scatter` stay JSON
    objects: their metrics depend on the model (top-1 for a classifier, embedding cosine for an
    encoder, ...); `intervals` is output -> metric -> Interval."""

    passed: bool
    verdict: str
    confidence: float | None = None  # the intervals' level (since version 2)
    samples: int
    samples_to_settle: int | None = None
    data_limited: bool = False  # INCONCLUSIVE for want of samples alone
    outputs: dict[str, dict[str, Any]]
    intervals: dict[str, dict[str, Interval]] = field(default_factory=dict)
    accuracy: LabelAccuracy | None = None
    checks: tuple[CheckRecord, ...]
    notes: tuple[str, ...] = ()
    abs_error_histograms: dict[str, Any] = field(default_factory=dict)
    scatter: dict[str, Any] = field(default_factory=dict)

    READ: ClassVar[Readers] = {
        "intervals": by_name(by_name(Interval)),
        "accuracy": LabelAccuracy,
        "checks": many(CheckRecord),
    }

    @classmethod
    def from_json(cls, data: Any, what: str = "validation") -> Figures:
        return super().from_json(_verdict_of(data), what)


@dataclass(frozen=True)
class Timing(_Entry):
    """One model's latency, as benchmark.interleaved_latency measures it."""

    p50_ms: float
    p90_ms: float
    mean_ms: float
    runs: int


@dataclass(frozen=True, kw_only=True)
class AccuracyIntervals(_Entry):
    reference: Interval
    model: Interval
    drop: Interval

    READ: ClassVar[Readers] = {"reference": Interval, "model": Interval, "drop": Interval}


@dataclass(frozen=True, kw_only=True)
class Accuracy(_Entry):
    """report.json `accuracy`: task accuracy on the held-out labels of the original (PyTorch), the fp32
    export and model.onnx, the drop, and their intervals (none for the fp32 export: it is the export's
    fidelity)."""

    reference: float
    fp32_onnx: float | None
    model: float
    drop: float
    samples: int
    intervals: AccuracyIntervals | None = None  # since version 2

    OMIT = frozenset({"intervals"})
    READ: ClassVar[Readers] = {"intervals": AccuracyIntervals}


@dataclass(frozen=True, kw_only=True)
class Size(_Entry):
    """report.json `size`: both files' bytes and model.onnx's share of the fp32 file."""

    fp32_bytes: int
    model_bytes: int
    ratio: float


@dataclass(frozen=True, kw_only=True)
class Latency(_Entry):
    """report.json `latency`: fp32 and model.onnx timed interleaved on one provider."""

    provider: str
    batch: int
    fp32: Timing
    model: Timing
    ratio_p50: float  # model p50 / fp32 p50

    READ: ClassVar[Readers] = {"fp32": Timing, "model": Timing}


@dataclass(frozen=True, kw_only=True)
class DataFlags(_Entry):
    """report.json `data`: whether random inputs stood in for data (accuracy figures then mean nothing)."""

    calibration_random: bool
    validation_random: bool


@dataclass(frozen=True, kw_only=True)
class Fusions(_Entry):
    """report.json `fusions`: the transformer fusions prepare ran (fused op -> count)."""

    model_type: str
    fused: dict[str, int]


@dataclass(frozen=True, kw_only=True)
class Ops(_Entry):
    """report.json `ops`: op type -> count in the fp32 export and in model.onnx, and the nodes run in
    float between Q/DQ pairs."""

    fp32: dict[str, int]
    model: dict[str, int]
    float_between_qdq: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class LayerRecord(_Entry):
    """One quantized node's SQNR (validation.sensitivity.LayerSensitivity.as_json); a lossless one is
    "inf" (JSON has no Infinity)."""

    node: str
    module: str | None = None  # the PyTorch module path, where the export gave it
    depth: int | None = None
    op_type: str
    tensor: str
    cumulative_sqnr_db: float | str | None
    isolated_sqnr_db: float | str | None
    isolated_model_output_sqnr_db: float | str | None


@dataclass(frozen=True, kw_only=True)
class Sensitivity(_Entry):
    """report.json `sensitivity`: the per-layer ranking, worst first; or, where it cannot run, why."""

    available: bool
    reason: str | None = None  # why not available
    samples: int | None = None
    isolated_measured: int | None = None
    quantized_nodes: int | None = None
    ranking: tuple[LayerRecord, ...] | None = None
    unmapped: tuple[str, ...] | None = None
    method: str | None = None

    OMIT = frozenset(
        {"reason", "samples", "isolated_measured", "quantized_nodes", "ranking", "unmapped", "method"}
    )
    READ: ClassVar[Readers] = {"ranking": many(LayerRecord)}

    @classmethod
    def from_json(cls, data: Any, what: str = "sensitivity") -> Sensitivity:
        data = _object(data, what)
        _require(data, ["available"], what)
        _require(data, sorted(cls.OMIT - {"reason"}) if data["available"] else ["reason"], what)
        return super().from_json(data, what)

    @property
    def layers(self) -> tuple[LayerRecord, ...]:
        return self.ranking or ()


@dataclass(frozen=True, kw_only=True)
class FallbackStep(_Entry):
    """One graph --auto's fallback tried: the nodes it kept in float and its verdict."""

    kept_float: tuple[str, ...]
    passed: bool
    verdict: str
    failures: tuple[str, ...]
    outputs: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class FallbackSize(_Entry):
    all_int8_bytes: int
    model_bytes: int
    ratio: float


@dataclass(frozen=True, kw_only=True)
class FallbackLatency(_Entry):
    all_int8: Timing
    model: Timing
    ratio_p50: float

    READ: ClassVar[Readers] = {"all_int8": Timing, "model": Timing}


@dataclass(frozen=True, kw_only=True)
class Fallback(_Entry):
    """report.json `fallback` (--auto's float fallback), in one of three shapes: not available (with
    the reason), not needed, or the search (what it kept in float, each step, and where it passed its
    cost against the all-int8 graph)."""

    available: bool | None = None
    needed: bool | None = None
    passed: bool | None = None
    budget: int | None = None
    kept_float: tuple[str, ...] | None = None
    reason: str | None = None
    steps: tuple[FallbackStep, ...] | None = None
    size: FallbackSize | None = None
    latency: FallbackLatency | None = None

    OMIT = frozenset(
        {"available", "needed", "passed", "budget", "kept_float", "reason", "steps", "size", "latency"}
    )
    READ: ClassVar[Readers] = {"steps": many(FallbackStep), "size": FallbackSize, "latency": FallbackLatency}

    @classmethod
    def from_json(cls, data: Any, what: str = "fallback") -> Fallback:
        """One of the three shapes, whole: a key missing from it is an error, not a blank."""
        data = _object(data, what)
        if data.get("available") is False:
            _require(data, ["reason"], what)
        elif data.get("needed") is not False:
            _require(data, ["available", "needed", "passed", "budget", "kept_float", "reason", "steps"], what)
            if data["passed"]:
                _require(data, ["size", "latency"], what)
        return super().from_json(data, what)

    @property
    def failed_search(self) -> bool:
        """The search ran (it was available and needed) and did not pass."""
        return self.available is not False and self.needed is not False and not self.passed


@dataclass(frozen=True, kw_only=True)
class RecoveryStep(_Entry):
    """One --recover step as report.json's `recovery` lists it: skipped (with the reason), or what it
    did (`details`: the step's own figures, a JSON object whose keys are the step's)."""

    name: str
    phase: str  # pre | post
    applied: bool
    reason: str | None = None  # why it was skipped
    changed: bool | None = None
    notes: tuple[str, ...] | None = None
    details: dict[str, Any] | None = None
    seconds: float | None = None

    OMIT = frozenset({"reason", "changed", "notes", "details", "seconds"})

    @classmethod
    def from_json(cls, data: Any, what: str = "recovery") -> RecoveryStep:
        data = _object(data, what)
        _require(data, ["applied"], what)
        _require(data, ["changed", "notes", "details", "seconds"] if data["applied"] else ["reason"], what)
        return super().from_json(data, what)


@dataclass(frozen=True, kw_only=True)
class AutoAttempt(_Entry):
    """One --auto attempt (pipeline/auto.py): the recovery steps and range method tried, its verdict,
    score (the worst check's slack) and per-output figures, and whether it was kept."""

    recover: tuple[str, ...]
    calibration_method: str | None
    passed: bool
    worst: str | None
    score: float
    score_before: float | None = None  # the best score when it was tried (absent for the start)
    figures: dict[str, dict[str, Any]]
    seconds: float
    kept: bool

    OMIT = frozenset({"score_before"})


@dataclass(frozen=True, kw_only=True)
class Configuration(_Entry):
    """One configuration --recover mixed_precision tried (recover/mixed_precision.Point.as_json)."""

    layers: dict[str, int]  # format -> layers in it
    raised: dict[str, str]  # node -> the format it was raised to
    sqnr_db: float | str | None
    meets_goal: bool
    slack: float | str | None
    outputs: dict[str, dict[str, Any]]
    predicted_cost: float
    latency_ratio: float | None
    latency_vs_int8: float | None
    size_ratio: float | None
    seconds: float
    pareto: bool
    chosen: bool


@dataclass(frozen=True, kw_only=True)
class Tradeoff(_Entry):
    """report.json `tradeoff`: every configuration --recover mixed_precision tried, the Pareto-optimal
    ones and the chosen one (`shipped` False: an --auto attempt that was not kept)."""

    formats: tuple[str, ...]
    layers: int
    samples: int
    goal: tuple[str, ...]
    not_checked: tuple[str, ...]
    latency_factor: dict[str, float]
    latency_measured: bool
    notes: tuple[str, ...]
    stopped: str
    evaluations: int
    seconds: float
    chosen: int
    configurations: tuple[Configuration, ...]
    method: str
    shipped: bool | None = None

    OMIT = frozenset({"shipped"})
    READ: ClassVar[Readers] = {"configurations": many(Configuration)}


@dataclass(frozen=True, kw_only=True)
class TaskScore(_Entry):
    """validate's `task` (--metric): both scores, the drop, and its interval where a bound reads it."""

    metric: str
    reference: float
    candidate: float
    drop: float
    interval: Interval | None = None

    OMIT = frozenset({"interval"})
    READ: ClassVar[Readers] = {"interval": Interval}


@dataclass(frozen=True, kw_only=True)
class Speed(_Entry):
    """validate's `speed` (a speedup bound): both latencies, interleaved, and reference / candidate."""

    provider: str
    batch: int
    reference: Timing
    candidate: Timing
    speedup: float

    READ: ClassVar[Readers] = {"reference": Timing, "candidate": Timing}


@dataclass(frozen=True, kw_only=True)
class OutputCollapse(_Entry):
    rule: str  # top1 | distance
    threshold: float | None
    pairs: int
    collapsed: int
    rate: float


@dataclass(frozen=True, kw_only=True)
class CollapseFamily(_Entry):
    """A sequence family of the collapse probe: the share of pairs each model separates per length."""

    pattern: str
    lengths: tuple[int, ...]
    pairs: tuple[int, ...]
    reference_rate: tuple[float, ...]
    candidate_rate: tuple[float, ...]
    reference_longest: int | None
    candidate_longest: int | None
    kept_longest: int | None
    lost: tuple[int, ...]


@dataclass(frozen=True, kw_only=True)
class Collapse(_Entry):
    """`--probe collapse` (validation.collapse.CollapseResult.as_json)."""

    rate: float
    worst_output: str | None
    sampled: int
    samples: int
    effective_pairs: float
    pairs: int
    collapsed: int
    outputs: dict[str, OutputCollapse]
    distance_fraction: float
    families: dict[str, CollapseFamily]
    families_skipped: str | None
    separates: float
    keep_margin: float
    notes: tuple[str, ...]

    READ: ClassVar[Readers] = {"outputs": by_name(OutputCollapse), "families": by_name(CollapseFamily)}


# --- the records ---------------------------------------------------------------------------------


class _Validated:
    """A record with a `validation` entry (`Figures`)."""

    validation: Figures

    @property
    def figures(self) -> Figures:
        """`validation` (the name the renderers read it by)."""
        return self.validation


@dataclass(frozen=True)
class Report(_Validated, _Record):
    """report.json: what `qconvert export` measured."""

    passed: bool  # the verdict is PASSED
    verdict: str  # passed | failed | inconclusive (validation.intervals)
    target: str
    bits: int
    mode: str
    validated_on: str
    validation_exact_qdq: bool
    stand_in: str | None  # implicit | fp16 | bf16: the graph validated instead of model.onnx
    validation: Figures
    on_cpu_kernels: Figures | None  # the same graph on this CPU's own kernels, where that differs
    export_fidelity: dict[str, dict[str, Any]]  # output -> metric -> value: the fp32 export vs the original
    accuracy: Accuracy | None
    size: Size
    latency: Latency
    data: DataFlags
    fusions: Fusions | None
    ops: Ops
    notes: tuple[str, ...]
    recovery: tuple[RecoveryStep, ...] = ()  # --recover steps, in run order
    # the model family and what its defaults chose (recover.defaults); None in files written before
    defaults: dict[str, Any] | None = None
    auto: tuple[AutoAttempt, ...] = ()  # --auto's recovery attempts, in order (pipeline/auto.py)
    sensitivity: Sensitivity | None = None  # per-layer blame (failed or --auto runs)
    fallback: Fallback | None = None  # --auto's float fallback
    # --recover mixed_precision: every configuration it tried (per-format layer counts, accuracy,
    # latency, size, seconds), the Pareto-optimal ones and the chosen one (recover/mixed_precision.py)
    tradeoff: Tradeoff | None = None
    schema_version: int = SCHEMA_VERSION

    OPTIONAL = frozenset({"recovery", "sensitivity", "fallback", "defaults", "auto", "tradeoff"})
    FILE = "report.json"
    READ: ClassVar[Readers] = {
        "validation": Figures,
        "on_cpu_kernels": Figures,
        "recovery": many(RecoveryStep),
        "auto": many(AutoAttempt),
        "accuracy": Accuracy,
        "size": Size,
        "latency": Latency,
        "data": DataFlags,
        "fusions": Fusions,
        "ops": Ops,
        "sensitivity": Sensitivity,
        "fallback": Fallback,
        "tradeoff": Tradeoff,
    }


@dataclass(frozen=True, kw_only=True)
class SourceFile(_Entry):
    """A file the source was read from, and its SHA-256."""

    path: str
    sha256: str


@dataclass(frozen=True, kw_only=True)
class ModelInputRecord(_Entry):
    """One input of the exported graph (calibrate.readers.ModelInput): dims with the batch axis
    (None: any), and the dtype."""

    name: str
    dims: tuple[int | None, ...]
    dtype: str


@dataclass(frozen=True, kw_only=True)
class SourceRecord(_Entry):
    """qconvert.json `source`: what SOURCE was, its files' hashes, its inputs and outputs."""

    origin: str
    kind: str
    files: tuple[SourceFile, ...]
    inputs: tuple[ModelInputRecord, ...]
    outputs: tuple[str, ...]
    task: str | None
    token_outputs: dict[str, str]  # a text model's token outputs: output -> kind

    READ: ClassVar[Readers] = {"files": many(SourceFile), "inputs": many(ModelInputRecord)}


@dataclass(frozen=True, kw_only=True)
class QuantizationRecord(_Entry):
    """qconvert.json `quantization`: the QuantizeConfig the run used (types.QuantizeConfig, field for
    field; its two sets as sorted lists), what the target and the defaults decided."""

    bits: int
    mode: str
    format: str
    activation_type: str
    weight_type: str
    per_channel: bool
    activation_symmetric: bool
    weight_symmetric: bool
    reduce_range: bool
    quantize_bias: bool
    calibration_method: str
    forbidden_ops: tuple[str, ...]
    nodes_to_exclude: tuple[str, ...]
    nodes_to_include: tuple[str, ...]
    external_data: bool
    keep_fp32_ops: tuple[str, ...]
    keep_io_types: bool
    calibration_table: str | None
    extra_options: tuple[Any, ...]  # onnxruntime's (key, value) pairs, as JSON lists
    block_size: int
    weight_algorithm: str
    accuracy_level: int
    layer_formats: tuple[Any, ...]  # (node, format) pairs, as JSON lists


@dataclass(frozen=True, kw_only=True)
class ExportRecord(_Entry):
    """qconvert.json `export`: which exporter made the fp32 ONNX, and why it fell back if it did."""

    exporter: str
    fallback_reason: str | None
    opset: int


@dataclass(frozen=True, kw_only=True)
class TargetRecord(_Entry):
    """qconvert.json `target`: the target, its options (as bound) and what it found out about this
    machine (both keyed by the target's own names)."""

    name: str
    options: dict[str, Any]
    facts: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class ProviderRecord(_Entry):
    """An execution provider and its options (targets.base.Provider.as_json); path options relative
    to the artifact folder."""

    name: str
    options: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class ValidatedOn(_Entry):
    """qconvert.json `validated_on`: the provider validation ran on, and whether graph optimizations
    were off (the Q/DQ arithmetic as written)."""

    provider: str
    exact_qdq: bool


@dataclass(frozen=True, kw_only=True)
class DataSource(_Entry):
    """Where a data set came from (the flag and its path, or what stood in) and how many samples."""

    origin: str
    samples: int


@dataclass(frozen=True, kw_only=True)
class DataRecord(_Entry):
    """qconvert.json `data`: the calibration set (None: the run read none) and the held-out set."""

    calibration: DataSource | None
    validation: DataSource

    READ: ClassVar[Readers] = {"calibration": DataSource, "validation": DataSource}


@dataclass(frozen=True, kw_only=True)
class VerdictRecord(_Entry):
    """qconvert.json `validation`: the verdict, its confidence level, and the checks that did not pass."""

    passed: bool
    verdict: str
    confidence: float | None = None  # since version 2
    failures: tuple[str, ...]

    OMIT = frozenset({"confidence"})

    @classmethod
    def from_json(cls, data: Any, what: str = "qconvert.json: validation") -> VerdictRecord:
        return super().from_json(_verdict_of(data), what)


@dataclass(frozen=True)
class Manifest(_Record):
    """qconvert.json: everything needed to re-run and re-check the export: the command and every
    setting (`run_config()` gives them back as the settings that made the run), the source and data
    with their hashes and origins, what the target decided, the providers, the verdict."""

    qconvert: str
    created: str
    command: str
    source: SourceRecord
    # the settings by their flat names (settings.Composed.flat), an open JSON object kept as written:
    # its key order is that of the qconvert that wrote it; `run_config()` reads it
    settings: dict[str, Any]
    quantization: QuantizationRecord
    export: ExportRecord
    target: TargetRecord
    providers: tuple[ProviderRecord, ...]
    provider_paths_relative_to: str
    validated_on: ValidatedOn
    data: DataRecord
    tolerance: tuple[str, ...]
    validation: VerdictRecord
    versions: dict[str, str]
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256 (added when written)
    schema_version: int = SCHEMA_VERSION

    FILE = "qconvert.json"
    READ: ClassVar[Readers] = {
        "source": SourceRecord,
        "quantization": QuantizationRecord,
        "export": ExportRecord,
        "target": TargetRecord,
        "providers": many(ProviderRecord),
        "validated_on": ValidatedOn,
        "data": DataRecord,
        "validation": VerdictRecord,
    }

    @classmethod
    def _upgrade(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        """Before version 2 the quantization could lack `layer_formats` (mixed precision came later):
        none were raised. The verdict is read from `passed` by VerdictRecord."""
        quantization = data.get("quantization")
        if version < 2 and isinstance(quantization, dict) and "layer_formats" not in quantization:
            data = {**data, "quantization": {**quantization, "layer_formats": []}}
        return data

    def run_config(self) -> ExportSettings:
        """The settings that made this run (settings.ExportSettings), read back from `settings`:
        `to_argv(out_dir)` of them is `command`. A setting an older qconvert did not have reads as its
        default; a bad value is a SourceError naming qconvert.json and the setting."""
        from qconvert.settings import ExportSettings, from_flat

        return from_flat(ExportSettings, self.settings, f"{self.FILE}: settings")


@dataclass(frozen=True)
class ValidationReport(_Validated, _Record):
    """`qconvert validate --json`: what ran on what, with which tolerance, and the verdict; `validation`
    is the checks and figures (ValidationResult.as_json). junit.py renders it."""

    passed: bool  # the verdict is PASSED
    verdict: str  # passed | failed | inconclusive (validation.intervals)
    candidate: str  # CANDIDATE as given
    model: str  # the .onnx that was checked
    reference: str
    data: str
    samples: int
    labels: bool
    provider: str
    exact_qdq: bool  # graph optimizations off: the graph's arithmetic as written
    bits: int
    tolerance: tuple[str, ...]
    tolerance_source: str | None  # the tolerance file, if one was read
    task: TaskScore | None  # --metric: both scores, the drop (and its interval)
    speed: Speed | None  # a speedup bound: both latencies
    collapse: Collapse | None  # --probe collapse
    notes: tuple[str, ...]
    manifest_sha256: str | None  # the OUT_DIR's qconvert.json, whose recorded hashes all held
    seconds: float
    validation: Figures
    verified_files: int | None = None  # how many files those hashes cover (absent without a manifest)
    schema_version: int = SCHEMA_VERSION

    OPTIONAL = frozenset({"verified_files"})
    FILE = "validate --json"
    READ: ClassVar[Readers] = {"task": TaskScore, "speed": Speed, "collapse": Collapse, "validation": Figures}


class _Judged:
    """A run's verdict, read from its `validation` (a ValidationResult): truthy only when PASSED."""

    validation: ValidationResult

    @property
    def passed(self) -> bool:
        return bool(self.validation)

    @property
    def verdict(self) -> str:
        """PASSED, FAILED or INCONCLUSIVE (validation.intervals)."""
        return self.validation.verdict

    def __bool__(self) -> bool:
        return self.passed


@dataclass(frozen=True)
class RunResult(_Judged):
    """What `qconvert.export` returns: where, its verdict, and everything measured (report.json and
    qconvert.json as written; `record` and `manifest_record`: the same as the typed `Report` and
    `Manifest`, what the CLI and the sweep read). Truthy only when the verdict is PASSED."""

    out_dir: Path
    validation: ValidationResult
    manifest: dict[str, Any]
    report: dict[str, Any]
    seconds: float
    record: Report
    manifest_record: Manifest


@dataclass(frozen=True)
class ValidationRun(_Judged):
    """What `qconvert.validate` returns: the checks themselves (`validation`, with their bounds and
    intervals) and the typed --json (`report`). Truthy only when the verdict is PASSED."""

    validation: ValidationResult
    report: ValidationReport

    @property
    def notes(self) -> list[str]:
        return list(self.report.notes)

    @property
    def seconds(self) -> float:
        return self.report.seconds

    def as_json(self) -> dict[str, Any]:
        """The --json document (`report.to_json()`)."""
        return self.report.to_json()


# --- qconvert sweep ----------------------------------------------------------------------------

# the status of a sweep row
BASELINE_STATUS = "baseline"
PASSED = "passed"
OUT_OF_TOLERANCE = "out_of_tolerance"
INCONCLUSIVE = "inconclusive"  # an interval straddles a bound: more held-out samples may decide it
NOT_SUPPORTED = "not_supported"
ERROR = "error"


@dataclass(frozen=True)
class SweepRow(_Entry):
    """One line of the sweep table: the fp32 baseline, or one (bits, mode) trial. Its JSON names three
    fields otherwise (`JSON_KEYS`) and adds what follows from them (`holds_tolerance`,
    `slower_than_fp32`, `collapse_rate`)."""

    name: str  # "fp32", or the trial folder's name, e.g. "8bit-static"
    bits: int | None  # None: the fp32 baseline
    mode: str | None
    status: str  # baseline | passed | out_of_tolerance | inconclusive | not_supported | error
    reason: str | None = None  # why not supported / the error / the checks that did not pass
    accuracy: float | None = None  # task accuracy on the held-out labels, when there are labels
    agreement: float | None = None  # top-1 agreement with the original (worst output), classifiers
    cosine: float | None = None  # mean cosine with the original (worst output)
    # their confidence intervals (report.json: validation.intervals), [low, high]
    agreement_interval: tuple[float, float] | None = None
    cosine_interval: tuple[float, float] | None = None
    size_bytes: int | None = None
    size_ratio: float | None = None
    latency_ms: float | None = None  # p50, measured by the sweep after the trials (interleaved)
    latency_ratio: float | None = None
    trial_latency_ratio: float | None = None  # what the trial measured itself, while others ran
    collapse: Collapse | None = None  # --probe collapse of the trial's model.onnx
    collapse_error: str | None = None
    out_dir: str | None = None  # relative to the sweep's OUT_DIR
    seconds: float | None = None
    notes: tuple[str, ...] = ()

    @property
    def quantized(self) -> bool:
        return self.bits is not None

    @property
    def holds(self) -> bool:
        """A quantized setting that ran and is within tolerance."""
        return self.status == PASSED

    @property
    def slower_than_fp32(self) -> bool:
        return self.quantized and self.latency_ratio is not None and self.latency_ratio >= 1.0

    JSON_KEYS: ClassVar[dict[str, str]] = {
        "agreement": "top1_agreement",
        "agreement_interval": "top1_agreement_interval",
        "latency_ms": "latency_p50_ms",
    }

    @property
    def collapse_rate(self) -> float | None:
        return None if self.collapse is None else float(self.collapse.rate)

    def collapse_lengths(self) -> dict[str, tuple[int | None, int | None]]:
        """Sequence probe families: name -> (longest length the reference keeps, longest the
        candidate keeps up with it). Empty for models without sequence families."""
        families = {} if self.collapse is None else self.collapse.families
        return {name: (fam.reference_longest, fam.candidate_longest) for name, fam in families.items()}

    @classmethod
    def from_json(cls, data: Any, what: str = "a sweep row") -> SweepRow:
        data = _object(data, what)
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            key = cls.JSON_KEYS.get(f.name, f.name)
            _require(data, [key], what)
            value = data[key]
            if f.name == "collapse" and value is not None:
                value = Collapse.from_json(value, _within(what, "collapse"))
            kwargs[f.name] = tuple(value) if isinstance(value, list) else value
        return cls(**kwargs)

    def to_json(self) -> dict[str, Any]:
        return self.as_json()

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "bits": self.bits,
            "mode": self.mode,
            "status": self.status,
            "holds_tolerance": self.holds,
            "reason": self.reason,
            "accuracy": self.accuracy,
            "top1_agreement": self.agreement,
            "top1_agreement_interval": None
            if self.agreement_interval is None
            else list(self.agreement_interval),
            "cosine": self.cosine,
            "cosine_interval": None if self.cosine_interval is None else list(self.cosine_interval),
            "size_bytes": self.size_bytes,
            "size_ratio": self.size_ratio,
            "latency_p50_ms": self.latency_ms,
            "latency_ratio": self.latency_ratio,
            "slower_than_fp32": self.slower_than_fp32,
            "trial_latency_ratio": self.trial_latency_ratio,
            "collapse_rate": self.collapse_rate,
            "collapse": None if self.collapse is None else self.collapse.to_json(),
            "collapse_error": self.collapse_error,
            "out_dir": self.out_dir,
            "seconds": self.seconds,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class Recommendation:
    """The smallest and the fastest quantized setting that hold the tolerance. `fastest` is None
    when none of them is faster than fp32."""

    smallest: SweepRow | None
    fastest: SweepRow | None

    def describe(self) -> str:
        if self.smallest is None:
            return (
                "no quantized setting holds the tolerance: keep fp32, or see which check failed in each trial"
            )
        small = (
            f"smallest that holds tolerance: {self.smallest.name} ({_ratio(self.smallest.size_ratio)} size)"
        )
        if self.fastest is None:
            return f"{small}; fastest that holds tolerance: none is faster than fp32 here"
        return (
            f"{small}; fastest that holds tolerance: {self.fastest.name} "
            f"({_ratio(self.fastest.latency_ratio)} fp32 latency)"
        )

    def record(self) -> RecommendationRecord:
        """As sweep.json holds it: the rows by name, and the sentence."""
        return RecommendationRecord(
            smallest=None if self.smallest is None else self.smallest.name,
            fastest=None if self.fastest is None else self.fastest.name,
            text=self.describe(),
        )


@dataclass(frozen=True, kw_only=True)
class RecommendationRecord(_Entry):
    """sweep.json `recommendation` (Recommendation.as_json): the rows' names, and the sentence."""

    smallest: str | None
    fastest: str | None
    text: str


@dataclass(frozen=True, kw_only=True)
class SweepLatency(_Entry):
    """sweep.json `latency`: how the sweep timed fp32 and every setting, and each one's p50."""

    how: str
    provider: str | None
    batch: int
    repeats: int
    p50_ms: dict[str, float]  # "fp32" and the settings' names


def _ratio(x: float | None) -> str:
    return "?" if x is None else f"{x:.2f}x"


@dataclass(frozen=True)
class SweepReport(_Record):
    """sweep.json: every setting's row (fp32 first), the recommendation and the verdict; what
    sweep_report.py draws (sweep.png, sweep.html) and the CLI's table read."""

    source: str
    target: str
    bits: tuple[int, ...]
    modes: tuple[str, ...] | None  # None: each bit width's default mode
    tolerance: str | None
    executor: str  # local | ray
    workers: int | None  # local worker processes (None under Ray)
    held_out_samples: int
    labels: bool
    latency: SweepLatency  # how the sweep timed fp32 and every setting (interleaved)
    rows: tuple[SweepRow, ...]  # fp32 first
    recommendation: RecommendationRecord
    passed: bool  # a quantized setting holds the tolerance
    verdict: str  # passed | failed | inconclusive
    notes: tuple[str, ...]
    seconds: float
    schema_version: int = SCHEMA_VERSION

    FILE = "sweep.json"
    READ: ClassVar[Readers] = {
        "latency": SweepLatency,
        "rows": many(SweepRow),
        "recommendation": RecommendationRecord,
    }


@dataclass(frozen=True)
class SweepResult:
    """What `sweep` produced: the rows (fp32 first), the recommendation, sweep.json as written
    (`report`) and where it all went. Truthy when at least one quantized setting holds the
    tolerance (its verdict is PASSED)."""

    out_dir: Path
    rows: tuple[SweepRow, ...]
    recommendation: Recommendation
    report: SweepReport
    seconds: float

    @property
    def passed(self) -> bool:
        return self.report.passed

    @property
    def verdict(self) -> str:
        return self.report.verdict

    def __bool__(self) -> bool:
        return self.passed

    @property
    def notes(self) -> list[str]:
        return list(self.report.notes)
