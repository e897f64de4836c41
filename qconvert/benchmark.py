"""Latency and size, measured for several models in one process with interleaved repeats."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p90_ms: float
    mean_ms: float
    runs: int

    def as_json(self) -> dict[str, float]:
        return {"p50_ms": self.p50_ms, "p90_ms": self.p90_ms, "mean_ms": self.mean_ms, "runs": self.runs}


def interleaved_latency(
    runners: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 5
) -> dict[str, Latency]:
    """Time each runner `repeats` times, interleaving them (order rotated every round) so that
    drift in machine load hits all of them alike."""
    names = list(runners)
    for _ in range(warmup):
        for name in names:
            runners[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(repeats):
        rotated = names[i % len(names) :] + names[: i % len(names)]
        for name in rotated:
            start = time.perf_counter()
            runners[name]()
            times[name].append((time.perf_counter() - start) * 1000)
    return {
        n: Latency(
            p50_ms=float(np.percentile(t, 50)),
            p90_ms=float(np.percentile(t, 90)),
            mean_ms=float(np.mean(t)),
            runs=len(t),
        )
        for n, t in times.items()
    }
