"""Typed, versioned results: `Report` (report.json), `Manifest` (qconvert.json), `ValidationReport`
(`qconvert validate --json`) and `SweepReport` (sweep.json); `RunResult`, `ValidationRun` and
`SweepResult`, what `qconvert.export`, `qconvert.validate` and `qconvert.sweep` return (with `SweepRow`
and `Recommendation`).

The four records are frozen, top-level typed records whose `to_json()` emits exactly the JSON the
files have always had, plus `schema_version`; `from_json()` reads it back (files from before
versioning read as version 0) and refuses a newer schema than this qconvert knows. The renderers
(report.py, report_html.py, junit.py, sweep_report.py, the CLI's tables) read these records, never
the JSON. The `validation` entry of `Report` and `ValidationReport` is stored as written and read
through `.figures` (`Figures`, with its `CheckRecord`s): a check or figure key renamed in
validation/ fails there, in a test, instead of leaving a table row out. Entries whose shape is open
(per-output metrics and intervals, size, latency, sensitivity, settings) stay JSON objects.

Versions: 1 added `schema_version`. 2: the verdict reads confidence intervals
(validation/intervals.py). `verdict` (passed | failed | inconclusive) stands beside `passed`, which is
now true only for PASSED: a file that said `passed: true` under version 1 may say `false`,
`inconclusive` for the same figures. Each check gains `verdict`, `interval` and `samples_to_settle`,
the validation `confidence`, `intervals` and `samples_to_settle`, the accuracy `intervals`. A version
0 or 1 file reads with `verdict` taken from `passed`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from qconvert.errors import SourceError

if TYPE_CHECKING:
    from qconvert.validation import ValidationResult

SCHEMA_VERSION = 2  # bump on any change a reader must know about; additions keep the version

R = TypeVar("R", bound="_Record")
T = TypeVar("T")


class _Record:
    """to_json / from_json for a frozen dataclass; `OPTIONAL` entries are left out when empty."""

    OPTIONAL: frozenset[str] = frozenset()
    FILE: str = ""
    schema_version: int  # a field of every record

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema_version": self.schema_version}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name == "schema_version" or (f.name in self.OPTIONAL and not value):
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_json(cls: type[R], data: dict[str, Any]) -> R:
        version = data.get("schema_version", 0)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise SourceError(
                f"{cls.FILE}: schema_version {version!r} is newer than this qconvert reads ({SCHEMA_VERSION}). "
                "Upgrade qconvert, or re-export with this one."
            )
        data = cls._upgrade(data, version)
        names = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        kwargs = {
            k: (tuple(v) if isinstance(v, list) and k in cls._TUPLES else v)
            for k, v in data.items()
            if k in names
        }
        kwargs["schema_version"] = version
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise SourceError(
                f"{cls.FILE}: missing entries ({e}). Give a file written by `qconvert export`."
            ) from e

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

    _TUPLES: frozenset[str] = frozenset()


def _build(cls: type[T], data: dict[str, Any], what: str) -> T:
    """A sub-record from its JSON object: the entries it names (others, from a newer qconvert, are
    left); one that is missing is a SourceError naming `what`."""
    if not isinstance(data, dict):
        raise SourceError(f"{what}: expected a JSON object, got {type(data).__name__}.")
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    try:
        return cls(**{k: v for k, v in data.items() if k in names})
    except TypeError as e:
        raise SourceError(f"{what}: missing entries ({e}). Give a file written by `qconvert export`.") from e


def _verdict_of(data: dict[str, Any]) -> dict[str, Any]:
    """Before version 2 a check or a validation had `passed` and no `verdict` (two outcomes only)."""
    if "verdict" in data or "passed" not in data:
        return data
    return {**data, "verdict": "passed" if data["passed"] else "failed"}


@dataclass(frozen=True)
class CheckRecord:
    """One tolerance check as the reports hold it (validation.Check.as_json)."""

    output: str  # the output, or `model` for whole-model checks (task_drop, speedup)
    metric: str
    bound: str  # the bound as text, e.g. `cosine>=0.99`
    measured: float
    passed: bool
    verdict: str  # passed | failed | inconclusive
    # the interval the verdict reads ({low, high, method, samples}); None: the measured value decides
    interval: dict[str, Any] | None = None
    samples_to_settle: int | None = None  # held-out samples in all that would settle an inconclusive one
    needed: str | None = None  # the tolerance that would have let it pass
    hint: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CheckRecord:
        return _build(cls, _verdict_of(data), "a tolerance check")


@dataclass(frozen=True)
class Figures:
    """A report's `validation` entry (validation.ValidationResult.as_json): the verdict, the checks,
    and the figures behind them. `outputs` (output -> metric -> value), `intervals` (output -> metric
    -> interval), `accuracy`, `abs_error_histograms` and `scatter` stay JSON objects: their metrics
    depend on the model (top-1 for a classifier, embedding cosine for an encoder, ...)."""

    passed: bool
    verdict: str
    samples: int
    outputs: dict[str, dict[str, Any]]
    checks: tuple[CheckRecord, ...]
    accuracy: dict[str, Any] | None = None
    notes: tuple[str, ...] = ()
    confidence: float | None = None  # the intervals' level (since version 2)
    samples_to_settle: int | None = None
    data_limited: bool = False  # INCONCLUSIVE for want of samples alone
    intervals: dict[str, dict[str, Any]] = field(default_factory=dict)
    abs_error_histograms: dict[str, Any] = field(default_factory=dict)
    scatter: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Figures:
        if isinstance(data, dict):
            data = _verdict_of(data)
            checks = data.get("checks")
            if not isinstance(checks, list):
                raise SourceError("validation: no list of checks. Give a file written by `qconvert export`.")
            data = {
                **data,
                "checks": tuple(CheckRecord.from_json(c) for c in checks),
                "notes": tuple(data.get("notes") or ()),
                "intervals": data.get("intervals") or {},
                "abs_error_histograms": data.get("abs_error_histograms") or {},
                "scatter": data.get("scatter") or {},
            }
        return _build(cls, data, "validation")


class _Validated:
    """A record with a `validation` entry, read as `Figures`."""

    validation: dict[str, Any]

    @cached_property
    def figures(self) -> Figures:
        """`validation`, typed (parsed once per record)."""
        return Figures.from_json(self.validation)


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
    validation: dict[str, Any]
    on_cpu_kernels: dict[str, Any] | None
    export_fidelity: dict[str, Any]
    accuracy: dict[str, Any] | None
    size: dict[str, Any]
    latency: dict[str, Any]
    data: dict[str, bool]
    fusions: dict[str, Any] | None
    ops: dict[str, Any]
    notes: tuple[str, ...]
    recovery: tuple[dict[str, Any], ...] = ()  # --recover steps, in run order
    # the model family and what its defaults chose (recover.defaults); None in files written before
    defaults: dict[str, Any] | None = None
    auto: tuple[dict[str, Any], ...] = ()  # --auto's recovery attempts, in order (pipeline/auto.py)
    sensitivity: dict[str, Any] | None = None  # per-layer blame (failed or --auto runs)
    fallback: dict[str, Any] | None = None  # --auto's float fallback
    # --recover mixed_precision: every configuration it tried (per-format layer counts, accuracy,
    # latency, size, seconds), the Pareto-optimal ones and the chosen one (recover/mixed_precision.py)
    tradeoff: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION

    OPTIONAL = frozenset({"recovery", "sensitivity", "fallback", "defaults", "auto", "tradeoff"})
    FILE = "report.json"
    _TUPLES = frozenset({"notes", "recovery", "auto"})


@dataclass(frozen=True)
class Manifest(_Record):
    """qconvert.json: everything needed to re-run and re-check the export."""

    qconvert: str
    created: str
    command: str
    source: dict[str, Any]
    settings: dict[str, Any]
    quantization: dict[str, Any]
    export: dict[str, Any]
    target: dict[str, Any]
    providers: list[dict[str, Any]]
    provider_paths_relative_to: str
    validated_on: dict[str, Any]
    data: dict[str, Any]
    tolerance: list[str]
    validation: dict[str, Any]
    versions: dict[str, str]
    files: dict[str, Any] = field(default_factory=dict)  # name -> sha256 (added when written)
    schema_version: int = SCHEMA_VERSION

    FILE = "qconvert.json"


@dataclass(frozen=True)
class ValidationReport(_Validated, _Record):
    """`qconvert validate --json`: what ran on what, with which tolerance, and the verdict; `validation`
    is the checks and figures as JSON (ValidationResult.as_json). junit.py renders it."""

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
    task: dict[str, Any] | None  # --metric: both scores, the drop (and its interval)
    speed: dict[str, Any] | None  # a speedup bound: both latencies
    collapse: dict[str, Any] | None  # --probe collapse
    notes: tuple[str, ...]
    manifest_sha256: str | None  # the OUT_DIR's qconvert.json, whose recorded hashes all held
    seconds: float
    validation: dict[str, Any]
    verified_files: int | None = None  # how many files those hashes cover (absent without a manifest)
    schema_version: int = SCHEMA_VERSION

    OPTIONAL = frozenset({"verified_files"})
    FILE = "validate --json"
    _TUPLES = frozenset({"tolerance", "notes"})


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
    qconvert.json as written; `record`: report.json as the typed `Report`, what the CLI draws).
    Truthy only when the verdict is PASSED."""

    out_dir: Path
    validation: ValidationResult
    manifest: dict[str, Any]
    report: dict[str, Any]
    seconds: float
    record: Report


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
class SweepRow:
    """One line of the sweep table: the fp32 baseline, or one (bits, mode) trial."""

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
    collapse: dict[str, Any] | None = None  # CollapseResult.as_json()
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

    @property
    def collapse_rate(self) -> float | None:
        if not self.collapse:
            return None
        rate = self.collapse.get("rate")
        return float(rate) if isinstance(rate, (int, float)) else None

    def collapse_lengths(self) -> dict[str, tuple[int | None, int | None]]:
        """Sequence probe families: name -> (longest length the reference keeps, longest the
        candidate keeps up with it). Empty for models without sequence families."""
        families = (self.collapse or {}).get("families") or {}
        return {
            name: (fam.get("reference_longest"), fam.get("candidate_longest"))
            for name, fam in families.items()
            if isinstance(fam, dict)
        }

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
            "collapse": self.collapse,
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

    def as_json(self) -> dict[str, Any]:
        return {
            "smallest": None if self.smallest is None else self.smallest.name,
            "fastest": None if self.fastest is None else self.fastest.name,
            "text": self.describe(),
        }


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
    latency: dict[str, Any]  # how the sweep timed fp32 and every setting (interleaved)
    rows: tuple[dict[str, Any], ...]  # SweepRow.as_json(), fp32 first
    recommendation: dict[str, Any]  # Recommendation.as_json()
    passed: bool  # a quantized setting holds the tolerance
    verdict: str  # passed | failed | inconclusive
    notes: tuple[str, ...]
    seconds: float
    schema_version: int = SCHEMA_VERSION

    FILE = "sweep.json"
    _TUPLES = frozenset({"bits", "modes", "rows", "notes"})


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
