"""Validation: the candidate against the reference on the very same held-out inputs."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from qconvert.errors import ConfigError
from qconvert.tolerance import DEFAULT_CONFIDENCE, MODEL_METRICS, Bound, Tolerance
from qconvert.validation.intervals import (
    BEYOND,
    BOOTSTRAP,
    FAILED,
    INCONCLUSIVE,
    PAIRED,
    PASSED,
    WILSON,
    Interval,
    bootstrap,
    decide,
    min_samples,
    paired_difference,
    samples_to_settle,
    share_beyond,
    wilson,
)
from qconvert.validation.metrics import (
    RATE,
    RATIO,
    WORST,
    Sampled,
    TokenOutputs,
    abs_error_histogram,
    compare,
    is_classifier_output,
    measure,
    token_measure,
)

__all__ = [
    "CHECK_METHODS",
    "FAILED",
    "INCONCLUSIVE",
    "PASSED",
    "Check",
    "Interval",
    "TokenOutputs",
    "ValidationResult",
    "compare",
    "evaluate",
    "samples_to_pass",
]

# the interval each bound's check reads (what `measure` makes of the metric; a test keeps the two in
# step); speedup is a timing, decided on the measured ratio
CHECK_METHODS: dict[str, str] = {
    "top1_agreement": WILSON,
    "top5_agreement": WILSON,
    "next_token_agreement": WILSON,
    "collapse_rate": WILSON,
    "accuracy_drop": PAIRED,
    "max_abs": BEYOND,
    "nonfinite": BEYOND,
    "cosine": BOOTSTRAP,
    "sqnr_db": BOOTSTRAP,
    "mean_abs": BOOTSTRAP,
    "rel_error": BOOTSTRAP,
    "kl_div": BOOTSTRAP,
    "embedding_cosine": BOOTSTRAP,
    "task_drop": BOOTSTRAP,
}


# metrics that apply only to some outputs (`evaluate` skips a default bound where its metric is absent)
CLASS_SCORE_METRICS = frozenset({"top1_agreement", "top5_agreement", "kl_div", "accuracy_drop"})
TOKEN_METRICS = {"embedding_cosine": "embedding", "next_token_agreement": "next_token"}


def samples_to_pass(
    tolerance: Tolerance,
    level: float,
    *,
    labels: bool,
    class_scores: bool = True,
    token_kinds: Collection[str] = (),
) -> tuple[int, Bound] | None:
    """The fewest held-out samples on which a perfect candidate (every sample agrees, none beyond a
    limit) would pass the always-on nonfinite check and the bounds of `tolerance` that apply to a
    model with these outputs (class-score metrics with `class_scores`, accuracy_drop only with
    `labels`, a token metric with a token output of its kind; whole-model bounds never), with the
    bound that needs that many. Bounds no sample count can pass (accuracy_drop<=0) are left out:
    more samples do not help them."""
    most: tuple[int, Bound] | None = None
    for bound in (*tolerance.bounds, Bound("nonfinite", 0.0)):
        metric = bound.metric
        if (
            metric in MODEL_METRICS
            or (metric in CLASS_SCORE_METRICS and not class_scores)
            or (metric == "accuracy_drop" and not labels)
            or (metric in TOKEN_METRICS and TOKEN_METRICS[metric] not in token_kinds)
        ):
            continue
        method = CHECK_METHODS.get(metric)
        least = None if method is None else min_samples(method, bound.kind, bound.value, level)
        if least is not None and (most is None or least > most[0]):
            most = (least, bound)
    return most


@dataclass(frozen=True)
class Check:
    """One tolerance bound applied to one output (or the whole model), with the interval the verdict
    reads (validation/intervals.py; None: the measured value alone decides, e.g. a timing)."""

    output: str
    bound: Bound
    measured: float
    interval: Interval | None = None

    @property
    def verdict(self) -> str:
        return decide(self.interval, self.bound.kind, self.bound.value, self.measured)

    @property
    def passed(self) -> bool:
        return self.verdict == PASSED

    @property
    def samples_to_settle(self) -> int | None:
        """For an INCONCLUSIVE check, the held-out samples (in all) that would decide it if the
        figures hold (None: not inconclusive, or no count would)."""
        if self.interval is None or self.verdict != INCONCLUSIVE:
            return None
        return samples_to_settle(self.interval, self.bound.kind, self.bound.value, self.measured)

    @property
    def data_limited(self) -> bool:
        """INCONCLUSIVE however good the model: even a perfect one could not pass on this many samples."""
        if self.interval is None or self.verdict != INCONCLUSIVE:
            return False
        least = min_samples(self.interval.method, self.bound.kind, self.bound.value, self.interval.level)
        return least is None or self.interval.samples < least

    @property
    def hint(self) -> str:
        """What a failure means, where the figure alone does not say it."""
        if self.bound.metric == "nonfinite" and self.verdict == FAILED:
            return (
                f"{self.measured:.0f} output value(s) are NaN or Inf where the reference is finite; in an "
                "fp16 model a value beyond +-65504 overflowed: keep the op that produces it in fp32"
            )
        return ""

    @property
    def edge(self) -> float:
        """Where the verdict reads the figure: the interval's end on the passing side (the lower end
        for a `>=` bound), or the measured value for an extreme and for a check without interval."""
        if self.interval is None or self.interval.method == BEYOND:
            return self.measured
        return self.interval.low if self.bound.kind == "min" else self.interval.high

    @property
    def slack(self) -> float:
        """How far `edge` lies inside the bound, relative to the bound (negative: outside)."""
        return self.bound.slack(self.edge)

    @property
    def needed(self) -> str | None:
        """The --tolerance bound that would let this check pass (at `edge`), rounded to the digits that
        matter; None for `speedup`: a release gate must never be told to accept a slowdown."""
        if self.bound.metric == "speedup" or not math.isfinite(self.edge):
            return None
        op = ">=" if self.bound.kind == "min" else "<="
        return f"{self.bound.metric}{op}{passing_round(self.edge, self.bound)}"

    def describe(self) -> str:
        verdict = {PASSED: "ok", FAILED: "FAILED", INCONCLUSIVE: "INCONCLUSIVE"}[self.verdict]
        needs = self.bound.describe()
        shown = f"{self.measured:.6g}"
        if self.interval is not None:
            of = " of samples beyond it" if self.interval.method == BEYOND else ""
            iv = self.interval
            shown += (
                f" ({100 * iv.level:g}% interval{of}: [{iv.low:.4g}, {iv.high:.4g}], {iv.samples} samples)"
            )
        text = f"{self.output}: {self.bound.metric} = {shown} (needs {needs}) {verdict}"
        return f"{text}: {self.hint}" if self.hint else text

    def as_json(self) -> dict[str, object]:
        return {
            "output": self.output,
            "metric": self.bound.metric,
            "bound": self.bound.describe(),
            "measured": self.measured,
            "passed": self.passed,
            "verdict": self.verdict,
            # the interval the verdict reads (on the share of samples beyond the bound for max_abs and
            # nonfinite: method share-beyond); None where the measured value alone decides
            "interval": None if self.interval is None else self.interval.as_json(),
            # held-out samples in all that would settle an inconclusive check, if the figures hold
            "samples_to_settle": self.samples_to_settle,
            # the tolerance that would have let this check pass
            "needed": self.needed,
            "hint": self.hint,
        }


def passing_round(measured: float, bound: Bound) -> str:
    """`measured` rounded towards passing (down for a min bound, up for a max bound) to the fewest
    decimals that give away at most a tenth of the gap to the bound: 0.97 (not 0.969999), 0.9987."""
    gap = abs(bound.value - measured) or abs(measured) or 1.0
    for decimals in range(10):
        scale = 10.0**decimals
        rounded = (math.floor if bound.kind == "min" else math.ceil)(measured * scale) / scale
        text = f"{rounded:.{decimals}f}"
        if abs(float(text) - measured) <= 0.1 * gap and replace(bound, value=float(text)).holds(measured):
            return text
    return repr(measured)


@dataclass(frozen=True)
class ValidationResult:
    """Per-output metrics with their confidence intervals, task accuracy when labels exist, and the
    tolerance checks.

    `verdict`: FAILED when a check fails, else INCONCLUSIVE when one is undecided, else PASSED.
    Truthy only when PASSED.
    """

    samples: int
    outputs: dict[str, dict[str, float]]
    checks: tuple[Check, ...]
    accuracy: dict[str, Any] | None = None  # output, reference, candidate, drop, intervals
    notes: tuple[str, ...] = field(default_factory=tuple)
    # per output: the distribution of |reference - candidate| (metrics.abs_error_histogram)
    histograms: dict[str, dict[str, object]] = field(default_factory=dict)
    # per output: a few hundred (reference, candidate) value pairs, for report.html's scatter plot
    scatter: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    confidence: float = DEFAULT_CONFIDENCE  # the level of every interval
    # per output and figure: its interval (for a worst figure, the share of inputs worse than it)
    intervals: dict[str, dict[str, Interval]] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        verdicts = {c.verdict for c in self.checks}
        return FAILED if FAILED in verdicts else INCONCLUSIVE if INCONCLUSIVE in verdicts else PASSED

    def __bool__(self) -> bool:
        return self.verdict == PASSED

    @property
    def failures(self) -> list[Check]:
        """The checks that did not pass: failed or inconclusive (each says which)."""
        return [c for c in self.checks if not c.passed]

    @property
    def samples_to_settle(self) -> int | None:
        """For an INCONCLUSIVE result, the held-out samples (in all) that would decide every undecided
        check if the figures hold; None otherwise, or when one of them cannot be settled."""
        if self.verdict != INCONCLUSIVE:
            return None
        counts = [c.samples_to_settle for c in self.checks if c.verdict == INCONCLUSIVE]
        return None if None in counts else max(c for c in counts if c is not None)

    @property
    def data_limited(self) -> bool:
        """INCONCLUSIVE only for want of held-out samples: no better model could pass on these."""
        return self.verdict == INCONCLUSIVE and all(c.data_limited for c in self.failures)

    def as_json(self) -> dict[str, object]:
        return {
            "passed": bool(self),
            "verdict": self.verdict,
            "confidence": self.confidence,
            "samples": self.samples,
            "samples_to_settle": self.samples_to_settle,
            # INCONCLUSIVE for want of samples alone: no model, however accurate, could pass on these
            "data_limited": self.data_limited,
            "outputs": self.outputs,
            "intervals": {
                name: {metric: iv.as_json() for metric, iv in by_metric.items()}
                for name, by_metric in self.intervals.items()
            },
            "accuracy": self.accuracy,
            "checks": [c.as_json() for c in self.checks],
            "notes": list(self.notes),
            "abs_error_histograms": self.histograms,
            "scatter": self.scatter,
        }


def _interval_of(part: Sampled, level: float) -> Interval:
    """A figure's interval from its per-sample parts: Wilson for a rate, the bootstrap for a mean or
    a ratio of sums, and for a worst value the share of inputs that may be worse than it."""
    n = len(part.values)
    if part.kind == RATE:
        return wilson(float(part.values.sum()), n, level)
    if part.kind == RATIO:
        return bootstrap(part.values, part.den, level, db=part.db)
    return share_beyond(0, n, level)


def _check_interval(part: Sampled, bound: Bound, figure: Interval) -> Interval:
    """The interval a check reads: the figure's own, or for a worst value (max_abs, nonfinite) the
    share of samples beyond the check's bound."""
    if part.kind != WORST:
        return figure
    with np.errstate(invalid="ignore"):
        beyond = part.values > bound.value if bound.kind == "max" else part.values < bound.value
    beyond |= np.isnan(part.values)
    return share_beyond(int(beyond.sum()), len(part.values), figure.level)


def evaluate(
    names: Sequence[str],
    reference: Sequence[np.ndarray],
    candidate: Sequence[np.ndarray],
    tolerance: Tolerance,
    labels: np.ndarray | None = None,
    tokens: TokenOutputs | None = None,
    level: float = DEFAULT_CONFIDENCE,
) -> ValidationResult:
    """Compare outputs name by name and apply `tolerance` (see `config.Tolerance`), each check on
    its interval at `level`. `tokens` adds the text-model metrics (embedding_cosine,
    next_token_agreement) to the token outputs it names."""
    if len(reference) != len(candidate) or len(names) != len(reference):
        raise ValueError("reference, candidate and names must have the same length")
    outputs, parts = _measured(names, reference, candidate, tokens)
    intervals = {
        name: {metric: _interval_of(part, level) for metric, part in by_metric.items()}
        for name, by_metric in parts.items()
    }
    acc, drop = _task_accuracy(names, reference, candidate, labels, level)

    def check(out: str, bound: Bound) -> Check | None:
        """`bound` on output `out` with the interval it reads; None where the output lacks the metric."""
        if bound.metric == "accuracy_drop":
            return Check(out, bound, acc["drop"], drop) if acc is not None and out == acc["output"] else None
        if bound.metric not in outputs[out]:
            return None
        interval = _check_interval(parts[out][bound.metric], bound, intervals[out][bound.metric])
        return Check(out, bound, outputs[out][bound.metric], interval)

    n = len(reference[0]) if reference and reference[0].ndim else 1
    histograms = {
        name: abs_error_histogram(r, c) for name, r, c in zip(names, reference, candidate, strict=True)
    }
    scatter = {
        name: value_pairs(r, c) for name, r, c in zip(names, reference, candidate, strict=True) if r.size
    }
    return ValidationResult(
        samples=n,
        outputs=outputs,
        checks=_apply(tolerance, names, check),
        accuracy=acc,
        histograms=histograms,
        scatter=scatter,
        confidence=level,
        intervals=intervals,
    )


def _measured(
    names: Sequence[str],
    reference: Sequence[np.ndarray],
    candidate: Sequence[np.ndarray],
    tokens: TokenOutputs | None,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, Sampled]]]:
    """Per output: its figures, and each figure as per-sample parts (metrics.measure)."""
    outputs: dict[str, dict[str, float]] = {}
    parts: dict[str, dict[str, Sampled]] = {}
    for name, r, c in zip(names, reference, candidate, strict=True):
        kind = tokens.kinds.get(name) if tokens is not None else None
        if tokens is not None and kind and r.ndim == 3 and r.shape[:2] == tokens.mask.shape:
            # a token output is compared on the real tokens only, one row per token: what a model
            # computes at padding positions is never used, and differs freely between runtimes; each
            # sequence is one sample (its tokens are not independent)
            real = tokens.mask != 0
            per_token, token_parts = measure(r[real], c[real], classes=False, groups=np.nonzero(real)[0])
            pooled, pooled_parts = token_measure(kind, r, c, tokens.mask)
            outputs[name], parts[name] = {**per_token, **pooled}, {**token_parts, **pooled_parts}
        else:
            outputs[name], parts[name] = measure(r, c)
    return outputs, parts


def _task_accuracy(
    names: Sequence[str],
    reference: Sequence[np.ndarray],
    candidate: Sequence[np.ndarray],
    labels: np.ndarray | None,
    level: float,
) -> tuple[dict[str, Any] | None, Interval | None]:
    """Task accuracy of the first class-score output against `labels`, with Wilson intervals, and the
    drop's paired interval: the same samples are scored twice, so it rests on the discordant ones."""
    task_output = next((n for n, r in zip(names, reference, strict=True) if is_classifier_output(r)), None)
    if labels is None or task_output is None:
        return None, None
    i = list(names).index(task_output)
    ref_right, cand_right = reference[i].argmax(1) == labels, candidate[i].argmax(1) == labels
    n = len(labels)
    ref_acc, cand_acc = float(ref_right.mean()), float(cand_right.mean())
    only_ref, only_cand = int((ref_right & ~cand_right).sum()), int((~ref_right & cand_right).sum())
    drop = paired_difference(only_ref, only_cand, n, level)
    acc = {
        "output": task_output,
        "reference": ref_acc,
        "candidate": cand_acc,
        "drop": ref_acc - cand_acc,
        "intervals": {
            "reference": wilson(float(ref_right.sum()), n, level).as_json(),
            "candidate": wilson(float(cand_right.sum()), n, level).as_json(),
            "drop": drop.as_json(),
        },
    }
    return acc, drop


def _apply(
    tolerance: Tolerance, names: Sequence[str], check: Callable[[str, Bound], Check | None]
) -> tuple[Check, ...]:
    """Every bound of `tolerance` (and the always-on nonfinite one) on the outputs it applies to;
    `check(output, bound)` builds one check, or None where the output lacks the metric."""
    checks = []
    bounds = tolerance.bounds
    if not any(b.metric == "nonfinite" and b.output is None for b in bounds):
        # always on: a NaN or Inf where the reference is finite fails, whatever else was asked for
        bounds = (*bounds, Bound("nonfinite", 0.0))
    scoped = {(b.output, b.metric) for b in bounds if b.explicit and b.output}
    for bound in bounds:
        if bound.output is not None and bound.output not in names:
            raise ConfigError(
                f"--tolerance names output {bound.output!r}, which the model does not have. "
                f"Its outputs: {', '.join(names)}"
            )
        targets = [bound.output] if bound.output else list(names)
        # a bound for every output (a default, or an unscoped one given) gives way, on an output,
        # to a bound on the same metric scoped to that output: the more specific one decides
        gave_way = bound.output is None and any((o, bound.metric) in scoped for o in targets)
        if bound.output is None:
            targets = [o for o in targets if (o, bound.metric) not in scoped]
        applied = [c for c in (check(out, bound) for out in targets) if c is not None]
        checks.extend(applied)
        if bound.explicit and not applied and not gave_way:
            why = {
                "accuracy_drop": "no labels in the data",
                "task_drop": "only `qconvert validate --metric file.py:fn` measures it",
                "speedup": "only `qconvert validate` measures it",
            }.get(bound.metric, "no output it applies to")
            raise ConfigError(f"--tolerance {bound.describe()} cannot be checked: {why}.")
    return tuple(checks)


SCATTER_POINTS = 300


def value_pairs(reference: np.ndarray, candidate: np.ndarray) -> dict[str, list[float]]:
    """Up to SCATTER_POINTS (reference, candidate) value pairs, evenly spaced over the flattened
    output (deterministic), to 5 significant digits; non-finite values are left out."""
    ref = np.asarray(reference, dtype=np.float64).ravel()
    cand = np.asarray(candidate, dtype=np.float64).ravel()
    if ref.shape != cand.shape or not np.issubdtype(np.asarray(reference).dtype, np.floating):
        return {"reference": [], "candidate": []}
    index = np.unique(np.linspace(0, ref.size - 1, min(SCATTER_POINTS, ref.size)).astype(np.int64))
    keep = index[np.isfinite(ref[index]) & np.isfinite(cand[index])]
    return {
        "reference": [float(f"{x:.5g}") for x in ref[keep]],
        "candidate": [float(f"{x:.5g}") for x in cand[keep]],
    }
