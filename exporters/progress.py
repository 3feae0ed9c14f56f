"""Progress lines for long export stages: a line when a stage starts, a heartbeat while it
runs (tracing and simplifying take 10-60 s), and its duration when it ends."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

Progress = Callable[[str], None]
HEARTBEAT_SECONDS = 10.0


@contextlib.contextmanager
def stage(say: Progress, name: str, start_message: str, every: float = HEARTBEAT_SECONDS) -> Iterator[dict[str, float]]:
    """Prints ``name: start_message``, then ``name: still running (N s)`` every ``every``
    seconds until the block ends. Yields a dict whose ``"seconds"`` is set on exit."""
    say(f"{name}: {start_message}")
    done = threading.Event()
    started = time.perf_counter()
    timing: dict[str, float] = {}

    def beat() -> None:
        while not done.wait(every):
            say(f"{name}: still running ({time.perf_counter() - started:.0f} s)")

    thread = threading.Thread(target=beat, name=f"bgm-progress-{name}", daemon=True)
    thread.start()
    try:
        yield timing
    finally:
        done.set()
        thread.join()
        timing["seconds"] = time.perf_counter() - started
