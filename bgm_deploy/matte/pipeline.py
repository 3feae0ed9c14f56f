"""The one matte pipeline, for photos and footage alike.

::

    source thread ──(bounded queue: units)──> predict (this thread; a server client: N requests
    in flight, order kept) ──> sink (encode threads; bounded)

A *source* yields :class:`Unit` s in order (a photo pair, or a video frame with its plate);
a *sink* turns each prediction into files (images per pair, or one video / PNG sequence
per output kind). Units of the same size are batched up to ``options.batch``. Memory stays
flat whatever the length of the job: every queue is bounded. An interrupt (Ctrl-C, SIGTERM)
or a failure stops every stage; the sink then keeps finished files and removes partial ones.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from model.errors import BgmDeployError

from ..predictor import Prediction
from .options import MatteOptions


@dataclass
class Unit:
    """One thing to matte: a photo pair or a video frame.

    Attributes:
        key: the output name (a photo's relative path without suffix, a frame's name).
        index: position in the job.
        src, bgr: ``(H, W, 3)`` uint8 images (None when decoding failed: see ``error``).
        backdrop: what ``com`` goes over, ``(H, W, 3)`` uint8 (None: the sink's colour).
        meta: the source's own record (a photo pair, a video frame).
        error: why this unit cannot be matted (a photo that does not decode).
        align: the alignment result, when aligned.
    """

    key: str
    index: int
    src: np.ndarray | None = None
    bgr: np.ndarray | None = None
    backdrop: np.ndarray | None = None
    meta: Any = None
    error: str | None = None
    align: dict[str, Any] | None = None
    skipped: bool = False  # its outputs exist already (resume)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.src.shape) if self.src is not None else ()


class Source(Protocol):
    """What the pipeline reads."""

    kind: str  # "photos" or "video"
    total: int | None  # units expected (None: unknown, live)

    def units(self, stop: threading.Event) -> Iterator[Unit]: ...

    def close(self) -> None: ...


class Sink(Protocol):
    """What the pipeline writes to."""

    def done(self, unit: Unit) -> bool:
        """Every output of ``unit`` exists already (resume)."""

    def write(self, unit: Unit, prediction: Prediction, row: int) -> None:
        """Queues the outputs of ``unit`` (row ``row`` of a batched prediction)."""

    def fail(self, unit: Unit, message: str) -> None:
        """Records that ``unit`` could not be matted."""

    def skip(self, unit: Unit) -> None:
        """Records that ``unit`` was done already."""

    def flush(self) -> None:
        """Waits for every queued write; raises the first fatal write error."""

    def abort(self) -> None:
        """Stops writing and removes partial outputs (finished ones are kept)."""


@dataclass
class StageTimes:
    """Seconds per stage: ``decode``/``predict``/``encode`` are busy times of each stage's
    threads; ``infer`` is the runner's share of ``predict``; ``wait_decode`` is the model idle
    waiting for input, ``wait_encode`` the model blocked on full encode queues."""

    decode: float = 0.0
    predict: float = 0.0
    infer: float = 0.0
    wait_decode: float = 0.0
    wait_encode: float = 0.0
    encode: dict[str, float] = field(default_factory=dict)
    finalize: float = 0.0


@dataclass
class Counts:
    """How many units went which way."""

    read: int = 0
    matted: int = 0
    skipped: int = 0
    failed: int = 0


# (done, total, unit, outcome, error): outcome is ok, skipped, failed or unmatched.
Progress = Callable[[int, "int | None", "Unit | None", str, "str | None"], None]
_END = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _put(target: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    """Blocks until there is room, unless the job is stopping; False if it stopped."""
    while not stop.is_set():
        try:
            target.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


class _Reader(threading.Thread):
    """Runs the source's iterator on its own thread into a bounded queue."""

    def __init__(self, source: Source, sink: Sink, counts: Counts, times: StageTimes, depth: int,
                 stop: threading.Event) -> None:
        super().__init__(name=f"bgm-{source.kind}-read", daemon=True)
        self.source, self.sink, self.counts, self.times, self.stop = source, sink, counts, times, stop
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=depth)

    def run(self) -> None:
        try:
            started = time.perf_counter()
            for unit in self.source.units(self.stop):
                self.times.decode += time.perf_counter() - started
                self.counts.read += 1
                unit.skipped = unit.error is None and self.sink.done(unit)
                if not _put(self.queue, unit, self.stop):
                    return
                started = time.perf_counter()
            _put(self.queue, _END, self.stop)
        except BaseException as exc:  # handed to the predicting thread, which re-raises it
            _put(self.queue, _Failure(exc), self.stop)

    def units(self) -> Iterator[Unit]:
        while True:
            item = self.queue.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item


def _batches(units: Iterator[Unit], size: int, times: StageTimes) -> Iterator[list[Unit]]:
    """Consecutive units of one shape, ``size`` at most; a unit that failed to decode alone."""
    batch: list[Unit] = []
    waited = time.perf_counter()
    for unit in units:
        times.wait_decode += time.perf_counter() - waited
        alone = unit.error is not None or unit.skipped
        if batch and (alone or unit.shape != batch[0].shape):
            yield batch
            batch = []
        batch.append(unit)
        if alone or len(batch) == size:
            yield batch
            batch = []
        waited = time.perf_counter()
    if batch:
        yield batch


def _predict(predictor: Any, batch: list[Unit], needed: tuple[str, ...]) -> Prediction:
    src = np.stack([unit.src for unit in batch]).transpose(0, 3, 1, 2)
    bgr = np.stack([unit.bgr for unit in batch]).transpose(0, 3, 1, 2)
    return predictor.predict(src, bgr, needed)


def run_pipeline(
    source: Source,
    predictor: Any,
    sink: Sink,
    options: MatteOptions,
    times: StageTimes,
    counts: Counts,
    progress: Progress | None = None,
    fatal_unit_errors: bool = False,
) -> None:
    """Mattes every unit of ``source`` into ``sink``.

    Args:
        predictor: a :class:`~bgm_deploy.predictor.Predictor`, or anything with its
            ``predict`` (a server client; with a ``concurrency`` above 1 its requests run
            that many at a time, results kept in order).
        fatal_unit_errors: a unit that cannot be matted fails the whole job (a video with a
            missing frame is broken) instead of being recorded and skipped (a photo).
        progress: called after each unit with ``(done, total, unit, outcome, error)``.

    Raises:
        whatever stops the job: the source's errors, a fatal unit error, KeyboardInterrupt.
    """
    stop = threading.Event()
    parallel = max(1, int(getattr(predictor, "concurrency", 1)))
    reader = _Reader(source, sink, counts, times, max(options.queue_size, 2 * parallel), stop)
    pool = ThreadPoolExecutor(parallel, thread_name_prefix="bgm-predict") if parallel > 1 else None
    in_flight: deque[tuple[list[Unit], Future[Prediction]]] = deque()
    needed = options.needed()

    def finish(batch: list[Unit], prediction: Prediction | None, error: str | None) -> None:
        for row, unit in enumerate(batch):
            if error is not None:
                if fatal_unit_errors:
                    raise BgmDeployError(error)
                counts.failed += 1
                sink.fail(unit, error)
            else:
                waited = time.perf_counter()
                sink.write(unit, prediction, row)  # type: ignore[arg-type]
                times.wait_encode += time.perf_counter() - waited
                counts.matted += 1
            if progress is not None:
                progress(counts.matted + counts.skipped + counts.failed, source.total, unit,
                         "ok" if error is None else "failed", error)

    def collect(block: bool) -> None:
        while in_flight and (block or in_flight[0][1].done() or len(in_flight) >= parallel):
            batch, future = in_flight.popleft()
            try:
                prediction, error = future.result(), None
            except BgmDeployError as exc:
                prediction, error = None, str(exc)
            times.infer += prediction.seconds if prediction is not None else 0.0
            finish(batch, prediction, error)

    reader.start()
    try:
        for batch in _batches(reader.units(), options.batch, times):
            if batch[0].skipped:
                counts.skipped += 1
                sink.skip(batch[0])
                if progress is not None:
                    progress(counts.matted + counts.skipped + counts.failed, source.total, batch[0], "skipped", None)
                continue
            if batch[0].error is not None:
                finish(batch, None, batch[0].error)
                continue
            if pool is not None:
                in_flight.append((batch, pool.submit(_predict, predictor, batch, needed)))
                collect(block=False)
                continue
            started = time.perf_counter()
            try:
                prediction, error = _predict(predictor, batch, needed), None
            except BgmDeployError as exc:
                prediction, error = None, str(exc)
            times.predict += time.perf_counter() - started
            times.infer += prediction.seconds if prediction is not None else 0.0
            finish(batch, prediction, error)
        collect(block=True)
        sink.flush()
    finally:
        stop.set()  # a reader blocked on a full queue (an early stop or a failure) exits
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        reader.join()
