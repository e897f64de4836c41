"""validation/intervals.py: each interval against published values and its exact or simulated
coverage, the three-way decision, and the sample counts it derives (what could pass at all, what
would settle an undecided check)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from qconvert.validation.intervals import (
    BEYOND,
    BOOTSTRAP,
    FAILED,
    INCONCLUSIVE,
    PAIRED,
    PASSED,
    WILSON,
    bootstrap,
    bootstrap_statistic,
    clean_samples,
    decide,
    min_samples,
    paired_difference,
    samples_to_settle,
    share_beyond,
    t_quantile,
    wilson,
    z_score,
)

# --- the intervals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I, method 3
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)],
)
def test_wilson_matches_published_values(k: int, n: int, low: float, high: float) -> None:
    interval = wilson(k, n, 0.95)
    assert (interval.low, interval.high) == pytest.approx((low, high), abs=5e-5)
    assert interval.method == WILSON and interval.samples == n


def test_wilson_all_agree_is_n_over_n_plus_z_squared() -> None:
    # k = n: the lower end is n / (n + z^2), the closed form the holdout sizing relies on
    z = z_score(0.95)
    for n in (4, 125, 600):
        assert wilson(n, n, 0.95).low == pytest.approx(n / (n + z * z), rel=1e-12)
        assert wilson(n, n, 0.95).high == 1.0


def _wilson_coverage(p: float, n: int) -> float:
    """Exact coverage: the binomial probability of every k whose interval holds p."""
    k = np.arange(n + 1)
    inside = np.array([wilson(int(i), n, 0.95).low <= p <= wilson(int(i), n, 0.95).high for i in k])
    return float((stats.binom.pmf(k, n, p) * inside).sum())


@pytest.mark.parametrize(("p", "n"), [(0.5, 100), (0.9, 300), (0.97, 100), (0.97, 600), (0.995, 600)])
def test_wilson_exact_coverage_is_near_nominal(p: float, n: int) -> None:
    assert 0.93 <= _wilson_coverage(p, n) <= 0.98


def test_paired_difference_exact_coverage_and_width() -> None:
    """Coverage over every (b, c) of 60 paired samples; and on correlated rates (few discordant
    samples) the paired interval is far narrower than one that treats the two rates as independent."""
    n = 60
    for p10, p01 in ((0.05, 0.0), (0.1, 0.05), (0.02, 0.01)):
        covered = 0.0
        for b in range(n + 1):
            for c in range(n + 1 - b):
                iv = paired_difference(b, c, n, 0.95)
                if iv.low <= p10 - p01 <= iv.high:
                    covered += stats.multinomial.pmf([b, c, n - b - c], n, [p10, p01, 1 - p10 - p01])
        assert covered >= 0.94, (p10, p01, covered)
    # 600 samples, accuracies 0.90 and 0.89 on the same samples, 6 discordant (all one way)
    paired = paired_difference(6, 0, 600, 0.95)
    z = z_score(0.95)
    independent = z * math.sqrt(0.9 * 0.1 / 600 + 0.89 * 0.11 / 600)
    assert paired.high - paired.low < independent  # the whole paired width is under one independent half
    assert paired.method == PAIRED and paired.discordant == (6, 0)


def test_t_quantile_is_exact_at_1_and_2_and_close_from_3_degrees_of_freedom() -> None:
    for df in (1, 2):
        assert t_quantile(0.975, df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-12)
    for df in (3, 5, 10, 30, 200):
        for p in (0.95, 0.975, *((0.995,) if df >= 5 else ())):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=2e-3)
    assert t_quantile(0.9995, 3) == pytest.approx(stats.t.ppf(0.9995, 3), rel=0.05)


def test_bootstrap_is_seeded_and_widens_for_few_samples() -> None:
    rng = np.random.default_rng(3)
    values = 1 - rng.exponential(0.002, 200)
    assert bootstrap(values) == bootstrap(values)  # same data, same interval, every run
    interval = bootstrap(values)
    assert interval.low < values.mean() < interval.high and interval.method == BOOTSTRAP
    # about the normal half-width 1.96 s / sqrt(n) at this size
    half = 1.96 * values.std(ddof=1) / math.sqrt(len(values))
    assert (interval.high - interval.low) / 2 == pytest.approx(half, rel=0.15)
    # four samples: the expansion reaches the extremes of the data, not a narrow band around the mean
    few = values[:4]
    small = bootstrap(few)
    assert small.low == pytest.approx(few.min(), abs=1e-4) and small.high == pytest.approx(
        few.max(), abs=1e-4
    )
    one = bootstrap(values[:1])
    assert (one.low, one.high) == (-math.inf, math.inf)  # no spread to resample


def test_bootstrap_coverage_of_a_skewed_mean_and_of_sqnr() -> None:
    """Simulated coverage on per-sample cosines with a long tail of bad samples, and on SQNR (a
    ratio of sums in dB), at 80 samples: within sampling error of 95%."""
    rng = np.random.default_rng(11)
    reps, n = 200, 80
    mean_hits = ratio_hits = 0
    for rep in range(reps):
        cosines = 1 - rng.exponential(0.002, n)
        iv = bootstrap(cosines, seed=rep)
        mean_hits += iv.low <= 1 - 0.002 <= iv.high
        signal = rng.gamma(2.0, 1.0, n)
        noise = signal * rng.gamma(2.0, 0.005, n)  # noise power 1% of the signal's, on average
        iv = bootstrap(signal, noise, db=True, seed=rep)
        ratio_hits += iv.low <= 20.0 <= iv.high
    assert mean_hits / reps >= 0.9 and ratio_hits / reps >= 0.9


def test_bootstrap_statistic_pairs_each_resample() -> None:
    """A statistic of the resampled indices: here the mean, so it agrees with `bootstrap`'s mean."""
    values = np.linspace(0.0, 1.0, 50)
    general = bootstrap_statistic(50, lambda idx: float(values[idx].mean()), 0.95, 2000)
    assert (general.low, general.high) == pytest.approx(
        (bootstrap(values).low, bootstrap(values).high), abs=1e-3
    )


def test_share_beyond_zero_of_n_is_clopper_pearson_and_the_rule_of_three() -> None:
    for n in (10, 72, 600):
        interval = share_beyond(0, n, 0.95)
        assert interval.low == 0.0 and interval.high == pytest.approx(1 - 0.025 ** (1 / n), rel=1e-12)
        assert interval.high == pytest.approx(stats.beta.ppf(0.975, 1, n), rel=1e-9)  # Clopper-Pearson
    assert share_beyond(0, 600, 0.95).high == pytest.approx(3.69 / 600, rel=0.01)  # "rule of three"
    assert share_beyond(3, 600, 0.95).method == BEYOND and share_beyond(3, 600, 0.95).low > 0


def test_clean_samples_is_the_first_count_that_shows_the_level() -> None:
    for level in (0.9, 0.95, 0.99):
        n = clean_samples(level)
        assert share_beyond(0, n, level).high <= 1 - level < share_beyond(0, n - 1, level).high
    assert (clean_samples(0.95), clean_samples(0.99)) == (72, 528)


# --- the verdict --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("low", "high", "kind", "verdict"),
    [
        (0.98, 0.99, "min", PASSED),
        (0.90, 0.96, "min", FAILED),
        (0.96, 0.99, "min", INCONCLUSIVE),
        (0.97, 0.99, "min", PASSED),  # the bound holds at its own value
        (-0.01, 0.005, "max", PASSED),
        (0.02, 0.05, "max", FAILED),
        (0.005, 0.02, "max", INCONCLUSIVE),
    ],
)
def test_decide_reads_the_whole_interval(low: float, high: float, kind: str, verdict: str) -> None:
    from qconvert.validation.intervals import Interval

    bound = 0.97 if kind == "min" else 0.01
    assert decide(Interval(low, high, 0.95, WILSON, 100), kind, bound, (low + high) / 2) == verdict


def test_decide_on_extremes_nan_and_no_interval() -> None:
    # a sample beyond the limit proves it broken; none beyond passes once at most 5% of inputs can be
    assert decide(share_beyond(1, 600, 0.95), "max", 0.0, 1.0) == FAILED
    assert decide(share_beyond(0, 600, 0.95), "max", 0.0, 0.0) == PASSED
    assert decide(share_beyond(0, 40, 0.95), "max", 0.0, 0.0) == INCONCLUSIVE
    assert decide(bootstrap(np.array([1.0, math.nan, 1.0])), "min", 0.99, math.nan) == FAILED
    assert decide(None, "min", 1.0, 0.7) == FAILED and decide(None, "min", 1.0, 1.2) == PASSED  # a timing


# --- sample counts ------------------------------------------------------------------------------


def test_min_samples_for_a_perfect_model() -> None:
    # the brief's example: a Wilson lower bound of n/n clears 0.97 from n = 125
    assert min_samples(WILSON, "min", 0.97, 0.95) == 125
    assert wilson(124, 124, 0.95).low < 0.97 <= wilson(125, 125, 0.95).low
    assert min_samples(WILSON, "min", 0.995, 0.95) == 765
    assert min_samples(WILSON, "min", 0.90, 0.95) == 35
    assert min_samples(PAIRED, "max", 0.01, 0.95) == 194  # accuracy_drop<=0.01, no discordant sample
    assert min_samples(PAIRED, "max", 0.0, 0.95) is None  # the interval always reaches above 0
    assert min_samples(WILSON, "min", 1.0, 0.95) is None
    assert min_samples(BEYOND, "max", 0.0, 0.95) == 72
    assert min_samples(WILSON, "min", 0.97, 0.99) > min_samples(WILSON, "min", 0.97, 0.95)


def test_samples_to_settle_a_rate_is_the_first_count_that_decides_it() -> None:
    # 98% agreement on 100 samples straddles 0.97; at the same rate, N samples decide it and N - 1 do not
    interval = wilson(98, 100, 0.95)
    assert decide(interval, "min", 0.97, 0.98) == INCONCLUSIVE
    n = samples_to_settle(interval, "min", 0.97, 0.98)
    assert n is not None and n > 100
    assert decide(wilson(0.98 * n, n, 0.95), "min", 0.97, 0.98) == PASSED
    assert decide(wilson(0.98 * (n - 1), n - 1, 0.95), "min", 0.97, 0.98) == INCONCLUSIVE
    # a rate exactly on its bound is never settled
    assert samples_to_settle(wilson(97, 100, 0.95), "min", 0.97, 0.97) is None


def test_samples_to_settle_a_mean_follows_its_spread() -> None:
    """The bootstrap estimate: the same per-sample spread on N samples (the data tiled) clears the
    bound, and on half of N it does not."""
    spread = stats.norm.ppf((np.arange(30) + 0.5) / 30)  # 30 values with mean 0 exactly
    cosines = 0.992 + 0.01 * spread  # mean 0.992 against cosine>=0.99
    interval = bootstrap(cosines)
    assert decide(interval, "min", 0.99, 0.992) == INCONCLUSIVE
    n = samples_to_settle(interval, "min", 0.99, 0.992)
    assert n is not None and n > 30
    tiled = np.tile(cosines, math.ceil(n / 30))  # the same values repeated: same mean and spread
    assert decide(bootstrap(tiled), "min", 0.99, float(tiled.mean())) == PASSED
    half = np.tile(cosines, max(1, n // 60))
    assert decide(bootstrap(half), "min", 0.99, float(half.mean())) == INCONCLUSIVE


def test_samples_to_settle_paired_and_beyond() -> None:
    drop = paired_difference(1, 0, 150, 0.95)  # one discordant sample in 150, against <= 0.01
    assert decide(drop, "max", 0.01, 1 / 150) == INCONCLUSIVE
    n = samples_to_settle(drop, "max", 0.01, 1 / 150)
    assert n is not None and decide(paired_difference(n / 150, 0, n, 0.95), "max", 0.01, 1 / 150) == PASSED
    assert samples_to_settle(share_beyond(0, 40, 0.95), "max", 0.0, 0.0) == 72
