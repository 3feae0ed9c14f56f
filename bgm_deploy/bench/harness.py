"""Timing loop: warmup excluded, device synchronised around every timed call.

A *timer* measures one call of a zero-argument callable. On the CPU that is
``time.perf_counter`` around the call. On a CUDA device kernel launches are
asynchronous, so the GPU timer synchronises before the call (nothing queued from
before is billed to it), records CUDA events around it and synchronises again before
reading them (the call has finished). Per-iteration times are all kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from model.errors import UsageError


# Idle seconds before each timed call when several runtimes are timed interleaved (one call
# of each per round, as the comparison benchmarks do). onnxruntime's intra-op workers
# spin-wait after a run (its default, right for back-to-back calls of one session) and keep
# the cores busy meanwhile: on this 2-core machine the runtime timed next lost them. Measured
# here (2026-12-06): two onnxruntime sessions alternating back to back took 133 and 109 ms per
# HD call, the same sessions with 0.2 s between calls 93 and 70 ms. Every runtime gets the
# same pause; the timed call itself is unchanged.
INTERLEAVE_PAUSE_S = 0.25


class Timer(Protocol):
    """Times one call of ``fn``; returns seconds."""

    def __call__(self, fn: Callable[[], Any]) -> float: ...


def cpu_timer(fn: Callable[[], Any]) -> float:
    """Wall time of one synchronous call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class CudaEventTimer:
    """Times a call on a CUDA device with events (unverified here: no GPU on the dev machine).

    Args:
        device: the torch CUDA device whose current stream the call runs on.
    """

    def __init__(self, device: Any = None) -> None:
        import torch

        self._torch = torch
        self._device = device
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)

    def __call__(self, fn: Callable[[], Any]) -> float:
        cuda = self._torch.cuda
        cuda.synchronize(self._device)
        self._start.record()
        fn()
        self._end.record()
        cuda.synchronize(self._device)
        return self._start.elapsed_time(self._end) / 1e3


class SyncTimer:
    """Wall time around a call with a synchronise function before and after.

    For runtimes whose work is not on torch's current stream (onnxruntime with CUDA IO
    binding, TensorRT on its own stream) events on torch's stream would not cover the
    work; a full device synchronise does.
    """

    def __init__(self, synchronize: Callable[[], None]) -> None:
        self._synchronize = synchronize

    def __call__(self, fn: Callable[[], Any]) -> float:
        self._synchronize()
        start = time.perf_counter()
        fn()
        self._synchronize()
        return time.perf_counter() - start


@dataclass(frozen=True)
class TimingConfig:
    """How long to warm up and measure.

    ``warmup``: an ``int`` number of calls, or a ``float`` number of seconds (at least one
    call either way unless 0). ``iterations``: timed calls; ``duration`` (seconds), when
    set, replaces it: calls are timed until their total reaches it (at least one).
    """

    warmup: int | float = 3
    iterations: int = 10
    duration: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, (int, float)) or self.warmup < 0:
            raise UsageError(f"warmup={self.warmup!r} is not valid; give a number of calls (int >= 0) or seconds (float >= 0)")
        if self.duration is None and (not isinstance(self.iterations, int) or self.iterations < 1):
            raise UsageError(f"iterations={self.iterations!r} is not valid; it must be an int >= 1")
        if self.duration is not None and not self.duration > 0:
            raise UsageError(f"duration={self.duration!r} is not valid; it must be > 0 seconds")

    def describe(self) -> str:
        warm = f"{self.warmup:g} s" if isinstance(self.warmup, float) else f"{self.warmup} calls"
        timed = f"{self.duration:g} s" if self.duration is not None else f"{self.iterations} iterations"
        return f"warmup {warm}, {timed}"


def warm_up(fn: Callable[[], Any], warmup: int | float, timer: Timer = cpu_timer) -> int:
    """Runs the untimed warmup; returns how many calls it made."""
    if isinstance(warmup, float):
        calls, spent = 0, 0.0
        while spent < warmup or (calls == 0 and warmup > 0):
            spent += timer(fn)
            calls += 1
        return calls
    for _ in range(warmup):
        timer(fn)
    return warmup


def measure(fn: Callable[[], Any], timing: TimingConfig, timer: Timer = cpu_timer) -> list[float]:
    """Warms up, then times calls of ``fn``; returns the per-iteration seconds."""
    warm_up(fn, timing.warmup, timer)
    times: list[float] = []
    if timing.duration is not None:
        while not times or sum(times) < timing.duration:
            times.append(timer(fn))
        return times
    for _ in range(timing.iterations):
        times.append(timer(fn))
    return times


def measure_stages(
    stages: list[tuple[str, Callable[[Any], Any]]], source: Callable[[], Any], timing: TimingConfig
) -> dict[str, list[float]]:
    """Times a pipeline stage by stage.

    Each iteration calls ``source()`` (untimed: which file to process next), then feeds
    each stage the previous stage's result, timing every stage with ``perf_counter``.
    Stages must be synchronous (return host data), so no device synchronisation is needed.

    Returns:
        Seconds per iteration for each stage name, in stage order.
    """

    def one() -> list[float]:
        value = source()
        spent = []
        for _, stage in stages:
            start = time.perf_counter()
            value = stage(value)
            spent.append(time.perf_counter() - start)
        return spent

    if isinstance(timing.warmup, float):
        calls, total = 0, 0.0
        while total < timing.warmup or (calls == 0 and timing.warmup > 0):
            total += sum(one())
            calls += 1
    else:
        for _ in range(timing.warmup):
            one()
    rows: list[list[float]] = []
    if timing.duration is not None:
        while not rows or sum(map(sum, rows)) < timing.duration:
            rows.append(one())
    else:
        rows = [one() for _ in range(timing.iterations)]
    return {name: [row[i] for row in rows] for i, (name, _) in enumerate(stages)}
