"""Photos as a matte source: pairs of (source, background) images, and their image outputs.

Sources and backgrounds are paired by relative path (stem), recursively, or one background
serves every source; each pair is one :class:`~bgm_deploy.matte.pipeline.Unit`, decoded by a
pool of threads ahead of the model, in order. Outputs go to ``OUT/<kind>/<relative
name>.<ext>``, each written atomically; a pair that fails (undecodable image, size mismatch)
is reported and the job goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model.errors import BgmDeployError, ImageError, UsageError

from ..images import IMAGE_SUFFIXES, load_image, resize_rgb, save_image
from ..predictor import Prediction
from .align import align_background
from .options import MatteOptions
from .pipeline import StageTimes, Unit
from .render import parse_colour, render_output

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pair:
    """One job: a source, its background and the relative output name (no suffix)."""

    src: Path
    bgr: Path
    name: str


@dataclass
class PairResult:
    """The outcome of one source image."""

    src: str
    bgr: str | None
    status: str  # "ok", "skipped", "failed" or "unmatched"
    error: str | None = None
    outputs: list[str] = field(default_factory=list)
    size: tuple[int, int] | None = None  # (width, height) processed
    seconds: float = 0.0  # inference time
    align: dict[str, Any] | None = None


@dataclass
class PairPlan:
    """Sources matched with backgrounds, before anything is decoded."""

    pairs: list[Pair]
    unmatched_sources: list[Path]
    unmatched_backgrounds: list[Path]
    ambiguous: list[tuple[Path, list[Path]]]
    ignored: list[Path]


def _list_images(root: Path) -> tuple[list[Path], list[Path]]:
    images, ignored = [], []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue  # hidden files, and our own .part temporaries
        (images if path.suffix.lower() in IMAGE_SUFFIXES else ignored).append(path)
    return images, ignored


def _output_names(root: Path, paths: list[Path]) -> dict[Path, str]:
    """Relative output name per source; ``a/x.jpg`` and ``a/x.png`` both present keep their suffix."""
    stems: dict[str, int] = {}
    for path in paths:
        stem = path.relative_to(root).with_suffix("").as_posix()
        stems[stem] = stems.get(stem, 0) + 1
    names = {}
    for path in paths:
        stem = path.relative_to(root).with_suffix("").as_posix()
        names[path] = stem if stems[stem] == 1 else f"{stem}_{path.suffix.lstrip('.').lower()}"
    return names


def find_pairs(src: str | Path, bgr: str | Path) -> PairPlan:
    """Matches sources with backgrounds.

    ``src`` and ``bgr`` are files or directories: file+file is one pair; a directory of
    sources with one background file uses it for all; two directories are matched by
    relative path without suffix (``a/b/x.jpg`` ↔ ``a/b/x.png``), recursively.

    Raises:
        UsageError: a path does not exist, src is a file but bgr a directory, or src is a
            directory with no images.
    """
    src, bgr = Path(src), Path(bgr)
    for label, path in (("--src", src), ("--bgr", bgr)):
        if not path.exists():
            raise UsageError(f"{label} {path} does not exist (give an image file or a directory of images)")
    if src.is_file():
        if bgr.is_dir():
            raise UsageError(f"--src {src} is a file but --bgr {bgr} is a directory; give the background image file")
        return PairPlan([Pair(src, bgr, src.stem)], [], [], [], [])
    sources, ignored = _list_images(src)
    if not sources:
        raise UsageError(f"--src directory {src} contains no images (looked for {', '.join(IMAGE_SUFFIXES)}, recursively)")
    names = _output_names(src, sources)
    if bgr.is_file():
        return PairPlan([Pair(path, bgr, names[path]) for path in sources], [], [], [], ignored)
    backgrounds, ignored_bgr = _list_images(bgr)
    by_stem: dict[str, list[Path]] = {}
    for path in backgrounds:
        by_stem.setdefault(path.relative_to(bgr).with_suffix("").as_posix(), []).append(path)
    pairs, unmatched, ambiguous, used = [], [], [], set()
    for path in sources:
        candidates = by_stem.get(path.relative_to(src).with_suffix("").as_posix(), [])
        if len(candidates) == 1:
            pairs.append(Pair(path, candidates[0], names[path]))
            used.add(candidates[0])
        elif candidates:
            ambiguous.append((path, candidates))
            used.update(candidates)
        else:
            unmatched.append(path)
    unused = [path for path in backgrounds if path not in used]
    return PairPlan(pairs, unmatched, unused, ambiguous, ignored + ignored_bgr)


def output_paths(output: Path, name: str, options: MatteOptions) -> dict[str, Path]:
    """Where each requested output of one pair goes: ``OUT/<kind>/<name>.<ext>``."""
    return {kind: output / kind / f"{name}.{options.format_of(kind, 'photos')}" for kind in options.outputs}


def existing_outputs(plan: PairPlan, output: Path, options: MatteOptions) -> list[Path]:
    """Outputs of the planned pairs that exist already."""
    return [path for pair in plan.pairs for path in output_paths(output, pair.name, options).values() if path.exists()]


class _SharedImage:
    """An image decoded once by whichever decode thread needs it first."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._image: np.ndarray | None = None

    def get(self) -> np.ndarray:
        with self._lock:
            if self._image is None:
                self._image = load_image(self.path)  # a decode error propagates to each pair
                self._image.flags.writeable = False
            return self._image


class PhotoSource:
    """The planned pairs, decoded by ``options.workers`` threads ahead of the model, in order."""

    kind = "photos"

    def __init__(self, plan: PairPlan, options: MatteOptions, backdrop: str) -> None:
        self.plan = plan
        self.options = options
        self.total: int | None = len(plan.pairs)
        one_background = len({pair.bgr for pair in plan.pairs}) == 1
        self._shared = _SharedImage(plan.pairs[0].bgr) if plan.pairs and one_background else None
        self._backdrop_colour = parse_colour(backdrop)
        self._backdrop_image = None if self._backdrop_colour is not None else _SharedImage(Path(backdrop))

    def units(self, stop: threading.Event) -> Iterator[Unit]:
        depth = 2 * self.options.workers
        with ThreadPoolExecutor(self.options.workers, thread_name_prefix="bgm-decode") as pool:
            pending = iter(enumerate(self.plan.pairs))
            ahead: deque[Future[Unit]] = deque()
            try:
                while True:
                    while len(ahead) < depth:
                        item = next(pending, None)
                        if item is None:
                            break
                        ahead.append(pool.submit(self._decode, *item))
                    if not ahead or stop.is_set():
                        return
                    yield ahead.popleft().result()
            finally:
                for future in ahead:
                    future.cancel()

    def _decode(self, index: int, pair: Pair) -> Unit:
        unit = Unit(pair.name, index, meta=pair)
        try:
            src = load_image(pair.src)
            bgr = self._shared.get() if self._shared is not None else load_image(pair.bgr)
            if self.options.resize is not None:
                src, bgr = resize_rgb(src, self.options.resize), resize_rgb(bgr, self.options.resize)
            if self.options.align:
                bgr, result = align_background(src, bgr)
                unit.align = result.to_dict()
                log.info("%s: %s", pair.src, result.describe())
            if src.shape != bgr.shape:
                raise UsageError(
                    f"size mismatch: src {pair.src} is {src.shape[1]}x{src.shape[0]} but bgr {pair.bgr} is "
                    f"{bgr.shape[1]}x{bgr.shape[0]}; pass --resize WxH (both are resized) or --align"
                )
            unit.src, unit.bgr = src, bgr
            if "com" in self.options.outputs:
                unit.backdrop = self._backdrop_for(src.shape)
        except BgmDeployError as exc:
            unit.error = str(exc)
        return unit

    def _backdrop_for(self, shape: tuple[int, ...]) -> np.ndarray:
        if self._backdrop_colour is not None:
            backdrop = np.empty(shape, np.uint8)
            backdrop[:] = self._backdrop_colour
            return backdrop
        assert self._backdrop_image is not None
        return resize_rgb(self._backdrop_image.get(), (shape[1], shape[0]))

    def close(self) -> None:
        pass


class PhotoSink:
    """Image files per pair, encoded by ``options.workers`` threads; a report row per pair."""

    def __init__(self, output: Path, options: MatteOptions, results: list[PairResult], times: StageTimes) -> None:
        self.output = output
        self.options = options
        self.results = results
        self.times = times
        self._pool = ThreadPoolExecutor(options.workers, thread_name_prefix="bgm-encode")
        self._encoding: deque[tuple[PairResult, Future[list[str]]]] = deque()
        self._depth = 2 * options.workers
        self._lock = threading.Lock()
        times.encode.setdefault("images", 0.0)

    @staticmethod
    def _pair(unit: Unit) -> Pair:
        return unit.meta

    def done(self, unit: Unit) -> bool:
        if not self.options.skip_existing:
            return False
        return all(path.exists() for path in output_paths(self.output, unit.key, self.options).values())

    def skip(self, unit: Unit) -> None:
        pair = self._pair(unit)
        paths = output_paths(self.output, unit.key, self.options)
        self.results.append(PairResult(str(pair.src), str(pair.bgr), "skipped", outputs=[str(p) for p in paths.values()]))

    def fail(self, unit: Unit, message: str) -> None:
        pair = self._pair(unit)
        self.results.append(PairResult(str(pair.src), str(pair.bgr), "failed", message, align=unit.align))

    def write(self, unit: Unit, prediction: Prediction, row: int) -> None:
        pair = self._pair(unit)
        assert unit.src is not None
        result = PairResult(str(pair.src), str(pair.bgr), "ok", size=(unit.src.shape[1], unit.src.shape[0]),
                            seconds=prediction.seconds, align=unit.align)
        images = {kind: render_output(kind, prediction, row, unit.backdrop) for kind in self.options.outputs}
        paths = output_paths(self.output, unit.key, self.options)
        self._encoding.append((result, self._pool.submit(self._encode, images, paths)))
        self._collect(block=False)

    def _encode(self, images: dict[str, np.ndarray], paths: dict[str, Path]) -> list[str]:
        started = time.perf_counter()
        for kind, path in paths.items():
            save_image(path, images[kind])
        with self._lock:
            self.times.encode["images"] += time.perf_counter() - started
        return [str(path) for path in paths.values()]

    def _collect(self, block: bool) -> None:
        while self._encoding and (block or self._encoding[0][1].done() or len(self._encoding) > self._depth):
            result, future = self._encoding.popleft()
            try:
                result.outputs = future.result()
            except ImageError as exc:
                result.status, result.error = "failed", str(exc)
            self.results.append(result)

    def flush(self) -> None:
        self._collect(block=True)
        self._pool.shutdown(wait=True)

    def abort(self) -> None:
        """Drops queued writes (a write in progress finishes or leaves no file: atomic) and
        records the pairs whose files were written."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        for result, future in self._encoding:
            if future.cancelled():
                continue
            try:
                result.outputs = future.result()
            except ImageError as exc:
                result.status, result.error = "failed", str(exc)
            self.results.append(result)
        self._encoding.clear()
