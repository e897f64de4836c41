"""The verdict `evaluate` gives: every figure with its interval, the three-way verdict on the checks,
what it takes to pass at all, and the table of interval methods kept in step with `measure`."""

from __future__ import annotations

import numpy as np
import pytest

from qconvert.tolerance import Bound, Tolerance
from qconvert.validation import (
    CHECK_METHODS,
    FAILED,
    INCONCLUSIVE,
    PASSED,
    TokenOutputs,
    evaluate,
    samples_to_pass,
)
from qconvert.validation.intervals import BEYOND, BOOTSTRAP, PAIRED, WILSON
from qconvert.validation.metrics import RATE, RATIO, WORST, measure, token_measure


def _logits(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n, 10))
    scores[np.arange(n), rng.integers(0, 10, n)] += 4.0  # a clear winner per row
    return scores.astype(np.float32)


def test_check_methods_follow_what_measure_makes_of_each_metric() -> None:
    kinds = {RATE: WILSON, RATIO: BOOTSTRAP, WORST: BEYOND}
    ref = _logits(20)
    _, parts = measure(ref, ref * 1.01)
    mask = np.ones((4, 3))
    tokens = np.ones((4, 3, 5))
    for kind in ("embedding", "next_token"):
        parts.update(token_measure(kind, tokens, tokens, mask)[1])
    for metric, part in parts.items():
        if metric in CHECK_METHODS:
            assert CHECK_METHODS[metric] == kinds[part.kind], metric
    assert CHECK_METHODS["accuracy_drop"] == PAIRED
    assert {"cosine_min", "embedding_cosine_min"} <= parts.keys()  # worst figures get intervals too


def test_every_figure_has_an_interval_resting_on_the_samples() -> None:
    ref = _logits(300)
    result = evaluate(["logits"], [ref], [ref + 0.01], Tolerance.for_bits(8), labels=ref.argmax(1))
    intervals = result.intervals["logits"]
    assert set(intervals) == set(result.outputs["logits"]) - {"p99_abs"}
    assert all(iv.samples == 300 and iv.level == 0.95 for iv in intervals.values())
    assert intervals["top1_agreement"].method == WILSON and intervals["cosine"].method == BOOTSTRAP
    assert intervals["max_abs"].method == BEYOND  # the share of inputs that may be worse than the worst
    assert result.verdict == PASSED and result
    doc = result.as_json()
    assert doc["confidence"] == 0.95 and doc["verdict"] == PASSED and doc["samples_to_settle"] is None
    assert doc["intervals"]["logits"]["sqnr_db"]["method"] == BOOTSTRAP
    assert set(doc["accuracy"]["intervals"]) == {"reference", "candidate", "drop"}


@pytest.mark.parametrize(
    ("n", "flips", "verdict"),
    [
        (300, 0, PASSED),  # 300 of 300 agree: [98.7%, 100%] clears 0.97
        (40, 0, INCONCLUSIVE),  # 40 of 40: [91.2%, 100%] straddles it; a perfect model needs 125
        (300, 30, FAILED),  # 270 of 300: [86.1%, 93.0%] lies below it
        (300, 6, INCONCLUSIVE),  # 294 of 300 (98%): [95.7%, 99.1%] straddles it
    ],
)
def test_three_verdicts_on_top1_agreement(n: int, flips: int, verdict: str) -> None:
    ref = _logits(n)
    cand = ref.copy()
    rows = np.arange(flips) * (n // max(flips, 1))
    cand[rows, ref[rows].argmin(1)] = ref[rows].max(1) + 1.0  # a new winner in exactly these rows
    result = evaluate(["logits"], [ref], [cand], Tolerance.for_bits(8, "cosine>=0"))
    top1 = next(c for c in result.checks if c.bound.metric == "top1_agreement")
    assert top1.measured == pytest.approx(1 - flips / n)
    assert top1.verdict == result.verdict == verdict
    assert bool(result) == (verdict == PASSED)
    if verdict == INCONCLUSIVE:
        assert top1.samples_to_settle is not None and top1.samples_to_settle > n
        assert result.samples_to_settle == max(c.samples_to_settle or 0 for c in result.checks)
        assert result.data_limited == (flips == 0)  # only all-agree on 40 could no model improve


def test_a_nan_fails_at_once_whatever_the_sample_count() -> None:
    ref = _logits(10)
    cand = ref.copy()
    cand[3, 1] = np.inf
    result = evaluate(["logits"], [ref], [cand], Tolerance.for_bits(8))
    nonfinite = next(c for c in result.checks if c.bound.metric == "nonfinite")
    assert nonfinite.verdict == FAILED and result.verdict == FAILED
    assert nonfinite.interval is not None and nonfinite.interval.method == BEYOND


def test_a_token_output_is_resampled_by_sequence() -> None:
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(80, 6, 8)).astype(np.float32)
    mask = np.ones((80, 6))
    mask[:, 4:] = 0
    tokens = TokenOutputs(mask=mask, kinds={"h": "embedding"})
    result = evaluate(["h"], [ref], [ref * 1.001], Tolerance.for_bits(8, text=True), tokens=tokens)
    assert result.intervals["h"]["cosine"].samples == 80  # 80 sequences, not 320 tokens
    assert result.intervals["h"]["embedding_cosine"].samples == 80
    assert result.verdict == PASSED


def test_samples_to_pass_names_the_bound_that_needs_most() -> None:
    eight = Tolerance.for_bits(8)
    assert samples_to_pass(eight, 0.95, labels=False) == (125, Bound("top1_agreement", 0.97))
    assert samples_to_pass(eight, 0.95, labels=True) == (194, Bound("accuracy_drop", 0.01))
    assert samples_to_pass(Tolerance.for_bits(16), 0.95, labels=False)[0] == 765
    assert samples_to_pass(Tolerance(()), 0.95, labels=False) == (72, Bound("nonfinite", 0.0))  # always on
    never = Tolerance.for_bits(8, "accuracy_drop<=0")  # no count shows a drop of at most 0: left out
    assert samples_to_pass(never, 0.95, labels=True)[1].metric == "top1_agreement"
    # a model without class-score outputs: only the bounds every output has
    assert samples_to_pass(eight, 0.95, labels=True, class_scores=False) == (72, Bound("nonfinite", 0.0))
    text = Tolerance.for_bits(8, text=True)  # next_token_agreement>=0.90 only where there is such an output
    assert samples_to_pass(text, 0.95, labels=False, class_scores=False)[0] == 72
    assert samples_to_pass(text, 0.95, labels=False, class_scores=False, token_kinds=("next_token",))[0] == 72
    decoder = Tolerance.for_bits(8, "next_token_agreement>=0.98", text=True)
    found = samples_to_pass(decoder, 0.95, labels=False, class_scores=False, token_kinds=("next_token",))
    assert found == (189, Bound("next_token_agreement", 0.98, explicit=True))
