"""Error statistics between a reference output and a candidate output of the same shape."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

EPS = 1e-12
TOP_K = 5  # top5_agreement


def is_classifier_output(a: np.ndarray) -> bool:
    """[N, C] with C > 1 is treated as class scores (logits or probabilities)."""
    return a.ndim == 2 and a.shape[1] > 1


# how a figure is made of per-sample parts (Sampled.kind), so that it can be given an interval
RATE, RATIO, WORST = "rate", "ratio", "worst"


@dataclass(frozen=True)
class Sampled:
    """One figure as parts, one per held-out sample, so validation can put a confidence interval on
    it (validation/intervals.py). RATE: `values` is 1 where the sample agrees, the figure their mean.
    RATIO: the figure is sum(values) / sum(den) (10 * log10 of it where `db`). WORST: the figure is
    the largest of `values` (the smallest, with `lowest`)."""

    kind: str
    values: np.ndarray
    den: np.ndarray | None = None
    db: bool = False
    lowest: bool = False


def compare(reference: np.ndarray, candidate: np.ndarray, classes: bool = True) -> dict[str, float]:
    """max/mean/p99 abs error, relative error (mean |a-b| / mean |a|), cosine similarity (per
    sample: mean and worst), SQNR in dB, `nonfinite` (values that are NaN or Inf in the candidate
    where the reference is finite, e.g. an fp16 overflow), and for class-score outputs: top-1
    agreement, top-5 agreement (the reference's top-1 among the candidate's top 5; only with more
    than 5 classes, where it is not trivially 1) and the KL divergence
    softmax(reference) || softmax(candidate), averaged over samples (`classes=False`: never, e.g. for
    the rows of a token output's hidden states)."""
    return measure(reference, candidate, classes)[0]


def measure(
    reference: np.ndarray, candidate: np.ndarray, classes: bool = True, groups: np.ndarray | None = None
) -> tuple[dict[str, float], dict[str, Sampled]]:
    """`compare`'s figures, and each figure (but p99_abs) as per-sample parts. The first axis holds
    the samples; `groups` (ascending, one per row) says which sample each row belongs to where the
    rows are not samples themselves (a token output's real tokens, grouped by sequence)."""
    if reference.shape != candidate.shape:
        raise ValueError(f"shapes differ: reference {reference.shape}, candidate {candidate.shape}")
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    err = np.abs(ref - cand)
    n = len(ref) if ref.ndim > 0 else 1
    r2, c2, e2 = ref.reshape(n, -1), cand.reshape(n, -1), err.reshape(n, -1)
    cos = row_cosine(r2, c2)
    noise = float((err**2).sum())
    signal = float((ref**2).sum())
    out = {
        "max_abs": float(err.max()) if err.size else 0.0,
        "mean_abs": float(err.mean()) if err.size else 0.0,
        "p99_abs": float(np.quantile(err, 0.99)) if err.size else 0.0,
        "cosine": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "sqnr_db": float("inf") if noise <= EPS else float(10 * np.log10(max(signal, EPS) / noise)),
        "nonfinite": float(np.count_nonzero(~np.isfinite(cand) & np.isfinite(ref))),
    }
    mean_ref = float(np.abs(ref).mean()) if ref.size else 0.0
    if mean_ref > EPS:
        out["rel_error"] = out["mean_abs"] / mean_ref
    else:  # an all-zero reference: any error at all is infinitely large relative to it
        out["rel_error"] = 0.0 if out["mean_abs"] <= EPS else float("inf")
    ones = np.ones(n)
    err_sum = e2.sum(axis=1)
    parts = {
        "max_abs": Sampled(
            WORST, _per_sample(e2.max(axis=1) if e2.size else np.zeros(n), groups, np.maximum)
        ),
        "mean_abs": Sampled(RATIO, _per_sample(err_sum, groups), _per_sample(ones * e2.shape[1], groups)),
        "cosine": Sampled(RATIO, _per_sample(cos, groups), _per_sample(ones, groups)),
        "cosine_min": Sampled(WORST, _per_sample(cos, groups, np.minimum), lowest=True),
        "sqnr_db": Sampled(
            RATIO, _per_sample((r2**2).sum(axis=1), groups), _per_sample((e2**2).sum(axis=1), groups), db=True
        ),
        "nonfinite": Sampled(
            WORST, _per_sample(np.count_nonzero(~np.isfinite(c2) & np.isfinite(r2), axis=1) * 1.0, groups)
        ),
        "rel_error": Sampled(
            RATIO, _per_sample(err_sum, groups), _per_sample(np.abs(r2).sum(axis=1), groups)
        ),
    }
    if classes and is_classifier_output(ref):
        same = ref.argmax(1) == cand.argmax(1)
        out["top1_agreement"] = float(same.mean())
        parts["top1_agreement"] = Sampled(RATE, same * 1.0)
        if ref.shape[1] > TOP_K:
            top_k = np.argpartition(-cand, TOP_K - 1, axis=1)[:, :TOP_K]
            in_top = (top_k == ref.argmax(1)[:, None]).any(axis=1)
            out["top5_agreement"] = float(in_top.mean())
            parts["top5_agreement"] = Sampled(RATE, in_top * 1.0)
        kl = softmax_kl_rows(ref, cand)
        out["kl_div"] = float(np.maximum(kl.mean(), 0.0)) if kl.size else 0.0
        parts["kl_div"] = Sampled(RATIO, kl, ones)
    return out, parts


def _per_sample(values: np.ndarray, groups: np.ndarray | None, how: np.ufunc = np.add) -> np.ndarray:
    """Row values -> one value per sample: rows of a sample combined with `how` (sum, max, min)."""
    if groups is None or not len(values):
        return values
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    return how.reduceat(values, starts)


def row_cosine(r2: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of `r2` [N, D] with the same row of `c2` (float64)."""
    dots = (r2 * c2).sum(axis=1)
    norms = np.linalg.norm(r2, axis=1) * np.linalg.norm(c2, axis=1)
    # two all-zero vectors agree perfectly; one zero vector against a non-zero one does not;
    # NaN stays NaN (a NaN output must not pass as a zero vector)
    zero = np.where(np.abs(r2 - c2).sum(1) > 0, 0.0, 1.0)
    return np.where(np.isnan(norms) | (norms > EPS), dots / np.maximum(norms, EPS), zero)


# --- token outputs of text models: [N, S, ...] with the inputs' attention mask [N, S] -------------

TOKEN_KINDS = ("embedding", "next_token")


@dataclass(frozen=True)
class TokenOutputs:
    """Which outputs hold one vector per token, and how users consume them: `embedding` (an
    encoder's hidden states, mean-pooled into a sentence embedding) or `next_token` (a decoder's
    logits, read at the last real token). `mask` is the attention mask of the inputs they came from."""

    mask: np.ndarray  # [N, S], nonzero where the token is real (not padding)
    kinds: Mapping[str, str]  # output name -> one of TOKEN_KINDS


def mean_pooled(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[N, S, H] -> [N, H]: the mean over the real tokens (mask-weighted), in float64."""
    weights = (mask != 0).astype(np.float64)[..., None]
    return (x.astype(np.float64) * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)


def last_real_token(mask: np.ndarray) -> np.ndarray:
    """Per row, the index of the last real token (right or left padding alike; 0 for an empty row)."""
    real = mask != 0
    return np.where(real.any(axis=1), real.shape[1] - 1 - np.argmax(real[:, ::-1], axis=1), 0)


def token_metrics(
    kind: str, reference: np.ndarray, candidate: np.ndarray, mask: np.ndarray
) -> dict[str, float]:
    """`embedding`: embedding_cosine (mean over samples) and embedding_cosine_min (worst sample) of
    the mean-pooled embeddings; `next_token`: next_token_agreement, the share of samples whose
    argmax at the last real token is the same. Padding never counts."""
    return token_measure(kind, reference, candidate, mask)[0]


def token_measure(
    kind: str, reference: np.ndarray, candidate: np.ndarray, mask: np.ndarray
) -> tuple[dict[str, float], dict[str, Sampled]]:
    """`token_metrics`' figures, and each as per-sample parts (see `measure`)."""
    if kind == "embedding":
        cos = row_cosine(mean_pooled(reference, mask), mean_pooled(candidate, mask))
        return (
            {"embedding_cosine": float(cos.mean()), "embedding_cosine_min": float(cos.min())},
            {
                "embedding_cosine": Sampled(RATIO, cos, np.ones_like(cos)),
                "embedding_cosine_min": Sampled(WORST, cos, lowest=True),
            },
        )
    if kind == "next_token":
        rows, last = np.arange(len(mask)), last_real_token(mask)
        same = reference[rows, last].argmax(-1) == candidate[rows, last].argmax(-1)
        return {"next_token_agreement": float(same.mean())}, {
            "next_token_agreement": Sampled(RATE, same * 1.0)
        }
    raise ValueError(f"unknown token output kind {kind!r}; known: {', '.join(TOKEN_KINDS)}")


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax_kl_rows(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """KL(softmax(reference) || softmax(candidate)) per sample (row), in nats. NaN or Inf in the
    candidate gives NaN or Inf, which fails any bound; the figure (their mean) is clipped at 0, where
    rounding leaves a tiny negative value for two equal distributions."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        lp = _log_softmax(reference.astype(np.float64))
        lq = _log_softmax(candidate.astype(np.float64))
        return (np.exp(lp) * (lp - lq)).sum(axis=1)


HISTOGRAM_BINS = 20
HISTOGRAM_RANGE = 1e-6  # the lowest bin edge is at least max_abs * this; smaller errors count as "below"


def abs_error_histogram(
    reference: np.ndarray, candidate: np.ndarray, bins: int = HISTOGRAM_BINS
) -> dict[str, object]:
    """How |reference - candidate| is distributed: `counts` over `bins` log-spaced bins between
    `edges[0]` and `edges[-1]` (the largest error), plus the elements that fall outside them:
    `zero` (exact), `below` (non-zero but under edges[0]) and `nonfinite` (NaN/Inf).
    Every element is counted once: sum(counts) + zero + below + nonfinite == total."""
    err = np.abs(reference.astype(np.float64) - candidate.astype(np.float64)).ravel()
    finite = err[np.isfinite(err)]
    positive = finite[finite > 0]
    edges: list[float] = []
    counts: list[int] = []
    below = 0
    if positive.size:
        hi = float(positive.max())
        lo = max(float(positive.min()), hi * HISTOGRAM_RANGE)
        if lo >= hi * (1 - 1e-3):  # (nearly) one distinct error value: the decade below it
            lo = hi / 10
        edge_array = np.geomspace(lo, hi, bins + 1)
        edge_array[0], edge_array[-1] = lo, hi
        inside = positive[positive >= lo]
        below = int(positive.size - inside.size)
        counts = [int(c) for c in np.histogram(inside, bins=edge_array)[0]]
        edges = [float(e) for e in edge_array]
    return {
        "scale": "log",
        "edges": edges,
        "counts": counts,
        "zero": int(finite.size - positive.size),
        "below": below,
        "nonfinite": int(err.size - finite.size),
        "total": int(err.size),
    }
