"""One progress display for every long job (matting photos or footage, bench, export).

On a terminal: a tqdm bar (rate, ETA) on stderr. Otherwise (logs, CI): one plain line at
most every ``every`` seconds and at the end, so a log is readable without carriage returns.
Failures always get their own line; ``quiet`` silences everything else.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm import tqdm


class JobProgress:
    """Progress of a job of ``total`` units (None: unknown, e.g. a live stream).

    Call it with ``(done, total, item, outcome, error)`` after each unit (the matte
    pipeline's progress signature; outcome ``ok``, ``skipped``, ``failed`` or ``unmatched``);
    ``status`` prints a line about a slow phase.

    Args:
        unit: what is counted (``img``, ``frames``).
        stream: where to write (stderr).
        quiet: only failures.
        tty: force the terminal/log behaviour (default: ``stream.isatty()``).
        every: log mode: seconds between lines.
        refresh: terminal mode: seconds between redraws of the bar.
    """

    def __init__(self, unit: str = "img", stream: TextIO | None = None, quiet: bool = False, tty: bool | None = None,
                 every: float = 5.0, refresh: float = 0.2) -> None:
        self.unit = unit
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = self.stream.isatty() if tty is None else tty
        self.every = every
        self.refresh = refresh
        self.started = time.perf_counter()
        self._last = -every
        self._bar: tqdm | None = None

    def status(self, message: str) -> None:
        if not self.quiet:
            self._write(message)

    def __call__(self, done: int, total: int | None, item: Any = None, outcome: str = "ok",
                 error: str | None = None) -> None:
        if error is not None:
            name = getattr(getattr(item, "meta", None), "src", None) or getattr(item, "key", "")
            self._write(f"{outcome.upper()}: {name}: {error}")
        if self.quiet:
            return
        align = getattr(item, "align", None)
        if align and (outcome == "ok" or self.tty is False):
            name = getattr(getattr(item, "meta", None), "src", None) or getattr(item, "key", "")
            self._write(f"{name}: align {align['status'].replace('_', ' ')}, {align['inliers']} inliers")
        if self.tty:
            if self._bar is None:
                self._bar = tqdm(total=total, unit=self.unit, file=self.stream, dynamic_ncols=True, leave=False,
                                 mininterval=self.refresh)
            self._bar.total = total
            self._bar.update(done - self._bar.n)
            return
        elapsed = time.perf_counter() - self.started
        if elapsed - self._last >= self.every or (total and done >= total):
            self._last = elapsed
            self._write(self.line(done, total, elapsed))

    def line(self, done: int, total: int | None, elapsed: float) -> str:
        """The log-mode line: ``12/48 frames 3.10 fps ETA 00:11``."""
        rate = done / elapsed if elapsed > 0 else 0.0
        per = "fps" if self.unit == "frames" else f"{self.unit}/s"
        eta = "--:--"
        if total and rate > 0:
            left = max(total - done, 0) / rate
            eta = f"{int(left) // 60:02d}:{int(left) % 60:02d}"
        of = f"/{total}" if total else ""
        return f"{done}{of} {self.unit} {rate:.2f} {per} ETA {eta}"

    def _write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


