"""Confidence intervals for the figures a verdict rests on, the three-way verdict they give, and how
many held-out samples would settle an undecided one.

Every interval is two-sided at the run's confidence level (`--confidence`, 0.95 by default): a check
PASSES when the whole interval lies inside its tolerance, FAILS when the whole interval lies outside,
and is INCONCLUSIVE when the interval straddles the bound. Each decision is therefore wrong at most
(1 - level) / 2 of the time (2.5% at 95%). Which interval, and why:

- Rates (top-1, top-5 and next-token agreement, accuracy, the collapse rate): the Wilson score
  interval (Wilson 1927). Unlike the textbook normal (Wald) interval it stays inside [0, 1] and keeps
  close to its nominal coverage at 0 and 100%, which is exactly where a quantized model's agreement
  sits: 12 of 12 samples agreeing gives [75.8%, 100%], not the Wald interval's [100%, 100%].
- A paired difference of rates (the accuracy drop: the reference and the candidate are scored on the
  same samples, so their accuracies are correlated): only the discordant samples carry information.
  With b samples right in the reference and wrong in the candidate, c the other way round, the drop is
  (b - c) / n and its interval is the Wald interval with Agresti and Min's adjustment (2005: add 1/2
  to each cell of the paired 2x2 table), which Fagerland, Lydersen and Laake (2014) recommend for
  its coverage and its closed form. Treating the two accuracies as independent would double count
  the shared samples and give an interval several times too wide.
- Means and ratios of sums over samples (cosine, embedding cosine, KL divergence, mean abs error,
  relative error, SQNR): a percentile bootstrap over samples (Efron 1979), seeded (the same inputs
  give the same interval, byte for byte), with Hesterberg's small-sample expansion (2015: the tail
  probabilities are those of a t interval with n - 1 degrees of freedom, widened by sqrt(n / (n-1)))
  because the plain percentile interval is too narrow below ~30 samples. Why not a t-interval: SQNR
  and relative error are ratios of sums, not means; a token output's figures must be resampled by
  sentence (its tokens are not independent samples); and per-sample cosines and KL are skewed (a
  long tail of bad samples), which the bootstrap follows and a symmetric t-interval does not.
- Extremes (max abs error, the NaN/Inf count, worst cosine): an observed maximum has no interval of
  its own, since a larger value may always hide in the inputs not seen. What the data can support is
  a bound on the share of inputs beyond a limit. A sample that breaks the limit proves the bound
  wrong: FAILED. When none of n samples does, the share of inputs that would is at most
  1 - ((1 - level) / 2) ** (1 / n) (Clopper-Pearson for 0 of n; about 3.7 / n at 95%, the "rule of
  three"), and the check PASSES once that is at most 1 - level: with 95% confidence at least 95% of
  inputs are within the limit (Wilks' 95/95 tolerance limit, two-sided here like every other
  interval). That takes 72 clean samples at 95%; fewer is INCONCLUSIVE.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

PASSED, FAILED, INCONCLUSIVE = "passed", "failed", "inconclusive"
VERDICTS = (PASSED, FAILED, INCONCLUSIVE)

WILSON = "wilson"
PAIRED = "agresti-min"
BOOTSTRAP = "bootstrap"
BEYOND = "share-beyond"  # the interval is on the share of inputs beyond a limit, not on the figure

RESAMPLES = 2000  # bootstrap resamples: 50 beyond each 2.5% tail
SEED = 0
CHUNK = 1 << 21  # index elements drawn at once (16 MB), so a large held-out set needs no large array
MAX_SAMPLES = 10**8  # beyond this, "how many samples would settle it" has no useful answer

_NORMAL = NormalDist()


@dataclass(frozen=True)
class Interval:
    """A two-sided confidence interval at `level`, by `method`, resting on `samples` independent
    samples (held-out samples; for the collapse rate, effective pairs). For BEYOND the interval is
    on the share of inputs beyond a limit (the check's bound, or the worst value seen)."""

    low: float
    high: float
    level: float
    method: str
    samples: int
    discordant: tuple[int, int] | None = None  # PAIRED: (first only, second only)

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "low": self.low,
            "high": self.high,
            "method": self.method,
            "samples": self.samples,
        }
        if self.discordant is not None:
            out["discordant"] = list(self.discordant)
        return out


def z_score(level: float) -> float:
    """The standard normal quantile that leaves (1 - level) / 2 in each tail (1.96 at 0.95)."""
    return _NORMAL.inv_cdf(0.5 + level / 2)


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile: exact for 1 and 2 degrees of freedom, else the Cornish-Fisher expansion
    in 1/df (Abramowitz and Stegun 26.7.5): within 0.2% of the exact value from 3 degrees of freedom
    up to p = 0.975 (a 95% interval) and from 5 up to p = 0.995; at worst 4% (3 degrees of freedom,
    p = 0.9995). It only widens the bootstrap of a handful of samples (see `bootstrap`)."""
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    z = _NORMAL.inv_cdf(p)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def wilson(k: float, n: int, level: float, method: str = WILSON) -> Interval:
    """The Wilson score interval for k successes in n samples (k may be fractional: an expected count)."""
    if n <= 0:
        return Interval(0.0, 1.0, level, method, 0)
    z, p = z_score(level), k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if k <= 0 else max(0.0, center - half)
    high = 1.0 if k >= n else min(1.0, center + half)
    return Interval(low, high, level, method, n)


def paired_difference(b: float, c: float, n: int, level: float) -> Interval:
    """Interval for (b - c) / n, the difference of two rates measured on the same n samples: b
    samples count for the first rate only, c for the second only (Agresti and Min 2005)."""
    counts = (round(b), round(c))
    if n <= 0:
        return Interval(-1.0, 1.0, level, PAIRED, 0, counts)
    z = z_score(level)
    bt, ct, nt = b + 0.5, c + 0.5, n + 2
    center = (bt - ct) / nt
    half = z * math.sqrt(max(bt + ct - (bt - ct) ** 2 / nt, 0.0)) / nt
    return Interval(max(-1.0, center - half), min(1.0, center + half), level, PAIRED, n, counts)


def share_beyond(k: int, n: int, level: float) -> Interval:
    """Interval for the share of inputs beyond a limit that k of n samples went beyond: exact
    (Clopper-Pearson) for k = 0, where it is [0, 1 - ((1 - level) / 2) ** (1 / n)]; Wilson otherwise
    (then the limit is already broken and the interval is only shown)."""
    if n <= 0:
        return Interval(0.0, 1.0, level, BEYOND, 0)
    if k == 0:
        return Interval(0.0, 1 - ((1 - level) / 2) ** (1 / n), level, BEYOND, n)
    return wilson(k, n, level, BEYOND)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, with x / 0 = inf and 0 / 0 = 0 (an all-zero reference against an exact candidate)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = num / den
    return np.where(den > 0, out, np.where(num > 0, np.inf, 0.0))


def bootstrap(
    num: np.ndarray,
    den: np.ndarray | None = None,
    level: float = 0.95,
    *,
    db: bool = False,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> Interval:
    """Percentile bootstrap interval of sum(num) / sum(den) over samples (den: ones, so a mean) with
    Hesterberg's expansion for small samples; `db` gives 10 * log10 of the ratio (SQNR). Resampling
    uses `seed`, so the interval is the same on every run. One sample has no spread to resample: the
    interval is then unbounded."""
    num = np.asarray(num, dtype=np.float64)
    den = np.ones_like(num) if den is None else np.asarray(den, dtype=np.float64)
    n = len(num)
    stats = np.empty(resamples if n >= 2 else 0)
    if n >= 2:
        rng = np.random.default_rng(seed)
        step = max(1, CHUNK // n)
        for start in range(0, resamples, step):
            idx = rng.integers(0, n, size=(min(step, resamples - start), n))
            stats[start : start + len(idx)] = _ratio(num[idx].sum(axis=1), den[idx].sum(axis=1))
    low, high = _percentiles(stats, n, level)
    if db:
        low, high = (10 * math.log10(x) if x > 0 else -math.inf for x in (low, high))
    return Interval(low, high, level, BOOTSTRAP, n)


def bootstrap_statistic(
    n: int, statistic: Callable[[np.ndarray], float], level: float, resamples: int, seed: int = SEED
) -> Interval:
    """The same percentile bootstrap for any statistic of the samples: `statistic(indices)` computes it
    on the samples at `indices` (a resample, with repeats). For figures that are no sum over samples,
    e.g. a user's task metric; `resamples` calls, so fewer of them than RESAMPLES where it is slow."""
    rng = np.random.default_rng(seed)
    stats = np.array([statistic(rng.integers(0, n, size=n)) for _ in range(resamples if n >= 2 else 0)])
    low, high = _percentiles(stats, n, level)
    return Interval(low, high, level, BOOTSTRAP, n)


def _percentiles(stats: np.ndarray, n: int, level: float) -> tuple[float, float]:
    """The interval from bootstrap statistics over n samples: the percentiles of a t interval's tails
    with n - 1 degrees of freedom, widened by sqrt(n / (n - 1)) (Hesterberg's expanded percentile).
    Fewer than 2 samples: unbounded; a NaN statistic: NaN."""
    if n < 2 or not len(stats):
        return -math.inf, math.inf
    if np.isnan(stats).any():
        return math.nan, math.nan
    tail = _NORMAL.cdf(-math.sqrt(n / (n - 1)) * t_quantile(0.5 + level / 2, n - 1))
    ordered = np.sort(stats)
    count = len(ordered)
    low = float(ordered[min(count - 1, math.floor(tail * count))])
    high = float(ordered[max(0, math.ceil((1 - tail) * count) - 1)])
    return low, high


def decide(interval: Interval | None, kind: str, bound: float, measured: float) -> str:
    """The verdict on `metric >= bound` (kind "min") or `<= bound` ("max"): PASSED when the interval
    lies inside the tolerance, FAILED when it lies outside, INCONCLUSIVE when it straddles the bound.
    No interval (a timing, or a figure from before intervals): the measured value decides. An extreme
    (BEYOND) fails when the measured value breaks the bound and passes when at most 1 - level of
    inputs can be beyond it."""

    def holds(x: float) -> bool:
        return x >= bound if kind == "min" else x <= bound

    if interval is None or math.isnan(measured) or math.isnan(interval.low) or math.isnan(interval.high):
        return PASSED if holds(measured) else FAILED
    if interval.method == BEYOND:
        if not holds(measured):
            return FAILED
        return PASSED if interval.high <= 1 - interval.level else INCONCLUSIVE
    inside, outside = (interval.low, interval.high) if kind == "min" else (interval.high, interval.low)
    if holds(inside):
        return PASSED
    if not holds(outside):
        return FAILED
    return INCONCLUSIVE


# --- how many samples would settle a check ------------------------------------------------------


def _smallest(n: int, settles: Callable[[int], bool]) -> int | None:
    """The smallest sample count above `n` at which `settles` holds (it is monotone in the count);
    None when even MAX_SAMPLES do not settle it."""
    high = max(n + 1, 2)
    while not settles(high):
        if high >= MAX_SAMPLES:
            return None
        high = min(MAX_SAMPLES, high * 2)
    low = n  # settles(low) is False or low is the current count
    while high - low > 1:
        mid = (low + high) // 2
        if settles(mid):
            high = mid
        else:
            low = mid
    return high


def _settled(interval: Interval, kind: str, bound: float, measured: float) -> bool:
    return decide(interval, kind, bound, measured) != INCONCLUSIVE


def samples_to_settle(interval: Interval, kind: str, bound: float, measured: float) -> int | None:
    """Held-out samples (in all) at which an INCONCLUSIVE check would be decided, if the measured
    figure (and, for a mean, its spread per sample) stays as it is; None when no count would do (the
    figure sits on the bound). Estimated from the measured rate or variance, so it is a guide: with
    exactly this many samples the figure itself still moves."""
    if interval.method == WILSON:
        return settle_rate(measured, interval.samples, kind, bound, interval.level)
    if interval.method == PAIRED and interval.discordant is not None:
        b, c = interval.discordant
        return settle_paired(b, c, interval.samples, kind, bound, interval.level)
    if interval.method == BOOTSTRAP:
        return settle_bootstrap(interval, kind, bound, measured)
    if interval.method == BEYOND:
        return clean_samples(interval.level)
    return None


def settle_rate(p: float, n: int, kind: str, bound: float, level: float) -> int | None:
    """Samples at which a rate measured as `p` on n samples would be decided, if it stays at `p`."""
    if p == bound:
        return None
    return _smallest(n, lambda m: _settled(wilson(p * m, m, level), kind, bound, p))


def settle_paired(b: int, c: int, n: int, kind: str, bound: float, level: float) -> int | None:
    """Samples at which a paired difference (b - c) / n would be decided, if b and c grow with n."""
    measured = (b - c) / n
    if measured == bound:
        return None
    return _smallest(
        n, lambda m: _settled(paired_difference(b * m / n, c * m / n, m, level), kind, bound, measured)
    )


def settle_bootstrap(interval: Interval, kind: str, bound: float, measured: float) -> int | None:
    """Samples at which a bootstrap interval would clear the bound, if the spread per sample stays
    the same: the interval's width shrinks as 1 / sqrt(n)."""
    gap = abs(measured - bound)
    near = interval.low if measured >= bound else interval.high  # the end facing the bound
    reach = abs(measured - near)
    if gap == 0 or not math.isfinite(reach):
        return None
    if reach == 0:
        reach = (interval.high - interval.low) / 2
    needed = math.ceil(interval.samples * (reach / gap) ** 2)
    return needed if needed <= MAX_SAMPLES else None


def clean_samples(level: float) -> int:
    """Samples, none of them beyond a limit, that show at `level` that at most 1 - level of inputs
    are beyond it (72 at 0.95, 528 at 0.99)."""
    return math.ceil(math.log((1 - level) / 2) / math.log(level) - 1e-9)


def min_samples(method: str, kind: str, bound: float, level: float) -> int | None:
    """The fewest samples on which a check could pass at all, however good the model: all samples
    agree, none beyond a limit, no discordant pair. None: no sample count is enough (e.g.
    accuracy_drop<=0: the interval always reaches above 0)."""
    if method == BEYOND:
        return clean_samples(level)
    if method == BOOTSTRAP:
        return 2
    if method == WILSON:
        perfect = 1.0 if kind == "min" else 0.0
        return _smallest(0, lambda m: decide(wilson(perfect * m, m, level), kind, bound, perfect) == PASSED)
    if method == PAIRED:
        return _smallest(0, lambda m: decide(paired_difference(0, 0, m, level), kind, bound, 0.0) == PASSED)
    raise ValueError(f"unknown interval method {method!r}")
