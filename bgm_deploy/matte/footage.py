"""Footage as a matte source: a video file, an image sequence or a live stream, and its outputs.

Each decoded frame, with its background (a still plate or a frame of a background video)
and its backdrop, is one :class:`~bgm_deploy.matte.pipeline.Unit`. Outputs are one video
per kind (``OUT/<kind>.mp4``, written to a hidden temp file and renamed only when complete,
the source's audio remuxed) or one PNG sequence per kind (``OUT/<kind>/``, resumable).

Frame count, size, rotation, frame rate and timestamps (variable rate included) are kept.
A job's state is recorded in ``OUT/.bgm-matte.json``: per output kind, how many frames it
holds and whether it is complete, so a resumed job (``skip_existing``) redoes a partial
video and continues a partial PNG sequence, and never takes a ``max_frames`` preview for a
finished clip.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from exporters.atomic import atomic_write_text
from model.errors import UsageError, VideoError

from ..images import IMAGE_SUFFIXES, load_image, resize_rgb
from ..predictor import Prediction, Predictor
from .align import align_background, warp_background
from .options import LAYOUTS, MatteOptions
from .pipeline import StageTimes, Unit
from .render import parse_colour, render_output
from .video_io import (
    Frame,
    SequenceWriter,
    Source,
    StreamInfo,
    VideoFormat,
    VideoSource,
    VideoWriter,
    check_format,
    is_live,
    is_video_path,
    open_source,
)

log = logging.getLogger(__name__)

MANIFEST = ".bgm-matte.json"
MANIFEST_SCHEMA_VERSION = 1


def is_video_job(src: str | Path, bgr: str | Path | None = None, sequence: bool = False,
                 src_format: str | None = None) -> bool:
    """Whether ``matte`` treats ``src`` as footage: a video file (by suffix), a URL or device
    (or any source with an FFmpeg ``src_format``), a folder of numbered frames when
    ``sequence`` is set, or any source with a background video."""
    return sequence or src_format is not None or is_video_path(src) or (bgr is not None and is_video_path(bgr))


class Plate:
    """A background (or backdrop) per frame: a still image or a video in step with the source."""

    def __init__(self, spec: str | Path, info: StreamInfo, role: str, options: MatteOptions) -> None:
        self.spec = str(spec)
        self.role = role
        self.video: VideoSource | None = None
        self.still: np.ndarray | None = None
        path = Path(self.spec)
        size = options.resize or info.size
        if path.suffix.lower() in IMAGE_SUFFIXES:
            self.still = load_image(path)
            if options.resize is not None:
                self.still = resize_rgb(self.still, options.resize)
            have = (self.still.shape[1], self.still.shape[0])
            if have != size:
                raise UsageError(f"{role} {path} is {have[0]}x{have[1]} but the source is {size[0]}x{size[1]}; "
                                 f"resize the {role} image to {size[0]}x{size[1]} (or pass --resize WxH for both)")
            self.still.flags.writeable = False
            return
        if not is_video_path(self.spec) or is_live(self.spec):
            raise UsageError(f"{role} {self.spec} is neither an image ({', '.join(IMAGE_SUFFIXES)}) nor a video file "
                             f"(a still plate or a video of the source's size, rate and length)")
        self.video = VideoSource(self.spec, options=None, live=False)
        vinfo = self.video.info
        problem = None
        if vinfo.size != info.size and options.resize is None:  # with --resize both are resized, as a still plate
            problem = f"is {vinfo.width}x{vinfo.height} but the source is {info.width}x{info.height}; give a {role} of the same size"
        elif vinfo.rate and info.rate and abs(float(vinfo.rate) / float(info.rate) - 1) > 0.01:
            problem = (f"runs at {float(vinfo.rate):.3f} fps but the source at {float(info.rate):.3f} fps; give a {role} "
                       "of the same frame rate")
        elif vinfo.frames and info.frames and vinfo.frames != info.frames and options.max_frames is None:
            problem = f"has {vinfo.frames} frames but the source {info.frames}; give a {role} of the same length"
        if problem:
            self.video.close()
            raise UsageError(f"{role} video {self.spec} {problem}")
        self._resize = options.resize
        self._frames = self.video.frames()

    def next(self, frame: Frame) -> np.ndarray:
        if self.still is not None:
            return self.still
        image = next(self._frames, None)
        if image is None:
            raise VideoError(f"{self.role} video {self.spec} ended at frame {frame.index}, before the source; "
                             f"give a {self.role} of the same length")
        return image.rgb if self._resize is None else resize_rgb(image.rgb, self._resize)

    def close(self) -> None:
        if self.video is not None:
            self.video.close()


class FootageSource:
    """Frames of the source with their background (and backdrop), as pipeline units."""

    kind = "video"

    def __init__(self, source: Source, plate: Plate, backdrop: Plate | None, colour: np.ndarray | None,
                 options: MatteOptions) -> None:
        self.source, self.plate, self.backdrop, self.colour, self.options = source, plate, backdrop, colour, options
        info = source.info
        self.total: int | None = info.frames
        if options.max_frames is not None:
            self.total = min(info.frames, options.max_frames) if info.frames else None
        self.align_results: list[dict[str, Any]] = []
        # --align-mode clip: the first frame's fit, reused for every frame: the warped plate and
        # the homography (None when the fit was not applied) a background video's frames move by.
        self._clip_fit: tuple[np.ndarray, np.ndarray | None] | None = None
        self.lost: int = 0  # frames the header lists that could not be decoded
        self.lost_reason: str | None = None

    def units(self, stop: threading.Event) -> Iterator[Unit]:
        info = self.source.info
        index = 0
        try:
            for frame in self.source.frames():
                if stop.is_set():
                    return
                src = frame.rgb if self.options.resize is None else resize_rgb(frame.rgb, self.options.resize)
                bgr = self._align(src, self.plate.next(frame))
                backdrop = None
                if "com" in self.options.outputs:
                    backdrop = self.backdrop.next(frame) if self.backdrop is not None else self.colour
                yield Unit(frame.name, frame.index, src, bgr, backdrop, meta=frame)
                index += 1
                if self.options.max_frames is not None and index >= self.options.max_frames:
                    return
        except VideoError as exc:
            if not self.options.allow_partial:
                of = f" of the {info.frames} frames its header lists" if info.frames else ""
                raise VideoError(f"{exc}; pass --allow-partial to keep the {index}{of} decoded before it") from None
            self.lost_reason = str(exc)
            log.warning("%s; keeping the %d frames decoded before it (--allow-partial)", exc, index)
        if info.kind == "video" and info.frames and index < info.frames and self.options.max_frames is None:
            self.lost = info.frames - index
            self.lost_reason = self.lost_reason or (
                f"{info.path}: decoded {index} of the {info.frames} frames its header lists (truncated or corrupt)")
            if not self.options.allow_partial:
                raise VideoError(f"{self.lost_reason}; re-encode or re-download it, or pass --allow-partial to keep "
                                 f"the {index} decoded frames")

    def _align(self, src: np.ndarray, bgr: np.ndarray) -> np.ndarray:
        how = self.options.align_how
        if how == "off":
            return bgr
        if how == "clip" and self._clip_fit is not None:
            aligned, homography = self._clip_fit
            if self.plate.still is not None:
                return aligned  # the still plate, warped once
            # A background video: each of its frames moved by the clip's one homography.
            return bgr if homography is None else warp_background(src, bgr, homography)[0]
        aligned, result = align_background(src, bgr)
        self.align_results.append(result.to_dict())
        if how == "clip":
            log.info("background aligned once for the clip: %s", result.describe())
            fitted = result.applied and result.homography is not None
            self._clip_fit = (aligned, np.asarray(result.homography) if fitted else None)
        return aligned

    def close(self) -> None:
        for item in (self.plate, self.backdrop, self.source):
            if item is not None:
                item.close()


def output_path(output: Path, kind: str, fmt: VideoFormat) -> Path:
    """``OUT/<kind><suffix>`` for a video, ``OUT/<kind>/`` for a PNG sequence."""
    return output / f"{kind}{fmt.suffix}"


def read_manifest(output: Path) -> dict[str, Any]:
    """The job state of an output folder (``{}`` when there is none or it is unreadable)."""
    path = output / MANIFEST
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_manifest(output: Path, outputs: dict[str, dict[str, Any]], source: str) -> None:
    data = read_manifest(output)
    data.update({"schema_version": MANIFEST_SCHEMA_VERSION, "source": source})
    data.setdefault("outputs", {}).update(outputs)
    atomic_write_text(output / MANIFEST, json.dumps(data, indent=2, sort_keys=True))


@dataclass
class OutputPlan:
    """Per kind: its format, its path, and whether it is done already."""

    formats: dict[str, VideoFormat]
    todo: list[str]
    done: dict[str, str]


def plan_outputs(output: Path, options: MatteOptions, size: tuple[int, int]) -> OutputPlan:
    """Checks every output's format here (encoder present, alpha where needed) and decides
    what to write: complete outputs are kept with ``skip_existing``, existing ones refused
    without ``overwrite``.

    Raises:
        UsageError: outputs exist without overwrite/skip_existing, or a format cannot hold a kind.
        RuntimeUnavailableError: the installed FFmpeg lacks an encoder.
    """
    formats = {kind: check_format(kind, options.format_of(kind, "video"), LAYOUTS[kind], size)
               for kind in options.outputs}
    state = read_manifest(output).get("outputs", {})
    todo, done, existing = [], {}, []
    for kind, fmt in formats.items():
        path = output_path(output, kind, fmt)
        record = state.get(kind, {})
        present = path.is_dir() and any(p.suffix == ".png" for p in path.iterdir()) if fmt.is_sequence else path.exists()
        if not present:
            todo.append(kind)
        elif options.skip_existing:
            # Complete only if the manifest says so (a video without a record: an older run, taken as
            # complete) and, for a sequence, every frame it recorded is still there.
            complete = record.get("complete", not fmt.is_sequence)
            if fmt.is_sequence and complete:
                complete = sum(1 for p in path.iterdir() if p.suffix == ".png") == record.get("frames")
            if complete and record.get("path", str(path)) == str(path):
                done[kind] = str(path)
            else:
                todo.append(kind)
        elif options.overwrite:
            todo.append(kind)
        else:
            existing.append(path)
    if existing:
        raise UsageError(f"output {existing[0]} already exists; pass --overwrite to replace it or --skip-existing to "
                         "keep finished outputs (and finished frames of PNG sequences)")
    return OutputPlan(formats, todo, done)


class _Encoder(threading.Thread):
    """Renders and encodes one output from its own bounded queue."""

    def __init__(self, kind: str, writer: SequenceWriter | VideoWriter, options: MatteOptions, times: StageTimes,
                 stop: threading.Event) -> None:
        super().__init__(name=f"bgm-video-encode-{kind}", daemon=True)
        self.kind, self.writer, self.times, self.stop = kind, writer, times, stop
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=options.queue_size)
        self.error: BaseException | None = None
        times.encode[kind] = 0.0

    def run(self) -> None:
        try:
            while True:
                item = self._get()
                if item is None:  # stopping: leave without finishing the file
                    return
                if item == "end":
                    break
                unit, prediction, row = item
                started = time.perf_counter()
                self.writer.write(unit.meta, render_output(self.kind, prediction, row, unit.backdrop))
                self.times.encode[self.kind] += time.perf_counter() - started
            started = time.perf_counter()
            self.writer.flush()
            self.times.encode[self.kind] += time.perf_counter() - started
        except BaseException as exc:
            self.error = exc
            self.stop.set()

    def _get(self) -> Any:
        while not self.stop.is_set():
            try:
                return self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
        return None

    def put(self, item: Any) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        if self.error is not None:
            raise self.error


class FootageSink:
    """One encoder thread per output kind; videos renamed into place by :meth:`finish`."""

    def __init__(self, output: Path, plan: OutputPlan, info: StreamInfo, options: MatteOptions,
                 times: StageTimes, size: tuple[int, int]) -> None:
        self.output, self.plan, self.options, self.times = output, plan, options, times
        self.stop = threading.Event()
        self.writers: dict[str, SequenceWriter | VideoWriter] = {}
        stream = info if size == info.size else _resized(info, size)
        try:
            for kind in plan.todo:
                fmt = plan.formats[kind]
                path = output_path(output, kind, fmt)
                if fmt.is_sequence:
                    if options.overwrite:
                        SequenceWriter.clear(path)
                    self.writers[kind] = SequenceWriter(path, options.skip_existing)
                else:
                    self.writers[kind] = VideoWriter(path, fmt, LAYOUTS[kind], stream, options.crf_value,
                                                     options.preset_value)
        except BaseException:
            self.abort()
            raise
        self.encoders = {kind: _Encoder(kind, writer, options, times, self.stop) for kind, writer in self.writers.items()}
        for encoder in self.encoders.values():
            encoder.start()
        self._all_sequences = all(isinstance(w, SequenceWriter) for w in self.writers.values())

    def done(self, unit: Unit) -> bool:
        return self._all_sequences and all(writer.has(unit.meta) for writer in self.writers.values())

    def skip(self, unit: Unit) -> None:
        for writer in self.writers.values():
            writer.skipped += 1

    def fail(self, unit: Unit, message: str) -> None:
        raise VideoError(message)  # a video with a missing frame is broken: the job fails

    def write(self, unit: Unit, prediction: Prediction, row: int) -> None:
        for encoder in self.encoders.values():
            encoder.put((unit, prediction, row))
        self._raise_errors()

    def _raise_errors(self) -> None:
        for encoder in self.encoders.values():
            if encoder.error is not None:
                raise encoder.error

    def flush(self) -> None:
        for encoder in self.encoders.values():
            encoder.put("end")
        for encoder in self.encoders.values():
            encoder.join()
        self._raise_errors()

    def finish(self, audio_from: Source | None, complete: bool, source: str,
               trim_audio: bool = False) -> tuple[dict[str, str], list[str]]:
        """Renames videos into place (audio remuxed; ``trim_audio``: cut at the video's end, for
        a run that stopped before the source did) and records the outputs' state.

        Returns:
            ``{kind: path}`` and notes (an audio track a container could not take)."""
        outputs, state, notes = {}, {}, []
        for kind, writer in self.writers.items():
            writer.finish(audio_from, trim_audio)
            if isinstance(writer, VideoWriter) and writer.audio_note:
                notes.append(writer.audio_note)
            outputs[kind] = str(writer.final_path)
            state[kind] = {"path": str(writer.final_path), "frames": writer.written + writer.skipped,
                           "complete": complete}
        write_manifest(self.output, state, source)
        self.writers = {}
        return outputs, notes

    def frames_out(self) -> dict[str, int]:
        return {kind: writer.written + writer.skipped for kind, writer in self.writers.items()}

    def abort(self) -> None:
        self.stop.set()
        for encoder in getattr(self, "encoders", {}).values():
            encoder.join()
        for writer in self.writers.values():
            writer.abort()
        if any(isinstance(w, SequenceWriter) for w in self.writers.values()):
            state = {kind: {"path": str(w.final_path), "frames": w.written + w.skipped, "complete": False}
                     for kind, w in self.writers.items() if isinstance(w, SequenceWriter)}
            try:
                write_manifest(self.output, state, "")
            except OSError:
                pass  # the folder is going away or unwritable: the frames themselves are whole
        self.writers = {}


def _resized(info: StreamInfo, size: tuple[int, int]) -> StreamInfo:
    return replace(info, width=size[0], height=size[1])


def open_footage(src: str | Path, bgr: str | Path, options: MatteOptions) -> FootageSource:
    """Opens the source, its background and the backdrop, checking sizes, rates and lengths.

    Raises:
        UsageError, VideoError, RuntimeUnavailableError (PyAV missing).
    """
    source = open_source(src, options.rate, options.src_format, options.src_options, threads=options.workers)
    plate = backdrop = None
    try:
        info = source.info
        if info.frames == 0:
            raise VideoError(f"{src} has no frames; give a clip with at least one frame")
        plate = Plate(bgr, info, "background", options)
        colour = None
        if "com" in options.outputs:
            rgb = parse_colour(options.backdrop_value)
            if rgb is not None:
                width, height = options.resize or info.size
                colour = np.empty((height, width, 3), np.uint8)
                colour[:] = rgb
            else:
                backdrop = Plate(options.backdrop_value, info, "backdrop", options)
        return FootageSource(source, plate, backdrop, colour, options)
    except BaseException:
        for item in (plate, backdrop, source):
            if item is not None:
                item.close()
        raise


@dataclass
class MattedFrame:
    """One matted frame from :func:`iter_mattes`: the decoded source and the predictor's maps
    (float32 in 0..1, as :class:`~bgm_deploy.predictor.Prediction`)."""

    index: int
    pts: int
    time: float
    src: np.ndarray
    pha: np.ndarray | None = None
    fgr: np.ndarray | None = None
    err: np.ndarray | None = None
    ref: np.ndarray | None = None


def iter_mattes(src: str | Path, bgr: str | Path, predictor: Predictor, outputs: tuple[str, ...] = ("pha", "fgr"),
                options: MatteOptions | None = None) -> Iterator[MattedFrame]:
    """Mattes a video file, image sequence or live source frame by frame (live use); stop
    early by breaking out of the loop. ``options``: resize, align, rate, src_format,
    src_options, max_frames apply.

    Raises:
        UsageError, VideoError, RuntimeUnavailableError (PyAV missing).
    """
    options = options or MatteOptions()
    bad = [name for name in outputs if name not in ("pha", "fgr", "err", "ref")]
    if bad:
        raise UsageError(f"outputs={','.join(outputs)!r} is not valid here; choose from pha, fgr, err, ref")
    footage = open_footage(src, bgr, options)
    stop = threading.Event()
    try:
        for unit in footage.units(stop):
            prediction = predictor.predict(unit.src, unit.bgr, tuple(outputs))
            frame: Frame = unit.meta
            maps = {name: getattr(prediction, name) for name in outputs}
            yield MattedFrame(frame.index, frame.pts, frame.time, unit.src, **maps)
    finally:
        stop.set()
        footage.close()
