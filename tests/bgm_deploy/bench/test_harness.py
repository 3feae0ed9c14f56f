"""Timing loop: warmup excluded, iteration/duration accounting, synchronisation order."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from bgm_deploy.bench.harness import SyncTimer, TimingConfig, measure, measure_stages, warm_up
from model.errors import UsageError


class FakeTimer:
    """Calls the function and reports a fixed duration, so the accounting is exact."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, fn: Callable[[], Any]) -> float:
        fn()
        return self.seconds


def test_warmup_calls_are_not_timed() -> None:
    calls: list[int] = []
    times = measure(lambda: calls.append(1), TimingConfig(warmup=3, iterations=5), FakeTimer(0.01))
    assert len(calls) == 8
    assert times == [0.01] * 5


def test_warmup_in_seconds_and_duration() -> None:
    calls: list[int] = []
    assert warm_up(lambda: calls.append(1), 0.35, FakeTimer(0.1)) == 4  # 0.1 * 4 >= 0.35
    times = measure(lambda: calls.append(1), TimingConfig(warmup=0, duration=0.25), FakeTimer(0.1))
    assert len(times) == 3
    assert warm_up(lambda: None, 0, FakeTimer(0.1)) == 0


def test_sync_timer_synchronises_before_and_after() -> None:
    events: list[str] = []
    timer = SyncTimer(lambda: events.append("sync"))
    seconds = timer(lambda: events.append("call"))
    assert events == ["sync", "call", "sync"]
    assert seconds >= 0


@pytest.mark.parametrize(
    "kwargs",
    [{"warmup": -1}, {"warmup": True}, {"iterations": 0}, {"duration": 0.0}, {"warmup": "3"}],
)
def test_invalid_timing(kwargs: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        TimingConfig(**kwargs)


def test_describe() -> None:
    assert TimingConfig(3, 10).describe() == "warmup 3 calls, 10 iterations"
    assert TimingConfig(1.5, duration=4.0).describe() == "warmup 1.5 s, 4 s"


def test_measure_stages_feeds_each_stage_the_previous_result() -> None:
    sources = iter(range(100))
    seen: list[int] = []
    stages = [("double", lambda x: 2 * x), ("record", lambda x: seen.append(x) or x)]
    times = measure_stages(stages, lambda: next(sources), TimingConfig(warmup=2, iterations=3))
    assert list(times) == ["double", "record"]
    assert all(len(v) == 3 for v in times.values())
    assert seen == [0, 2, 4, 6, 8]  # 2 warmup + 3 timed iterations, in order
