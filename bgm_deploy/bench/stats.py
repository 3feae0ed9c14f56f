"""Latency statistics over per-iteration times (pure numpy, no timing here).

Percentiles use linear interpolation between closest ranks (numpy's default), the
standard deviation is the sample one (``ddof=1``), and throughput is derived from the
median so that the fps column agrees with the median-latency column of every report.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from model.errors import UsageError

# Above this coefficient of variation the machine was busy or the clock unstable.
NOISY_CV = 0.1


@dataclass(frozen=True)
class LatencyStats:
    """Summary of one measured configuration; times in milliseconds."""

    iterations: int
    batch: int
    min_ms: float
    mean_ms: float
    median_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    std_ms: float
    cv: float
    fps: float

    @property
    def is_noisy(self) -> bool:
        """True when the coefficient of variation exceeds :data:`NOISY_CV`."""
        return self.cv > NOISY_CV

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyStats:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def summarize(times_s: Sequence[float], batch: int = 1) -> LatencyStats:
    """Summarises per-iteration wall times.

    Args:
        times_s: seconds per timed iteration (warmup already excluded), at least one.
        batch: frames processed per iteration; throughput is ``batch / median``.

    Returns:
        The statistics in milliseconds and frames per second.

    Raises:
        UsageError: no times, a negative or non-finite time, or batch < 1.
    """
    if len(times_s) == 0:
        raise UsageError("times_s is empty; at least one timed iteration is needed")
    if batch < 1:
        raise UsageError(f"batch={batch!r} is not valid; it must be >= 1")
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    if not np.all(np.isfinite(ms)) or np.any(ms < 0):
        raise UsageError(f"times_s must be finite and >= 0; got min {ms.min()!r} ms, max {ms.max()!r} ms")
    mean = float(ms.mean())
    std = float(ms.std(ddof=1)) if ms.size > 1 else 0.0
    median = float(np.median(ms))
    p90, p95, p99 = (float(v) for v in np.percentile(ms, [90, 95, 99]))
    return LatencyStats(
        iterations=int(ms.size),
        batch=batch,
        min_ms=float(ms.min()),
        mean_ms=mean,
        median_ms=median,
        p90_ms=p90,
        p95_ms=p95,
        p99_ms=p99,
        max_ms=float(ms.max()),
        std_ms=std,
        cv=std / mean if mean > 0 else 0.0,
        fps=batch * 1e3 / median if median > 0 else math.inf,
    )


def speedup(reference: LatencyStats, candidate: LatencyStats) -> float:
    """How many times faster ``candidate`` is than ``reference`` (ratio of medians)."""
    return reference.median_ms / candidate.median_ms if candidate.median_ms > 0 else math.inf
