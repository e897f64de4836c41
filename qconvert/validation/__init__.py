"""Validation: the candidate against the reference on the very same held-out inputs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from qconvert.config import Bound, Tolerance
from qconvert.errors import ConfigError
from qconvert.validation.metrics import (
    TokenOutputs,
    abs_error_histogram,
    accuracy,
    compare,
    is_classifier_output,
    token_metrics,
)

__all__ = ["Check", "TokenOutputs", "ValidationResult", "compare", "evaluate"]


@dataclass(frozen=True)
class Check:
    output: str
    bound: Bound
    measured: float

    @property
    def passed(self) -> bool:
        return self.bound.holds(self.measured)

    @property
    def hint(self) -> str:
        """What a failure means, where the figure alone does not say it."""
        if self.bound.metric == "nonfinite" and not self.passed:
            return (
                f"{self.measured:.0f} output value(s) are NaN or Inf where the reference is finite; in an "
                "fp16 model a value beyond +-65504 overflowed: keep the op that produces it in fp32"
            )
        return ""

    @property
    def needed(self) -> str | None:
        """The --tolerance bound that would let this check pass, rounded to the digits that matter; None
        for `speedup`: a release gate must never be told to accept a slowdown."""
        if self.bound.metric == "speedup" or not math.isfinite(self.measured):
            return None
        op = ">=" if self.bound.kind == "min" else "<="
        return f"{self.bound.metric}{op}{passing_round(self.measured, self.bound)}"

    def describe(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        needs = self.bound.describe()
        text = f"{self.output}: {self.bound.metric} = {self.measured:.6g} (needs {needs}) {verdict}"
        return f"{text}: {self.hint}" if self.hint else text

    def as_json(self) -> dict[str, object]:
        return {
            "output": self.output,
            "metric": self.bound.metric,
            "bound": self.bound.describe(),
            "measured": self.measured,
            "passed": self.passed,
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
    """Per-output metrics, task accuracy when labels exist, and the tolerance checks.

    Truthy when every check passes.
    """

    samples: int
    outputs: dict[str, dict[str, float]]
    checks: tuple[Check, ...]
    accuracy: dict[str, Any] | None = None  # output, reference, candidate, drop
    notes: tuple[str, ...] = field(default_factory=tuple)
    # per output: the distribution of |reference - candidate| (metrics.abs_error_histogram)
    histograms: dict[str, dict[str, object]] = field(default_factory=dict)
    # per output: a few hundred (reference, candidate) value pairs, for report.html's scatter plot
    scatter: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def as_json(self) -> dict[str, object]:
        return {
            "passed": bool(self),
            "samples": self.samples,
            "outputs": self.outputs,
            "accuracy": self.accuracy,
            "checks": [c.as_json() for c in self.checks],
            "notes": list(self.notes),
            "abs_error_histograms": self.histograms,
            "scatter": self.scatter,
        }


def evaluate(
    names: Sequence[str],
    reference: Sequence[np.ndarray],
    candidate: Sequence[np.ndarray],
    tolerance: Tolerance,
    labels: np.ndarray | None = None,
    tokens: TokenOutputs | None = None,
) -> ValidationResult:
    """Compare outputs name by name and apply `tolerance` (see `config.Tolerance`). `tokens` adds
    the text-model metrics (embedding_cosine, next_token_agreement) to the token outputs it names."""
    if len(reference) != len(candidate) or len(names) != len(reference):
        raise ValueError("reference, candidate and names must have the same length")
    outputs = {}
    for name, r, c in zip(names, reference, candidate, strict=True):
        kind = tokens.kinds.get(name) if tokens is not None else None
        if tokens is not None and kind and r.ndim == 3 and r.shape[:2] == tokens.mask.shape:
            # a token output is compared on the real tokens only, one row per token: what a model
            # computes at padding positions is never used, and differs freely between runtimes
            real = tokens.mask != 0
            per_token = compare(r[real], c[real], classes=False)
            outputs[name] = {**per_token, **token_metrics(kind, r, c, tokens.mask)}
        else:
            outputs[name] = compare(r, c)
    acc: dict[str, Any] | None = None
    task_output = next((n for n, r in zip(names, reference, strict=True) if is_classifier_output(r)), None)
    if labels is not None and task_output is not None:
        i = list(names).index(task_output)
        ref_acc, cand_acc = accuracy(reference[i], labels), accuracy(candidate[i], labels)
        acc = {"output": task_output, "reference": ref_acc, "candidate": cand_acc, "drop": ref_acc - cand_acc}
    checks = []
    bounds = tolerance.bounds
    if not any(b.metric == "nonfinite" and b.output is None for b in bounds):
        # always on: a NaN or Inf where the reference is finite fails, whatever else was asked for
        bounds = (*bounds, Bound("nonfinite", 0.0))
    scoped = {(b.output, b.metric) for b in bounds if b.explicit and b.output}
    for bound in bounds:
        if bound.output is not None and bound.output not in outputs:
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
        applied = False
        for out in targets:
            if bound.metric == "accuracy_drop":
                if acc is not None and out == acc["output"]:
                    checks.append(Check(out, bound, acc["drop"]))
                    applied = True
            elif bound.metric in outputs[out]:
                checks.append(Check(out, bound, outputs[out][bound.metric]))
                applied = True
        if bound.explicit and not applied and not gave_way:
            why = {
                "accuracy_drop": "no labels in the data",
                "task_drop": "only `qconvert validate --metric file.py:fn` measures it",
                "speedup": "only `qconvert validate` measures it",
            }.get(bound.metric, "no output it applies to")
            raise ConfigError(f"--tolerance {bound.describe()} cannot be checked: {why}.")
    n = len(reference[0]) if reference and reference[0].ndim else 1
    histograms = {
        name: abs_error_histogram(r, c) for name, r, c in zip(names, reference, candidate, strict=True)
    }
    scatter = {
        name: value_pairs(r, c) for name, r, c in zip(names, reference, candidate, strict=True) if r.size
    }
    return ValidationResult(
        samples=n, outputs=outputs, checks=tuple(checks), accuracy=acc, histograms=histograms, scatter=scatter
    )


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
