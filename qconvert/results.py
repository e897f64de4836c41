"""Typed, versioned results: `Report` (report.json), `Manifest` (qconvert.json) and `ValidationReport`
(`qconvert validate --json`), and `ValidationRun`, what `qconvert.validate` returns.

The three records are frozen, top-level typed records whose `to_json()` emits exactly the JSON the
files have always had, plus `schema_version`; `from_json()` reads it back (files from before
versioning read as version 0) and refuses a newer schema than this qconvert knows. Nested entries
(per-output metrics, latency rows, settings) stay JSON objects for now.

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
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from qconvert.errors import SourceError

if TYPE_CHECKING:
    from qconvert.validation import ValidationResult

SCHEMA_VERSION = 2  # bump on any change a reader must know about; additions keep the version

R = TypeVar("R", bound="_Record")


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
        if version < 2 and "verdict" not in data and "passed" in data:
            return {**data, "verdict": "passed" if data["passed"] else "failed"}
        return data

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


@dataclass(frozen=True)
class Report(_Record):
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
class ValidationReport(_Record):
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


@dataclass(frozen=True)
class ValidationRun:
    """What `qconvert.validate` returns: the checks themselves (`validation`, with their bounds and
    intervals) and the typed --json (`report`). Truthy only when the verdict is PASSED."""

    validation: ValidationResult
    report: ValidationReport

    @property
    def passed(self) -> bool:
        return bool(self.validation)

    @property
    def verdict(self) -> str:
        """PASSED, FAILED or INCONCLUSIVE (validation.intervals)."""
        return self.validation.verdict

    def __bool__(self) -> bool:
        return self.passed

    @property
    def notes(self) -> list[str]:
        return list(self.report.notes)

    @property
    def seconds(self) -> float:
        return self.report.seconds

    def as_json(self) -> dict[str, Any]:
        """The --json document (`report.to_json()`)."""
        return self.report.to_json()
