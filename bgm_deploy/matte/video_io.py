"""Reading and writing frames for video matting, with PyAV (FFmpeg's libraries as a wheel).

Sources: a video file, a folder of numbered images, or a live source (a network URL or a
capture device FFmpeg can open). Every source yields upright 8-bit RGB frames with their
presentation timestamps, whatever the input's pixel format (10-bit, 4:2:2, ...) or rotation
metadata. Writers: video files (H.264, FFV1, ProRes 4444, VP9, NVENC) written to a temporary
file in the target folder and renamed only when complete, with the source's audio stream
remuxed untouched; and PNG sequences written image by image (atomically, resumable).

PyAV is an optional extra, imported lazily: ``pip install "bgm-deploy[video]"``.
"""

from __future__ import annotations

import contextlib
import fractions
import heapq
import itertools
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exporters.atomic import _UMASK, new_temp_file  # the umask read once (os.umask is not thread-safe)
from model.errors import RuntimeUnavailableError, UsageError, VideoError

from ..images import IMAGE_SUFFIXES, load_image, save_image

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "bgm-deploy[video]"'
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".ts", ".mts", ".mxf", ".flv", ".mpg")
DEFAULT_SEQUENCE_RATE = 30


def import_av() -> Any:
    """PyAV, or a :class:`RuntimeUnavailableError` saying how to install it."""
    try:
        import av  # optional extra "video"
    except ImportError:
        raise RuntimeUnavailableError(f"video matting needs PyAV, which is not installed: {INSTALL_HINT}") from None
    return av


def is_live(spec: str | Path) -> bool:
    """A network URL (``rtsp://``, ``tcp://``, ...) or a capture device (``/dev/video0``)."""
    text = str(spec)
    return "://" in text or text.startswith("/dev/")


def is_video_path(spec: str | Path) -> bool:
    """A video file by its suffix, or a live source."""
    return is_live(spec) or Path(str(spec)).suffix.lower() in VIDEO_SUFFIXES


# -- sources ------------------------------------------------------------------------------------
@dataclass
class StreamInfo:
    """What a source is. Sizes are upright (after rotation metadata is applied).

    Attributes:
        path: the file, folder, URL or device.
        kind: ``"video"``, ``"sequence"`` or ``"live"``.
        width, height: frame size.
        rate: nominal frames per second (the mean for a variable-rate clip), None if unknown.
        time_base: unit of ``pts``.
        frames: frame count from the header or folder, None if unknown (live, some containers).
        codec, pix_fmt: the input's codec and pixel format (converted to 8-bit RGB on decode).
        rotation: counter-clockwise degrees the input asked players to rotate by (applied).
        audio: the source has an audio stream (carried over into video outputs).
        container: FFmpeg's name of the container format.
    """

    path: str
    kind: str
    width: int
    height: int
    rate: fractions.Fraction | None
    time_base: fractions.Fraction
    frames: int | None
    codec: str = ""
    pix_fmt: str = ""
    rotation: int = 0
    audio: bool = False
    container: str = ""

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "kind": self.kind, "width": self.width, "height": self.height,
            "rate": float(self.rate) if self.rate else None, "time_base": str(self.time_base), "frames": self.frames,
            "codec": self.codec, "pix_fmt": self.pix_fmt, "rotation": self.rotation, "audio": self.audio,
            "container": self.container,
        }


@dataclass
class Frame:
    """One decoded frame: ``rgb`` is ``(H, W, 3)`` uint8; ``pts`` in the source's time base."""

    index: int
    pts: int
    time: float
    rgb: np.ndarray
    name: str = ""


class VideoSource:
    """Frames of a video file or a live stream, decoded by FFmpeg (through PyAV).

    Args:
        spec: a file path, a URL or a device path.
        fmt: FFmpeg input format (e.g. ``v4l2``, ``avfoundation``, ``mpegts``), None to probe.
        options: FFmpeg demuxer options (e.g. ``{"rtsp_transport": "tcp"}``).
        live: a stream that may stop at any time (its end is not an error), timestamps
            shifted to start at 0.

    Raises:
        UsageError: the file does not exist; VideoError: not readable, truncated or corrupt,
        no video stream, or a codec this FFmpeg cannot decode.
    """

    def __init__(self, spec: str | Path, fmt: str | None = None, options: dict[str, str] | None = None,
                 live: bool | None = None, threads: int | None = None) -> None:
        av = import_av()
        self.spec = str(spec)
        self.live = is_live(spec) if live is None else live
        if not self.live and not Path(self.spec).is_file():
            raise UsageError(f"{self.spec} does not exist (give a video file, a folder of numbered frames, or a URL)")
        open_options = dict(options or {})
        try:
            # A live source that never answers must not hang the run: 10 s to open/read.
            self.container = av.open(self.spec, format=fmt, options=open_options,
                                     timeout=(10.0, 10.0) if self.live else None)
        except av.error.EOFError:
            streaming = " and check that the source is streaming" if self.live else ""
            raise VideoError(f"{self.spec} has no frames (it ends before any video data); give a clip with at "
                             f"least one frame{streaming}") from None
        except av.FFmpegError as exc:
            hint = ("check the URL/device and that it is streaming" if self.live else
                    "the file is truncated, corrupt or not a video; re-encode or re-download it")
            raise VideoError(f"{self.spec}: cannot open ({_ffmpeg_message(exc)}); {hint}") from None
        streams = self.container.streams
        if not streams.video:
            kinds = ", ".join(sorted({s.type for s in streams})) or "none"  # before close: PyAV frees them
            self.container.close()
            raise VideoError(f"{self.spec} has no video stream (streams: {kinds}); give a file with video")
        self.stream = streams.video[0]
        context = self.stream.codec_context
        if context is None or context.codec is None:
            self.container.close()
            raise VideoError(f"{self.spec}: its video codec is not supported by this FFmpeg (PyAV {av.__version__}); "
                             "re-encode it to H.264 (e.g. ffmpeg -i in -c:v libx264 out.mp4)")
        self.stream.thread_type = "AUTO"  # frame + slice threads: decoding keeps up with the model
        if threads is not None:
            self.stream.codec_context.thread_count = threads
        # PyAV exposes the display matrix on frames only: decode the first frame now (it is
        # yielded first) for the rotation, the upright size, and to know a clip is not empty.
        self._decoding = self.container.decode(self.stream)
        self._first_error: BaseException | None = None
        try:
            self._first = next(self._decoding, None)
        except av.FFmpegError as exc:
            self._first, self._first_error = None, exc
        rotation = int(round((getattr(self._first, "rotation", 0) or 0) / 90)) % 4 * 90
        width, height = context.width, context.height
        if rotation % 180:
            width, height = height, width
        rate = self.stream.average_rate or self.stream.guessed_rate or self.stream.base_rate
        self.audio_stream = streams.audio[0] if streams.audio else None
        self.info = StreamInfo(
            path=self.spec, kind="live" if self.live else "video", width=width, height=height,
            rate=fractions.Fraction(rate) if rate else None,
            time_base=fractions.Fraction(self.stream.time_base or fractions.Fraction(1, 90000)),
            frames=None if self.live else 0 if self._first is None and self._first_error is None
            else (self.stream.frames or None),
            codec=context.name, pix_fmt=str(context.pix_fmt or ""), rotation=rotation,
            audio=self.audio_stream is not None, container=self.container.format.name,
        )
        if width == 0 or height == 0:
            self.close()
            raise VideoError(f"{self.spec}: video stream has no frame size (empty or corrupt stream)")
        if context.pix_fmt and ("10" in context.pix_fmt or "12" in context.pix_fmt or "16" in context.pix_fmt):
            log.warning("%s is %s (high bit depth): frames are converted to 8-bit RGB for the model",
                        self.spec, context.pix_fmt)
        self.stopped: str | None = None  # why a live source ended early
        self.decoded = 0

    def frames(self) -> Iterator[Frame]:
        """Decodes every frame as upright RGB. A file that fails mid-way raises VideoError; a
        live source that stops ends the iteration (``self.stopped`` says why)."""
        av = import_av()
        first_pts: int | None = None
        last_pts: int | None = None
        index = 0
        try:
            if self._first_error is not None:
                raise self._first_error
            for frame in itertools.chain((self._first,) if self._first is not None else (), self._decoding):
                pts = frame.pts if frame.pts is not None else (last_pts + 1 if last_pts is not None else 0)
                if self.live:
                    first_pts = pts if first_pts is None else first_pts
                    pts -= first_pts
                if last_pts is not None and pts <= last_pts:
                    pts = last_pts + 1  # muxers reject non-increasing timestamps
                last_pts = pts
                rgb = frame.to_ndarray(format="rgb24")  # any pixel format, 10-bit included, to 8-bit RGB
                if self.info.rotation:
                    rgb = np.ascontiguousarray(np.rot90(rgb, self.info.rotation // 90))
                yield Frame(index, pts, float(pts * self.info.time_base), rgb, f"{index:06d}")
                index += 1
                self.decoded = index
        except av.FFmpegError as exc:
            if self.live:
                self.stopped = f"stopped after {index} frames: {_ffmpeg_message(exc)}"
                log.warning("live source %s %s", self.spec, self.stopped)
                return
            raise VideoError(f"{self.spec}: decoding failed after {index} frames ({_ffmpeg_message(exc)}); "
                             "the file is truncated or corrupt: re-encode or re-download it") from None
        if self.live:
            self.stopped = f"ended after {index} frames"
        elif self.info.frames and index < self.info.frames:
            log.warning("%s: decoded %d of the %d frames its header lists; the file may be truncated",
                        self.spec, index, self.info.frames)

    def close(self) -> None:
        self.container.close()


def _natural_key(path: Path) -> tuple[Any, ...]:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.stem))


class SequenceSource:
    """Frames of a folder of numbered images (``frame_0001.png``, ...), in numeric order.

    Args:
        folder: the folder (not searched recursively).
        rate: frames per second to assume (timestamps are ``index / rate``).

    Raises:
        UsageError: no such folder; VideoError: no images in it, or unreadable first image.
    """

    def __init__(self, folder: str | Path, rate: float | None = None) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise UsageError(f"{self.folder} is not a folder of numbered frames")
        self.paths = sorted(
            (p for p in self.folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
             and not p.name.startswith(".")),
            key=_natural_key,
        )
        if not self.paths:
            raise VideoError(f"{self.folder} contains no frames (looked for {', '.join(IMAGE_SUFFIXES)})")
        first = load_image(self.paths[0])
        rate_fraction = fractions.Fraction(rate or DEFAULT_SEQUENCE_RATE).limit_denominator(1001)
        self.live = False
        self.stopped: str | None = None
        self.decoded = 0
        self.audio_stream = None
        self.info = StreamInfo(
            path=str(self.folder), kind="sequence", width=first.shape[1], height=first.shape[0],
            rate=rate_fraction, time_base=1 / rate_fraction, frames=len(self.paths), codec="image", pix_fmt="rgb24",
        )

    def frames(self) -> Iterator[Frame]:
        for index, path in enumerate(self.paths):
            rgb = load_image(path)
            if rgb.shape[:2] != (self.info.height, self.info.width):
                raise VideoError(f"{path} is {rgb.shape[1]}x{rgb.shape[0]} but the sequence's first frame is "
                                 f"{self.info.width}x{self.info.height}; every frame must have one size")
            yield Frame(index, index, float(index / self.info.rate), rgb, path.stem)
            self.decoded = index + 1

    def close(self) -> None:
        pass


Source = VideoSource | SequenceSource


def open_source(spec: str | Path, rate: float | None = None, fmt: str | None = None,
                options: dict[str, str] | None = None, threads: int | None = None) -> Source:
    """A video file, an image-sequence folder, or a live URL/device (``fmt`` names an FFmpeg
    input format such as ``v4l2``; given, the source is live). ``threads``: decoder threads."""
    if fmt is not None or is_live(spec):
        return VideoSource(spec, fmt=fmt, options=options, live=True, threads=threads)
    if Path(spec).is_dir():
        return SequenceSource(spec, rate)
    return VideoSource(spec, options=options, threads=threads)


def _ffmpeg_message(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).strip().rstrip(".")


# -- output formats -----------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoFormat:
    """One way of writing an output.

    Attributes:
        name: what users pass (``h264``, ``ffv1``, ``prores``, ``vp9``, ``h264-nvenc``, ``png``).
        suffix: the file suffix (empty for an image sequence).
        codec: FFmpeg encoder (None for PNG sequences).
        container: FFmpeg muxer name.
        pix_fmts: pixel format per channel layout (``gray``, ``rgb``, ``rgba``); no ``rgba``
            means the format has no alpha.
        odd_pix_fmts: replacements when width or height is odd (4:2:0 needs even sizes).
        lossless: decodes to exactly what was encoded.
        quality: how ``crf``/``preset`` map to encoder options.
    """

    name: str
    suffix: str
    codec: str | None
    container: str
    pix_fmts: dict[str, str]
    odd_pix_fmts: dict[str, str] = field(default_factory=dict)
    lossless: bool = False
    quality: str = "none"
    note: str = ""

    @property
    def is_sequence(self) -> bool:
        return self.codec is None

    def pix_fmt(self, layout: str, size: tuple[int, int]) -> str:
        odd = size[0] % 2 or size[1] % 2
        return (self.odd_pix_fmts.get(layout) if odd else None) or self.pix_fmts[layout]

    def encoder_options(self, crf: int, preset: str) -> dict[str, str]:
        if self.quality == "x264":
            return {"crf": str(crf), "preset": preset}
        if self.quality == "vpx":  # realtime deadline: libvpx's default "good" is ~10x slower
            return {"crf": str(crf + 13), "b": "0", "deadline": "realtime", "cpu-used": "8", "row-mt": "1"}
        if self.quality == "nvenc":
            return {"cq": str(crf + 5), "preset": "p4"}
        if self.quality == "prores":
            return {"profile": "4444", "vendor": "apl0"}
        return {}


FORMATS: dict[str, VideoFormat] = {
    fmt.name: fmt
    for fmt in (
        VideoFormat("h264", ".mp4", "libx264", "mp4", {"gray": "yuv420p", "rgb": "yuv420p"},
                    {"gray": "yuv444p", "rgb": "yuv444p"}, quality="x264", note="lossy, small, plays everywhere"),
        VideoFormat("h264-nvenc", ".mp4", "h264_nvenc", "mp4", {"gray": "yuv420p", "rgb": "yuv420p"},
                    {"gray": "yuv444p", "rgb": "yuv444p"}, quality="nvenc", note="H.264 on an NVIDIA GPU"),
        VideoFormat("ffv1", ".mkv", "ffv1", "matroska", {"gray": "gray", "rgb": "bgr0", "rgba": "bgra"},
                    lossless=True, note="lossless, alpha"),
        VideoFormat("prores", ".mov", "prores_ks", "mov",
                    {"gray": "yuv444p10le", "rgb": "yuv444p10le", "rgba": "yuva444p10le"}, quality="prores",
                    note="ProRes 4444 (alpha) for editors; slow"),
        VideoFormat("vp9", ".webm", "libvpx-vp9", "webm", {"gray": "yuv420p", "rgb": "yuv420p", "rgba": "yuva420p"},
                    {"gray": "yuv444p", "rgb": "yuv444p", "rgba": "yuva444p"}, quality="vpx",
                    note="VP9 with alpha for browsers"),
        VideoFormat("png", "", None, "", {"gray": "gray", "rgb": "rgb24", "rgba": "rgba"}, lossless=True,
                    note="PNG sequence, lossless, alpha, resumable"),
    )
}


def check_format(kind: str, fmt_name: str, layout: str, size: tuple[int, int]) -> VideoFormat:
    """The format for an output, checked against this FFmpeg and the frame size.

    Raises:
        UsageError: unknown format, or no alpha where the output needs it; RuntimeUnavailableError:
            the installed FFmpeg lacks the encoder or cannot open it here (e.g. NVENC without a GPU).
    """
    fmt = FORMATS.get(fmt_name)
    if fmt is None:
        raise UsageError(f"format {kind}={fmt_name!r} is not valid; valid: {', '.join(FORMATS)}")
    if layout not in fmt.pix_fmts:
        with_alpha = ", ".join(name for name, f in FORMATS.items() if "rgba" in f.pix_fmts)
        raise UsageError(f"format {kind}={fmt_name} cannot store alpha; use one of {with_alpha}")
    if fmt.is_sequence:
        return fmt
    av = import_av()
    try:
        codec = av.codec.Codec(fmt.codec, "w")
    except av.codec.codec.UnknownCodecError:
        raise RuntimeUnavailableError(
            f"format {kind}={fmt_name}: the installed FFmpeg (PyAV {av.__version__}) has no {fmt.codec} encoder; "
            f"pick another format ({', '.join(FORMATS)})") from None
    pix_fmt = fmt.pix_fmt(layout, size)
    if codec.video_formats and pix_fmt not in {f.name for f in codec.video_formats}:
        raise RuntimeUnavailableError(f"format {kind}={fmt_name}: this FFmpeg's {fmt.codec} cannot encode {pix_fmt}"
                                      f"{' (the frame size is odd)' if pix_fmt != fmt.pix_fmts[layout] else ''}; "
                                      f"pick another format: {_alternatives(layout, fmt_name)}")
    _probe_encoder(av, fmt, pix_fmt, kind, layout, size)
    return fmt


def _alternatives(layout: str, but: str) -> str:
    """Software formats that can hold ``layout`` (an alpha channel needs one that stores it)."""
    names = [name for name, f in FORMATS.items() if layout in f.pix_fmts and name != but and name != "h264-nvenc"]
    return ", ".join(names)


def _probe_encoder(av: Any, fmt: VideoFormat, pix_fmt: str, kind: str, layout: str, size: tuple[int, int]) -> None:
    """Opens the encoder once at a small size: hardware encoders are listed even when no
    device can run them, and fail only when opened."""
    context = av.CodecContext.create(fmt.codec, "w")
    context.width, context.height, context.pix_fmt = 64, 64, pix_fmt
    context.time_base = fractions.Fraction(1, 30)
    try:
        context.open()
    except av.FFmpegError as exc:
        odd = f" for the odd frame size {size[0]}x{size[1]} ({pix_fmt})" if pix_fmt != fmt.pix_fmts[layout] else ""
        raise RuntimeUnavailableError(
            f"format {kind}={fmt.name}: the {fmt.codec} encoder cannot be opened here{odd} ({_ffmpeg_message(exc)}); "
            f"pick a software format: {_alternatives(layout, fmt.name)}") from None
    finally:
        with contextlib.suppress(Exception):  # closing a never-opened context may fail; nothing to release
            context.close()


# -- writers ------------------------------------------------------------------------------------
class SequenceWriter:
    """PNG frames ``folder/<frame name>.png``, each written atomically; existing ones kept
    when resuming."""

    def __init__(self, folder: Path, skip_existing: bool) -> None:
        self.folder = folder
        self.skip_existing = skip_existing
        self.written = 0
        self.skipped = 0
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def final_path(self) -> Path:
        return self.folder

    @staticmethod
    def clear(folder: Path) -> int:
        """Removes the PNG frames of an earlier run (``--overwrite``): a shorter new run must not
        leave old frames behind it. Returns how many were removed."""
        if not folder.is_dir():
            return 0
        frames = [path for path in folder.iterdir() if path.is_file() and path.suffix.lower() == ".png"]
        for path in frames:
            path.unlink()
        return len(frames)

    def path_for(self, frame: Frame) -> Path:
        return self.folder / f"{frame.name}.png"

    def has(self, frame: Frame) -> bool:
        return self.skip_existing and self.path_for(frame).exists()

    def write(self, frame: Frame, image: np.ndarray) -> None:
        if self.has(frame):
            self.skipped += 1
            return
        # zlib level 1: ~4x faster than level 6 for ~10% larger files; frames must keep up with the model.
        save_image(self.path_for(frame), image, compress_level=1)
        self.written += 1

    def flush(self) -> None:
        pass

    def finish(self, audio_from: Source | None, trim_audio: bool = False) -> None:
        pass

    def abort(self) -> None:
        pass  # every finished frame is a whole file; resumable with skip_existing


class VideoWriter:
    """One output video, encoded into a hidden temporary file next to ``path``; :meth:`finish`
    remuxes the source's audio in and renames it to ``path``; :meth:`abort` deletes it."""

    def __init__(self, path: Path, fmt: VideoFormat, layout: str, info: StreamInfo, crf: int, preset: str) -> None:
        av = import_av()
        self.path = path
        self.fmt = fmt
        self.layout = layout
        self.info = info
        self.written = 0
        self.skipped = 0
        self.audio_note: str | None = None
        # A pid-named temp file: one left by a killed process is removed by the next write of
        # the same output (exporters.atomic).
        self.temp = new_temp_file(path, ".part")
        self._pieces: list[Path] = [self.temp]
        self.container = None
        try:
            self.container = av.open(str(self.temp), "w", format=fmt.container)
            self.stream = self.container.add_stream(fmt.codec, rate=info.rate or DEFAULT_SEQUENCE_RATE)
            self.stream.width, self.stream.height = info.width, info.height
            self.stream.pix_fmt = fmt.pix_fmt(layout, info.size)
            # The source's time base and timestamps, so variable frame rates survive.
            self.stream.time_base = info.time_base
            self.stream.codec_context.time_base = info.time_base
            self.stream.options = fmt.encoder_options(crf, preset)
        except BaseException:
            self.abort()
            raise
        self._av_format = {"gray": "gray", "rgb": "rgb24", "rgba": "rgba"}[layout]

    @property
    def final_path(self) -> Path:
        return self.path

    def has(self, frame: Frame) -> bool:
        return False

    def write(self, frame: Frame, image: np.ndarray) -> None:
        av = import_av()
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format=self._av_format)
        video_frame.pts = frame.pts
        video_frame.time_base = self.info.time_base
        try:
            self.container.mux(self.stream.encode(video_frame))
        except av.FFmpegError as exc:
            raise VideoError(f"{self.path}: encoding frame {frame.index} failed ({_ffmpeg_message(exc)})") from None
        self.written += 1

    def flush(self) -> None:
        """Drains the encoder and closes the temporary file (still hidden)."""
        av = import_av()
        try:
            self.container.mux(self.stream.encode())
            self.container.close()
        except av.FFmpegError as exc:
            raise VideoError(f"{self.path}: finishing the video failed ({_ffmpeg_message(exc)})") from None

    def finish(self, audio_from: Source | None, trim_audio: bool = False) -> None:
        """Carries the audio over (when asked and possible) and renames into place;
        ``trim_audio``: only the audio before the video's end (a run that stopped early)."""
        result = self.temp
        if audio_from is not None and audio_from.audio_stream is not None:
            result = self._with_audio(audio_from, trim_audio)
        os.chmod(result, 0o666 & ~_UMASK)
        os.replace(result, self.path)
        self._cleanup()

    def _with_audio(self, source: Source, trim: bool) -> Path:
        av = import_av()
        target = new_temp_file(self.path, ".audio.part")
        self._pieces.append(target)
        try:
            end = _video_end(av, self.temp) if trim else None
            with av.open(str(self.temp)) as video_in, av.open(source.spec) as audio_in, \
                    av.open(str(target), "w", format=self.fmt.container) as out:
                video_stream, audio_stream = video_in.streams.video[0], audio_in.streams.audio[0]
                video_out = out.add_stream_from_template(video_stream)
                audio_out = out.add_stream_from_template(audio_stream)
                for packet in _interleave(video_in.demux(video_stream), audio_in.demux(audio_stream)):
                    if packet.stream.type == "video":
                        packet.stream = video_out
                    elif end is not None and packet.pts is not None and packet.pts * packet.time_base >= end:
                        continue  # sound after the last frame of a run that stopped early
                    else:
                        packet.stream = audio_out
                    out.mux(packet)
        except (av.FFmpegError, ValueError) as exc:
            # e.g. AAC in WebM: keep the video, say why the sound is missing.
            self.audio_note = (f"{self.path.name}: audio not carried over ({_ffmpeg_message(exc)}); "
                               "pick a format whose container takes the source's audio codec (mp4/mkv/mov)")
            log.warning("%s", self.audio_note)
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
            return self.temp
        return target

    def abort(self) -> None:
        if self.container is not None:
            with contextlib.suppress(Exception):  # already failing: closing a broken muxer may raise again
                self.container.close()
        self._cleanup()

    def _cleanup(self) -> None:
        for piece in self._pieces:
            with contextlib.suppress(FileNotFoundError):
                piece.unlink()


def _video_end(av: Any, path: Path) -> fractions.Fraction | None:
    """When the last frame of the video file at ``path`` ends (seconds; None if unknown)."""
    end = None
    with av.open(str(path)) as container:
        for packet in container.demux(container.streams.video[0]):
            if packet.pts is not None:
                stop = (packet.pts + (packet.duration or 0)) * packet.time_base
                end = stop if end is None else max(end, stop)
    return end


def _interleave(*demuxers: Iterator[Any]) -> Iterator[Any]:
    """Packets of several streams in time order (muxers want them interleaved); the demuxer's
    end-of-stream flush packets (no dts) are dropped."""
    def keyed(stream_index: int, packets: Iterator[Any]) -> Iterator[tuple[float, int, Any]]:
        for packet in packets:
            if packet.dts is None and packet.pts is None:
                continue
            stamp = packet.dts if packet.dts is not None else packet.pts
            yield float(stamp * packet.time_base), stream_index, packet

    for _, _, packet in heapq.merge(*(keyed(i, d) for i, d in enumerate(demuxers)), key=lambda item: item[:2]):
        yield packet

