"""ScoreTask: `qconvert validate --metric file.py:fn` scores the reference and the candidate on the
held-out data; with a task_drop bound, the drop's confidence interval is a check."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from qconvert.errors import ConfigError
from qconvert.results import Interval as IntervalRecord
from qconvert.results import TaskScore
from qconvert.stages._shared import MODEL_CHECKS, add_checks
from qconvert.stages.base import Stage
from qconvert.stages.context import ValidateContext
from qconvert.validation import Check, Interval

TASK_RESAMPLES = 200  # bootstrap resamples of task_drop: each scores reference and candidate once more


def task_score(
    fn: Callable[..., Any],
    spec: str,
    outputs: dict[str, np.ndarray],
    labels: np.ndarray | None,
    which: str,
    resample: bool = False,
) -> float:
    """fn(outputs, labels) as one finite number; anything else is a ConfigError naming --metric."""
    try:
        value = fn(outputs, labels)
    except Exception as e:
        where = (
            "on a bootstrap resample of the held-out samples (a subset with repeats: qconvert resamples to put "
            "a confidence interval on task_drop, so fn must take any such subset)"
            if resample
            else "on the whole held-out set"
        )
        raise ConfigError(
            f"--metric {spec}: fn(outputs, labels) raised {type(e).__name__}: {e} (on the {which}'s outputs, "
            f"{where}; outputs: {', '.join(outputs)}; labels: {'none' if labels is None else len(labels)})."
        ) from e
    try:
        score = float(value)
    except (TypeError, ValueError):
        score = math.nan
    if isinstance(value, bool) or not math.isfinite(score):
        raise ConfigError(
            f"--metric {spec}: returned {value!r} for the {which}; it must return one finite number, higher "
            "is better."
        )
    return score


def task_drop_interval(
    fn: Callable[..., Any],
    spec: str,
    names: list[str],
    ref_out: list[np.ndarray],
    cand_out: list[np.ndarray],
    labels: np.ndarray | None,
    level: float,
) -> Interval:
    """task_drop's interval: the reference and the candidate scored by `fn` on the same bootstrap
    resamples of the held-out samples (paired), TASK_RESAMPLES times."""
    from qconvert.validation.intervals import bootstrap_statistic

    def drop(idx: np.ndarray) -> float:
        pick = None if labels is None else labels[idx]
        ref = {n: o[idx] for n, o in zip(names, ref_out, strict=True)}
        cand = {n: o[idx] for n, o in zip(names, cand_out, strict=True)}
        return task_score(fn, spec, ref, pick, "reference", resample=True) - task_score(
            fn, spec, cand, pick, "candidate", resample=True
        )

    return bootstrap_statistic(len(ref_out[0]), drop, level, TASK_RESAMPLES)


class ScoreTask(Stage[ValidateContext]):
    name = "task"
    needs = ("metric_fn", "names", "heldout", "ref_out", "cand_out", "validation", "model_bounds")
    gives = ("task",)

    def run(self, ctx: ValidateContext) -> None:
        ctx.task = None
        fn, spec, labels = ctx.metric_fn, ctx.config.metric, ctx.heldout.labels
        if fn is None or not spec:
            return  # PlanChecks refused a task_drop bound without --metric
        scores = [
            task_score(fn, spec, dict(zip(ctx.names, outs, strict=True)), labels, which)
            for which, outs in (("reference", ctx.ref_out), ("candidate", ctx.cand_out))
        ]
        drop = scores[0] - scores[1]
        bounds = [b for b in ctx.model_bounds if b.metric == "task_drop"]
        if bounds:  # one interval (seeded, so the same for every bound): the metric runs 2 x its resamples
            level = ctx.config.confidence
            interval = task_drop_interval(fn, spec, ctx.names, ctx.ref_out, ctx.cand_out, labels, level)
            checks = (Check(MODEL_CHECKS, bound, drop, interval) for bound in bounds)
            ctx.validation = add_checks(ctx.validation, *checks)
        else:
            interval = None
            ctx.notes.append(
                f"--metric {spec}: reported, not checked; add a bound with --tolerance 'task_drop<=X' to "
                "gate on it"
            )
        ctx.task = TaskScore(
            metric=spec,
            reference=scores[0],
            candidate=scores[1],
            drop=drop,
            interval=None if interval is None else IntervalRecord.from_json(interval.as_json(), "task"),
        )
