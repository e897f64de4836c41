"""Error statistics between a reference output and a candidate output of the same shape."""

from __future__ import annotations

import numpy as np

EPS = 1e-12


def is_classifier_output(a: np.ndarray) -> bool:
    """[N, C] with C > 1 is treated as class scores (logits or probabilities)."""
    return a.ndim == 2 and a.shape[1] > 1


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """max/mean/p99 abs error, cosine similarity (per sample: mean and worst), SQNR in dB,
    `nonfinite` (values that are NaN or Inf in the candidate where the reference is finite, e.g. an
    fp16 overflow), and top-1 agreement for class-score outputs."""
    if reference.shape != candidate.shape:
        raise ValueError(f"shapes differ: reference {reference.shape}, candidate {candidate.shape}")
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    err = np.abs(ref - cand)
    n = len(ref) if ref.ndim > 0 else 1
    r2, c2 = ref.reshape(n, -1), cand.reshape(n, -1)
    dots = (r2 * c2).sum(axis=1)
    norms = np.linalg.norm(r2, axis=1) * np.linalg.norm(c2, axis=1)
    # two all-zero vectors agree perfectly; one zero vector against a non-zero one does not;
    # NaN stays NaN (a NaN output must not pass as a zero vector)
    zero = np.where(np.abs(r2 - c2).sum(1) > 0, 0.0, 1.0)
    cos = np.where(np.isnan(norms) | (norms > EPS), dots / np.maximum(norms, EPS), zero)
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
    if is_classifier_output(ref):
        out["top1_agreement"] = float((ref.argmax(1) == cand.argmax(1)).mean())
    return out


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return float((scores.argmax(1) == labels).mean())
