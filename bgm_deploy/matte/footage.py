"""Video matting: a video file, an image sequence or a live stream to alpha/foreground/composite videos.

``matte_video(src, bgr, output, model=...)`` runs a pipeline of three stages joined by
bounded queues, so that the model never waits on I/O and memory stays flat whatever the
clip's length::

    decode thread ──(queue: batches)──> predictor (calling thread) ──(queue per output)──> encode threads

Frame count, size, frame rate and timestamps (variable frame rate included) are kept; a
rotated clip is decoded upright; the audio stream is remuxed untouched into video outputs.
Video files appear only when complete (temporary file, then rename); PNG sequences resume
with ``skip_existing``. ``iter_mattes`` is the same decode → predict path as a generator,
for live use.
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exporters.atomic import atomic_write_text
from model.config import ModelConfig
from model.errors import UsageError, VideoError

from .align import align_background, import_cv2
from .images import IMAGE_SUFFIXES, load_image, to_uint8
from .predictor import Prediction, Predictor
from .video_io import (
    FORMATS,
    Frame,
    SequenceWriter,
    Source,
    StreamInfo,
    VideoFormat,
    VideoSource,
    VideoWriter,
    check_format,
    import_av,
    is_live,
    is_video_path,
    open_source,
)

log = logging.getLogger(__name__)

REPORT_SCHEMA_VERSION = 1
# Output kinds: the predictor's maps, a composite over a backdrop, and the foreground with
# its alpha as a real alpha channel.
OUTPUT_KINDS = ("pha", "fgr", "com", "rgba", "err", "ref")
LAYOUTS = {"pha": "gray", "fgr": "rgb", "com": "rgb", "rgba": "rgba", "err": "gray", "ref": "gray"}
# Predictor outputs each kind needs.
NEEDS = {"pha": ("pha",), "fgr": ("fgr",), "com": ("pha", "fgr"), "rgba": ("pha", "fgr"), "err": ("err",),
         "ref": ("ref",)}
# On a 2-core CPU every stage shares the cores with the model, so encoding is not free even
# when it overlaps: benchmarks/results/video.json measured the pipeline's extra CPU per HD frame
# (decode + pha + fgr) at 131 ms with x264 "veryfast" (end to end 0.74x the model alone) and
# 32 ms with "ultrafast" (0.97x), for files ~2-3x larger. Real time first: ultrafast by default.
# ProRes 4444 costs more than the model itself, so the alpha-carrying default is a PNG sequence.
DEFAULT_PRESET = "ultrafast"
DEFAULT_FORMATS = {"pha": "h264", "fgr": "h264", "com": "h264", "rgba": "png", "err": "h264", "ref": "h264"}
DEFAULT_BACKDROP = "120,255,155"  # the green the original project composites over
ALIGN_MODES = ("off", "clip", "frame")


@dataclass(frozen=True)
class VideoOptions:
    """How ``matte_video`` runs (everything except what to read, where to write, and the model).

    Attributes:
        outputs: any of ``pha``, ``fgr``, ``com`` (over ``backdrop``), ``rgba`` (foreground
            with alpha), ``err``, ``ref``.
        formats: per output, one of :data:`bgm_deploy.video_io.FORMATS` (``h264``, ``ffv1``,
            ``prores``, ``vp9``, ``h264-nvenc``, ``png``); unnamed ones use :data:`DEFAULT_FORMATS`.
        crf: quality of lossy formats (H.264 CRF; VP9 and NVENC are mapped from it).
        preset: x264 preset: ``ultrafast`` (default: the cheapest, largest files), ``veryfast``,
            ... ``medium`` (smaller files, more CPU taken from the model).
        batch: frames per predictor call.
        queue_size: batches waiting in each queue (bounds memory).
        backdrop: what ``com`` composites over: a colour ``R,G,B`` or ``#rrggbb``, an image, or
            a video of the same size and length.
        align: ``off``; ``clip`` aligns the still background to the first frame once (one
            homography for the whole clip, ~0.1-0.5 s); ``frame`` aligns it to every frame
            (follows a moving camera; adds the alignment time, ~0.1-0.5 s, to every frame).
        audio: carry the source's audio stream into video outputs.
        rate: frames per second of an image-sequence source.
        src_format: FFmpeg input format for a capture device (e.g. ``v4l2``); makes the source live.
        src_options: FFmpeg demuxer options for the source (e.g. ``{"rtsp_transport": "tcp"}``).
        max_frames: stop after this many frames (live sources, previews).
        overwrite: replace existing outputs.
        skip_existing: keep finished outputs: complete videos, and existing frames of PNG sequences.
        padding: ``replicate`` or ``reflect`` padding to the model's multiple of 4.
    """

    outputs: tuple[str, ...] = ("pha", "fgr")
    formats: dict[str, str] = field(default_factory=dict)
    crf: int = 18
    preset: str = DEFAULT_PRESET
    batch: int = 1
    queue_size: int = 4
    backdrop: str = DEFAULT_BACKDROP
    align: str = "off"
    audio: bool = True
    rate: float | None = None
    src_format: str | None = None
    src_options: dict[str, str] = field(default_factory=dict)
    max_frames: int | None = None
    overwrite: bool = False
    skip_existing: bool = False
    padding: str = "replicate"

    def __post_init__(self) -> None:
        unknown = [name for name in self.outputs if name not in OUTPUT_KINDS]
        if unknown or not self.outputs or len(set(self.outputs)) != len(self.outputs):
            raise UsageError(f"outputs={','.join(self.outputs)!r} is not valid; choose distinct names from "
                             f"{', '.join(OUTPUT_KINDS)}")
        stray = [kind for kind in self.formats if kind not in self.outputs]
        if stray:
            raise UsageError(f"formats name {', '.join(stray)}, which is not among outputs {','.join(self.outputs)}")
        bad = {kind: name for kind, name in self.formats.items() if name not in FORMATS}
        if bad:
            raise UsageError(f"format {', '.join(f'{k}={v}' for k, v in bad.items())} is not valid; "
                             f"valid: {', '.join(FORMATS)}")
        if not 0 <= self.crf <= 51:
            raise UsageError(f"crf={self.crf!r} is not valid; it must be in 0..51 (lower is better, 18 default)")
        if self.batch < 1 or self.queue_size < 1:
            raise UsageError(f"batch={self.batch} and queue_size={self.queue_size} must both be >= 1")
        if self.align not in ALIGN_MODES:
            raise UsageError(f"align={self.align!r} is not valid; valid: {', '.join(ALIGN_MODES)}")
        if self.rate is not None and self.rate <= 0:
            raise UsageError(f"rate={self.rate!r} is not valid; give frames per second > 0")
        if self.max_frames is not None and self.max_frames < 1:
            raise UsageError(f"max_frames={self.max_frames!r} is not valid; it must be >= 1")
        if self.overwrite and self.skip_existing:
            raise UsageError("overwrite and skip_existing exclude each other; "
                             "pass one of --overwrite / --skip-existing")

    def format_of(self, kind: str) -> str:
        return self.formats.get(kind, DEFAULT_FORMATS[kind])


def parse_formats(text: str | None, outputs: tuple[str, ...] = OUTPUT_KINDS) -> dict[str, str]:
    """``"pha=ffv1,rgba=prores"`` (or just ``"ffv1"`` for every one of ``outputs``) → ``{kind: format}``."""
    if not text:
        return {}
    if "=" not in text:
        return {kind: text.strip() for kind in outputs}
    result = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, sep, name = item.partition("=")
        if not sep or kind.strip() not in OUTPUT_KINDS:
            raise UsageError(f"--format {text!r} is not valid; use FORMAT or KIND=FORMAT pairs (pha=ffv1,rgba=prores), "
                             f"kinds: {', '.join(OUTPUT_KINDS)}")
        result[kind.strip()] = name.strip()
    return result


def is_video_job(src: str | Path, bgr: str | Path | None = None, sequence: bool = False,
                 src_format: str | None = None) -> bool:
    """Whether ``matte`` should treat ``src`` as footage: a video file (by suffix), a URL or
    device (or any source with an FFmpeg ``src_format``), a folder of numbered frames when
    ``sequence`` is set, or any source with a background video."""
    return sequence or src_format is not None or is_video_path(src) or (bgr is not None and is_video_path(bgr))


# -- reports ----------------------------------------------------------------------------------
@dataclass
class StageTimes:
    """Seconds per stage. ``decode``/``predict``/``encode`` are busy times of each stage's
    thread; ``infer`` is the runner's share of ``predict``; ``wait_decode`` is the model idle
    waiting for frames, ``wait_encode`` the model blocked on full encode queues."""

    decode: float = 0.0
    predict: float = 0.0
    infer: float = 0.0
    wait_decode: float = 0.0
    wait_encode: float = 0.0
    encode: dict[str, float] = field(default_factory=dict)
    finalize: float = 0.0


@dataclass
class VideoProgress:
    """Passed to the progress callback after each batch."""

    frames: int
    total: int | None
    seconds: float

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta(self) -> float | None:
        if self.total is None or self.fps <= 0:
            return None
        return max(self.total - self.frames, 0) / self.fps


@dataclass
class VideoReport:
    """What ``matte_video`` did. ``dropped`` counts decoded frames without outputs (always 0
    unless the run failed)."""

    src: str
    bgr: str
    output: str
    model: dict[str, Any]
    options: dict[str, Any]
    source: dict[str, Any]
    frames_in: int = 0
    frames_matted: int = 0
    frames_skipped: int = 0
    frames_out: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    formats: dict[str, str] = field(default_factory=dict)
    stages: StageTimes = field(default_factory=StageTimes)
    seconds: float = 0.0
    live_stopped: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def dropped(self) -> int:
        return self.frames_in - self.frames_matted - self.frames_skipped

    @property
    def fps(self) -> float:
        return self.frames_matted / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        skipped = f", {self.frames_skipped} already done" if self.frames_skipped else ""
        outs = ", ".join(f"{kind} → {path}" for kind, path in self.outputs.items())
        return (f"{self.frames_matted} frames matted{skipped} in {self.seconds:.1f} s ({self.fps:.2f} fps, "
                f"model {self.stages.infer:.1f} s, decode {self.stages.decode:.1f} s); {outs}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["schema_version"] = REPORT_SCHEMA_VERSION
        data["dropped"] = self.dropped
        data["fps"] = self.fps
        data["model_fps"] = self.frames_matted / self.stages.infer if self.stages.infer > 0 else None
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


ProgressCallback = Callable[[VideoProgress], None]


# -- backgrounds and backdrops -------------------------------------------------------------------
class _Plate:
    """A background (or backdrop) per frame: a still image or a video in step with the source."""

    def __init__(self, spec: str | Path, info: StreamInfo, role: str, options: VideoOptions) -> None:
        self.spec = str(spec)
        self.role = role
        self.video: VideoSource | None = None
        self.still: np.ndarray | None = None
        path = Path(self.spec)
        if path.suffix.lower() in IMAGE_SUFFIXES:
            self.still = load_image(path)
            size = (self.still.shape[1], self.still.shape[0])
            if size != info.size:
                raise UsageError(f"{role} {path} is {size[0]}x{size[1]} but the source is {info.width}x{info.height}; "
                                 f"resize the {role} image to {info.width}x{info.height}")
            self.still.flags.writeable = False
            return
        if not is_video_path(self.spec) or is_live(self.spec):
            raise UsageError(f"{role} {self.spec} is neither an image ({', '.join(IMAGE_SUFFIXES)}) nor a video file "
                             f"(a still plate or a video of the source's size, rate and length)")
        self.video = VideoSource(self.spec, options=None, live=False)
        vinfo = self.video.info
        if vinfo.size != info.size:
            self.video.close()
            raise UsageError(f"{role} video {self.spec} is {vinfo.width}x{vinfo.height} but the source is "
                             f"{info.width}x{info.height}; give a {role} of the same size")
        if vinfo.rate and info.rate and abs(float(vinfo.rate) / float(info.rate) - 1) > 0.01:
            self.video.close()
            raise UsageError(f"{role} video {self.spec} runs at {float(vinfo.rate):.3f} fps but the source at "
                             f"{float(info.rate):.3f} fps; give a {role} of the same frame rate")
        if vinfo.frames and info.frames and vinfo.frames != info.frames and options.max_frames is None:
            self.video.close()
            raise UsageError(f"{role} video {self.spec} has {vinfo.frames} frames but the source {info.frames}; "
                             f"give a {role} of the same length")
        self._frames = self.video.frames()

    def next(self, frame: Frame) -> np.ndarray:
        if self.still is not None:
            return self.still
        image = next(self._frames, None)
        if image is None:
            raise VideoError(f"{self.role} video {self.spec} ended at frame {frame.index}, before the source; "
                             f"give a {self.role} of the same length")
        return image.rgb

    def close(self) -> None:
        if self.video is not None:
            self.video.close()


def _parse_colour(text: str) -> tuple[int, int, int] | None:
    value = text.strip()
    if value.startswith("#") and len(value) == 7:
        try:
            return tuple(int(value[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
        except ValueError:
            return None
    parts = value.split(",")
    if len(parts) == 3 and all(part.strip().isdigit() and int(part) <= 255 for part in parts):
        return tuple(int(part) for part in parts)  # type: ignore[return-value]
    return None


# -- the decode stage ---------------------------------------------------------------------------
@dataclass
class _Item:
    """A decoded frame on its way through the pipeline."""

    frame: Frame
    bgr: np.ndarray
    backdrop: np.ndarray | None


_END = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _put(target: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    """Blocks until there is room, unless the run is stopping; False if it stopped."""
    while not stop.is_set():
        try:
            target.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(source: queue.Queue[Any], stop: threading.Event) -> Any:
    """The next item, or None once the run is stopping."""
    while not stop.is_set():
        try:
            return source.get(timeout=0.1)
        except queue.Empty:
            continue
    return None


class _Decoder(threading.Thread):
    """Decodes source + background (+ backdrop) frames into batches on a bounded queue."""

    def __init__(self, source: Source, plate: _Plate, backdrop: _Plate | None, options: VideoOptions,
                 done: Callable[[Frame], bool], times: StageTimes, stop: threading.Event) -> None:
        super().__init__(name="bgm-video-decode", daemon=True)
        self.source, self.plate, self.backdrop, self.options = source, plate, backdrop, options
        self.done, self.times, self.stop = done, times, stop
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=options.queue_size)
        self.frames_in = 0
        self.skipped = 0
        self._aligned: np.ndarray | None = None
        self.align_results: list[dict[str, Any]] = []

    def run(self) -> None:
        try:
            batch: list[_Item] = []
            frames = self.source.frames()
            started = time.perf_counter()
            for frame in frames:
                if self.stop.is_set():
                    return
                self.frames_in += 1
                bgr = self.plate.next(frame)
                backdrop = self.backdrop.next(frame) if self.backdrop is not None else None
                if self.done(frame):
                    self.skipped += 1  # resumed: every output of this frame exists
                else:
                    batch.append(_Item(frame, self._align(frame.rgb, bgr), backdrop))
                at_limit = self.options.max_frames is not None and self.frames_in >= self.options.max_frames
                if len(batch) == self.options.batch or (at_limit and batch):
                    self.times.decode += time.perf_counter() - started
                    if not _put(self.queue, batch, self.stop):
                        return
                    started = time.perf_counter()
                    batch = []
                if at_limit:
                    break
            self.times.decode += time.perf_counter() - started
            if batch and not _put(self.queue, batch, self.stop):
                return
            _put(self.queue, _END, self.stop)
        except BaseException as exc:  # handed to the predicting thread, which re-raises it
            _put(self.queue, _Failure(exc), self.stop)

    def _align(self, src: np.ndarray, bgr: np.ndarray) -> np.ndarray:
        if self.options.align == "off":
            return bgr
        if self.options.align == "clip" and self._aligned is not None:
            return self._aligned
        aligned, result = align_background(src, bgr)
        self.align_results.append(result.to_dict())
        if self.options.align == "clip":
            log.info("background aligned once for the clip: %s", result.describe())
            self._aligned = aligned
        return aligned

    def batches(self) -> Iterator[list[_Item]]:
        while True:
            item = self.queue.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item


def _predict(predictor: Predictor, items: list[_Item], needed: tuple[str, ...]) -> Prediction:
    src = np.stack([item.frame.rgb for item in items]).transpose(0, 3, 1, 2)
    bgr = np.stack([item.bgr for item in items]).transpose(0, 3, 1, 2)
    return predictor.predict(src, bgr, needed)


def _needed(outputs: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(name for kind in outputs for name in NEEDS[kind]))


# -- the frame iterator (live use) --------------------------------------------------------------
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


def iter_mattes(
    src: str | Path,
    bgr: str | Path,
    predictor: Predictor,
    outputs: tuple[str, ...] = ("pha", "fgr"),
    options: VideoOptions | None = None,
) -> Iterator[MattedFrame]:
    """Mattes a video file, image sequence or live source frame by frame, decoding ahead on
    a thread while the model runs. Stop early by breaking out of the loop.

    Args:
        src: video file, folder of numbered frames, URL or device (see :class:`VideoOptions`
            ``src_format``).
        bgr: the background: a still image or a video in step with ``src``.
        predictor: a loaded :class:`Predictor`.
        outputs: predictor outputs to compute: ``pha``, ``fgr``, ``err``, ``ref``.
        options: ``batch``, ``queue_size``, ``align``, ``rate``, ``src_format``, ``src_options``,
            ``max_frames`` apply.

    Raises:
        UsageError, VideoError, RuntimeUnavailableError (PyAV missing).
    """
    options = options or VideoOptions()
    bad = [name for name in outputs if name not in ("pha", "fgr", "err", "ref")]
    if bad:
        raise UsageError(f"outputs={','.join(outputs)!r} is not valid here; choose from pha, fgr, err, ref")
    source = open_source(src, options.rate, options.src_format, options.src_options)
    stop = threading.Event()
    plate: _Plate | None = None
    decoder: _Decoder | None = None
    try:
        plate = _Plate(bgr, source.info, "background", options)
        decoder = _Decoder(source, plate, None, options, lambda frame: False, StageTimes(), stop)
        decoder.start()
        for items in decoder.batches():
            prediction = _predict(predictor, items, tuple(outputs))
            for row, item in enumerate(items):
                maps = {name: getattr(prediction, name)[row] for name in outputs}
                yield MattedFrame(item.frame.index, item.frame.pts, item.frame.time, item.frame.rgb, **maps)
    finally:
        stop.set()
        if decoder is not None:
            decoder.join()
        if plate is not None:
            plate.close()
        source.close()


# -- the encode stage ---------------------------------------------------------------------------
def render_output(kind: str, prediction: Prediction, row: int, backdrop: np.ndarray | None) -> np.ndarray:
    """One output image, uint8, from the batch's prediction."""
    if kind == "pha":
        return to_uint8(prediction.pha[row])
    if kind == "fgr":
        return to_uint8(prediction.fgr[row])
    if kind in ("err", "ref"):
        return to_uint8(getattr(prediction, kind)[row])
    pha, fgr = prediction.pha[row][..., None], prediction.fgr[row]
    if kind == "rgba":
        # As the photo path's com: colour zeroed where the subject is absent, alpha as alpha.
        return np.concatenate([to_uint8(fgr * (pha > 0)), to_uint8(pha)], axis=-1)
    under = backdrop.astype(np.float32) / np.float32(255)
    return to_uint8(fgr * pha + under * (1 - pha))


class _Encoder(threading.Thread):
    """Renders and encodes one output from its own bounded queue."""

    def __init__(self, kind: str, writer: SequenceWriter | VideoWriter, backdrop_colour: np.ndarray | None,
                 options: VideoOptions, times: StageTimes, stop: threading.Event) -> None:
        super().__init__(name=f"bgm-video-encode-{kind}", daemon=True)
        self.kind, self.writer, self.colour, self.times, self.stop = kind, writer, backdrop_colour, times, stop
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=options.queue_size)
        self.error: BaseException | None = None
        times.encode[kind] = 0.0

    def run(self) -> None:
        try:
            while True:
                item = _get(self.queue, self.stop)
                if item is _END:
                    break
                if item is None:  # the run is failing: leave without finishing the file
                    return
                items, prediction = item
                started = time.perf_counter()
                for row, entry in enumerate(items):
                    backdrop = entry.backdrop if entry.backdrop is not None else self.colour
                    self.writer.write(entry.frame, render_output(self.kind, prediction, row, backdrop))
                self.times.encode[self.kind] += time.perf_counter() - started
            started = time.perf_counter()
            self.writer.flush()
            self.times.encode[self.kind] += time.perf_counter() - started
        except BaseException as exc:
            self.error = exc
            self.stop.set()


# -- the API ------------------------------------------------------------------------------------
def output_path(output: Path, kind: str, fmt: VideoFormat) -> Path:
    """``OUT/<kind><suffix>`` for a video, ``OUT/<kind>/`` for a PNG sequence."""
    return output / f"{kind}{fmt.suffix}"


def matte_video(
    src: str | Path,
    bgr: str | Path,
    output: str | Path,
    model: str | Path | None = None,
    checkpoint: str | Path | None = None,
    model_config: ModelConfig | None = None,
    provider: str = "cpu",
    allow_fallback: bool = False,
    options: VideoOptions | None = None,
    progress: ProgressCallback | None = None,
    report_path: str | Path | None = None,
    predictor: Predictor | None = None,
) -> VideoReport:
    """Mattes a clip, an image sequence or a live stream into ``output/<kind>.<ext>`` videos
    and/or ``output/<kind>/`` PNG sequences.

    Args:
        src: a video file (mp4/mov/mkv/webm/...), a folder of numbered frames, or a live
            source (a URL such as ``rtsp://...``/``tcp://...``, a device with ``src_format``).
        bgr: the background: a still image, or a video of the same size, rate and length.
        output: the output folder.
        model, checkpoint, model_config, provider, allow_fallback: see :meth:`Predictor.load`.
        options: see :class:`VideoOptions`.
        progress: called after every batch with a :class:`VideoProgress`.
        report_path: also write the report as JSON there.
        predictor: an already loaded predictor (then model/checkpoint/provider are ignored).

    Returns:
        The report (frames in/out, dropped = 0, per-stage seconds).

    Raises:
        UsageError: bad options, sizes/rates that do not match, outputs that exist without
            overwrite/skip_existing. VideoError: unreadable, truncated, empty or stream-less
            input; a live source that produced no frame. RuntimeUnavailableError: PyAV or an
            encoder missing. ModelFileError, CheckpointError: the model cannot be loaded.
    """
    options = options or VideoOptions()
    output = Path(output)
    started = time.perf_counter()
    import_av()
    if options.align != "off":
        import_cv2()  # OpenCV is an optional extra: fail before decoding
    source = open_source(src, options.rate, options.src_format, options.src_options)
    info = source.info
    report = VideoReport(str(src), str(bgr), str(output), {}, _options_dict(options), info.to_dict())
    plate = backdrop = None
    writers: dict[str, SequenceWriter | VideoWriter] = {}
    owned = False
    try:
        if info.frames == 0:
            raise VideoError(f"{src} has no frames; give a clip with at least one frame")
        plate = _Plate(bgr, info, "background", options)
        colour = None
        if "com" in options.outputs:
            rgb = _parse_colour(options.backdrop)
            if rgb is not None:
                colour = np.empty((info.height, info.width, 3), np.uint8)
                colour[:] = rgb
            else:
                backdrop = _Plate(options.backdrop, info, "backdrop", options)
        formats = {kind: check_format(kind, options.format_of(kind), LAYOUTS[kind], info.size)
                   for kind in options.outputs}
        report.formats = {kind: fmt.name for kind, fmt in formats.items()}
        todo = _plan_outputs(output, formats, options, report)
        if not todo:
            report.warnings.append("every output exists already (skip_existing): nothing to do")
            return report
        odd = [kind for kind in todo if not formats[kind].is_sequence
               and formats[kind].pix_fmt(LAYOUTS[kind], info.size) != formats[kind].pix_fmts[LAYOUTS[kind]]]
        if odd:
            _warn(report, f"odd size {info.width}x{info.height}: {', '.join(odd)} encoded as 4:4:4 "
                          f"({formats[odd[0]].pix_fmt(LAYOUTS[odd[0]], info.size)}), which some players cannot show; "
                          "crop to an even size for 4:2:0")
        if predictor is None:
            # The decoder and encoders share the cores with the model: onnxruntime's spinning
            # CPU threads would take their time, so an ONNX model on the CPU runs without it.
            predictor = Predictor.load(model, checkpoint=checkpoint, model_config=model_config, target=provider,
                                       allow_fallback=allow_fallback, padding=options.padding, shared_cores=True)
            owned = True
        report.model = predictor.describe()
        needed = _needed(options.outputs)
        missing = [name for name in needed if name not in predictor.available_outputs]
        if missing:
            raise UsageError(f"outputs {','.join(options.outputs)} need {', '.join(missing)}, which {predictor.source} "
                             f"does not provide (it has {', '.join(predictor.available_outputs)})")
        for kind in todo:
            fmt = formats[kind]
            path = output_path(output, kind, fmt)
            writers[kind] = (SequenceWriter(path, options.skip_existing) if fmt.is_sequence else
                             VideoWriter(path, fmt, LAYOUTS[kind], info, options.crf, options.preset))
        _run(source, plate, backdrop, colour, predictor, writers, options, report, progress, started)
        finalize_started = time.perf_counter()
        # Audio is remuxed from the file; a live source cannot be read a second time.
        audio_from = source if options.audio and info.kind == "video" else None
        if options.audio and info.kind == "live" and info.audio:
            _warn(report, "the live source's audio is not carried over (only files' audio is remuxed)")
        for kind, writer in writers.items():
            writer.finish(audio_from)
            if isinstance(writer, VideoWriter) and writer.audio_note:
                report.warnings.append(writer.audio_note)
            report.outputs[kind] = str(writer.final_path)
        report.stages.finalize = time.perf_counter() - finalize_started
        writers = {}
    finally:
        for writer in writers.values():
            writer.abort()
        for item in (plate, backdrop, source):
            if item is not None:
                item.close()
        if owned and predictor is not None:
            predictor.close()
        report.seconds = time.perf_counter() - started
        if report_path is not None:
            atomic_write_text(report_path, report.to_json())
    return report


def _warn(report: VideoReport, message: str) -> None:
    log.warning("%s", message)
    report.warnings.append(message)


def _options_dict(options: VideoOptions) -> dict[str, Any]:
    return asdict(options)


def _plan_outputs(output: Path, formats: dict[str, VideoFormat], options: VideoOptions,
                  report: VideoReport) -> list[str]:
    """Outputs to write; finished videos are skipped with skip_existing, refused without it."""
    todo, existing = [], []
    for kind, fmt in formats.items():
        path = output_path(output, kind, fmt)
        if fmt.is_sequence:
            if path.is_dir() and any(path.iterdir()) and not (options.overwrite or options.skip_existing):
                existing.append(path)
            todo.append(kind)
        elif path.exists():
            if options.skip_existing:
                report.outputs[kind] = str(path)  # complete: only whole files are ever renamed into place
                continue
            if not options.overwrite:
                existing.append(path)
            todo.append(kind)
        else:
            todo.append(kind)
    if existing:
        raise UsageError(f"output {existing[0]} already exists; pass --overwrite to replace it or --skip-existing "
                         "to keep finished outputs (and finished frames of PNG sequences)")
    return todo


def _run(source: Source, plate: _Plate, backdrop: _Plate | None, colour: np.ndarray | None, predictor: Predictor,
         writers: dict[str, SequenceWriter | VideoWriter], options: VideoOptions, report: VideoReport,
         progress: ProgressCallback | None, started: float) -> None:
    """decode thread → predict (this thread) → encode thread per output, all queues bounded."""
    stop = threading.Event()
    times = report.stages
    outputs = tuple(writers)
    needed = _needed(outputs)
    all_sequences = all(isinstance(w, SequenceWriter) for w in writers.values())

    def done(frame: Frame) -> bool:
        return all_sequences and all(w.has(frame) for w in writers.values())

    decoder = _Decoder(source, plate, backdrop, options, done, times, stop)
    encoders = {kind: _Encoder(kind, writer, colour, options, times, stop) for kind, writer in writers.items()}
    threads: list[threading.Thread] = [decoder, *encoders.values()]
    for thread in threads:
        thread.start()
    total = info_frames = source.info.frames
    if options.max_frames is not None:
        total = min(info_frames, options.max_frames) if info_frames else None
    try:
        batches = decoder.batches()
        while True:
            waited = time.perf_counter()
            items = next(batches, None)
            times.wait_decode += time.perf_counter() - waited
            if items is None:
                break
            begun = time.perf_counter()
            prediction = _predict(predictor, items, needed)
            times.predict += time.perf_counter() - begun
            times.infer += prediction.seconds
            waited = time.perf_counter()
            for encoder in encoders.values():
                if not _put(encoder.queue, (items, prediction), stop):
                    break
            times.wait_encode += time.perf_counter() - waited
            _raise_encoder_error(encoders)
            report.frames_matted += len(items)
            if progress is not None:
                progress(VideoProgress(report.frames_matted + decoder.skipped, total, time.perf_counter() - started))
        for encoder in encoders.values():
            _put(encoder.queue, _END, stop)
            encoder.join()
        _raise_encoder_error(encoders)
    except BaseException:
        stop.set()
        raise
    finally:
        stop.set()  # lets a decoder blocked on a full queue (an early break or failure) exit
        for thread in threads:
            thread.join()
        report.frames_in = decoder.frames_in
        report.frames_skipped = decoder.skipped
        report.frames_out = {kind: writer.written + writer.skipped for kind, writer in writers.items()}
        report.live_stopped = getattr(source, "stopped", None) if source.info.kind == "live" else None
        if decoder.align_results:
            report.options["align_results"] = decoder.align_results[:1] if options.align == "clip" else \
                decoder.align_results
    if report.frames_in == 0:
        raise VideoError(f"{source.info.path} produced no frames"
                         + (f" (live source {report.live_stopped})" if report.live_stopped else "")
                         + "; check the source plays (a live source must be streaming)")
    if report.live_stopped:
        _warn(report, f"live source {report.live_stopped}; outputs hold the {report.frames_in} frames received")


def _raise_encoder_error(encoders: dict[str, _Encoder]) -> None:
    for encoder in encoders.values():
        if encoder.error is not None:
            raise encoder.error


# -- progress for the CLI ----------------------------------------------------------------------
class VideoProgressPrinter:
    """A one-line bar with fps and ETA on a terminal; a log line every ``every`` seconds otherwise."""

    def __init__(self, echo: Callable[..., None], tty: bool | None = None, quiet: bool = False,
                 every: float = 5.0) -> None:
        self.echo = echo
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.quiet = quiet
        self.every = every
        self._last = -every
        self._bar_visible = False

    def __call__(self, state: VideoProgress) -> None:
        if self.quiet:
            return
        eta = state.eta
        eta_text = "--:--" if eta is None else f"{int(eta) // 60:02d}:{int(eta) % 60:02d}"
        of = f"/{state.total}" if state.total else ""
        text = f"{state.frames}{of} frames {state.fps:.2f} fps ETA {eta_text}"
        if self.tty:
            filled = int(30 * state.frames / state.total) if state.total else 0
            bar = f"[{'#' * filled}{'.' * (30 - filled)}] " if state.total else ""
            self.echo(f"\r{bar}{text}", err=True, nl=False)
            self._bar_visible = True
            if state.total and state.frames >= state.total:
                self.close()
        elif state.seconds - self._last >= self.every or (state.total and state.frames >= state.total):
            self._last = state.seconds
            self.echo(text, err=True)

    def close(self) -> None:
        if self._bar_visible:
            self.echo("", err=True)
            self._bar_visible = False
