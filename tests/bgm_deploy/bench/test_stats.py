"""Statistics: known per-iteration times give known summaries."""

from __future__ import annotations

import math

import pytest

from bgm_deploy.bench.stats import NOISY_CV, LatencyStats, speedup, summarize
from model.errors import UsageError


def test_summary_of_known_times() -> None:
    stats = summarize([0.001, 0.002, 0.003, 0.004, 0.005])
    assert stats.iterations == 5
    assert stats.min_ms == pytest.approx(1.0)
    assert stats.max_ms == pytest.approx(5.0)
    assert stats.mean_ms == pytest.approx(3.0)
    assert stats.median_ms == pytest.approx(3.0)
    # Linear interpolation between closest ranks: rank 0.9 * 4 = 3.6 → 4 + 0.6.
    assert stats.p90_ms == pytest.approx(4.6)
    assert stats.p95_ms == pytest.approx(4.8)
    assert stats.p99_ms == pytest.approx(4.96)
    assert stats.std_ms == pytest.approx(math.sqrt(2.5))  # sample std (ddof=1)
    assert stats.cv == pytest.approx(math.sqrt(2.5) / 3.0)
    assert stats.fps == pytest.approx(1000.0 / 3.0)
    assert stats.is_noisy


def test_batch_scales_throughput_only() -> None:
    one, four = summarize([0.010, 0.010, 0.020], batch=1), summarize([0.010, 0.010, 0.020], batch=4)
    assert four.median_ms == one.median_ms == pytest.approx(10.0)
    assert four.fps == pytest.approx(4 * one.fps) == pytest.approx(400.0)


def test_even_count_median_and_single_value() -> None:
    assert summarize([0.004, 0.001, 0.003, 0.002]).median_ms == pytest.approx(2.5)
    single = summarize([0.25])
    assert (single.std_ms, single.cv, single.p99_ms, single.fps) == (0.0, 0.0, pytest.approx(250.0), pytest.approx(4.0))
    assert not single.is_noisy


def test_noise_threshold() -> None:
    quiet = summarize([0.100, 0.101, 0.099, 0.100])
    assert quiet.cv < NOISY_CV and not quiet.is_noisy


@pytest.mark.parametrize(
    ("times", "batch", "fragment"),
    [([], 1, "empty"), ([0.1, -0.1], 1, ">= 0"), ([0.1, float("nan")], 1, "finite"), ([0.1], 0, "batch=0")],
)
def test_invalid_inputs(times: list[float], batch: int, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        summarize(times, batch)


def test_speedup_and_round_trip() -> None:
    slow, fast = summarize([0.6, 0.6, 0.6]), summarize([0.2, 0.2, 0.2])
    assert speedup(slow, fast) == pytest.approx(3.0)
    assert LatencyStats.from_dict(fast.to_dict()) == fast
