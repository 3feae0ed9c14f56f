"""The matte job on a Ray cluster: photo pairs and keyframe-aligned video segments as tasks.

``matte(..., cluster=ClusterOptions("local"))`` runs the same job as on one machine, spread
over Ray actors (``pip install "bgm-deploy[ray]"``):

* every actor loads :meth:`Predictor.from_spec` once (the job's :class:`ModelSpec`, paths made
  absolute) and runs the package's own pipeline on each task: photo tasks are chunks of
  pairs through :class:`~.photos.PhotoSource`/:class:`~.photos.PhotoSink`; footage tasks are
  segments of the clip through :class:`~.footage.FootageSource`/:class:`~.footage.FootageSink`;
* a clip is split at keyframes (found by demuxing, without decoding) into segments of about
  ``segment_seconds``; each worker seeks to its segment's keyframe, decodes its frames and
  encodes them with the final codec into ``OUT/.bgm-segments/<n>/``; the driver then
  concatenates the segments' packets (no re-encode; timestamps put back on the source's) into
  the final file, remuxes the source's audio and renames it into place. Frame count,
  timestamps and audio are kept; with a lossless format the frames equal a one-machine run's;
* inputs are read and outputs written by the workers through **shared storage** (every node
  must see ``--src``, ``--bgr``, the model and ``-o`` at the same paths): only task
  descriptions and small results travel through Ray;
* a worker that dies (process killed, node lost) has its task retried on a fresh actor
  (``max_retries``); its partial files are temp files, removed; a driver that stops leaves
  the finished segments, and a rerun does only the missing ones (photos: with
  ``skip_existing``, as on one machine).

:class:`MatteBatches` is the same model as a Ray Data ``map_batches`` callable, for users who
build their own pipelines.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import fractions
import heapq
import json
import logging
import math
import os
import shutil
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exporters.atomic import _UMASK, TEMP_MARKER, atomic_write_text, new_temp_file
from model.errors import BgmDeployError, MissingExtraError, RuntimeUnavailableError, UsageError, VideoError

from ..images import load_image
from ..model_spec import ModelSpec
from ..predictor import Predictor
from .footage import (
    FootageSink,
    FootageSource,
    OutputPlan,
    open_footage,
    output_path,
    read_manifest,
    write_manifest,
)
from .options import MatteOptions
from .photos import Pair, PairPlan, PairResult, PhotoSink, PhotoSource, output_paths
from .pipeline import Counts, Progress, StageTimes, Unit, run_pipeline
from .video_io import FORMATS, Frame, SequenceWriter, StreamInfo, VideoFormat, import_av, open_source

log = logging.getLogger(__name__)

RAY_INSTALL_HINT = 'pip install "bgm-deploy[ray]"'
SEGMENTS_DIR = ".bgm-segments"
PLAN_FILE = "plan.json"
PLAN_SCHEMA_VERSION = 1
# Containers segment files are written in: NUT keeps any time base exactly (a segment's
# timestamps survive the round trip); it cannot hold ProRes, which goes in MOV.
_SEGMENT_CONTAINERS = {"prores_ks": ("mov", ".mov")}
_DEFAULT_SEGMENT_CONTAINER = ("nut", ".nut")
# Ray's own env switch: 0 makes Ray take 127.0.0.1 as this node's address (a local instance
# then listens on loopback only). Read when ray is imported.
_RAY_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOCAL_OBJECT_STORE_BYTES = 256 << 20

Status = Callable[[str], None]


@dataclass(frozen=True)
class ClusterOptions:
    """Where and how a matte job runs on Ray.

    Attributes:
        address: ``local`` (start a Ray instance on this machine, private to it: loopback only,
            stopped at the end), ``auto`` (join the running cluster Ray finds, as ``ray.init``
            does) or ``HOST:PORT`` / ``ray://HOST:PORT`` of a running cluster.
        workers: actors (one model each); None: as many as the cluster's CPUs (GPUs for a GPU
            target) allow.
        cpus_per_worker: CPUs each actor asks for; a CPU target runs that many intra-op threads
            unless the model spec says otherwise.
        gpus_per_worker: GPUs each actor asks for; None: 1 when the target runs on a GPU, else 0.
        segment_seconds: footage: the length segments aim at (they start at keyframes; a clip
            shorter than ``workers`` segments of that length is cut into ``workers`` pieces).
        photos_per_task: photo pairs per task; None: enough tasks for 4 per worker (at most 64
            pairs each).
        max_retries: times a task is retried after its worker died.
        local_cpus: ``local``: CPUs the instance offers (None: every core).
        start_timeout: seconds a worker may take to be placed and load the model.
    """

    address: str = "local"
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None
    segment_seconds: float = 10.0
    photos_per_task: int | None = None
    max_retries: int = 3
    local_cpus: int | None = None
    start_timeout: float = 600.0

    def __post_init__(self) -> None:
        if not self.address or not isinstance(self.address, str):
            raise UsageError("--ray needs local, auto or the HOST:PORT of a running Ray cluster")
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"--ray-workers {self.workers} is not valid; it must be >= 1")
        if not self.cpus_per_worker > 0:
            raise UsageError(f"cpus_per_worker={self.cpus_per_worker} is not valid; it must be > 0")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise UsageError(f"gpus_per_worker={self.gpus_per_worker} is not valid; it must be >= 0")
        if not self.segment_seconds > 0:
            raise UsageError(f"--segment-seconds {self.segment_seconds} is not valid; it must be > 0")
        if self.photos_per_task is not None and self.photos_per_task < 1:
            raise UsageError(f"photos_per_task={self.photos_per_task} is not valid; it must be >= 1")
        if self.max_retries < 0:
            raise UsageError(f"max_retries={self.max_retries} is not valid; it must be >= 0")
        if self.local_cpus is not None and (self.local_cpus < 1 or self.address != "local"):
            raise UsageError("local_cpus applies to --ray local only and must be >= 1")

    @property
    def is_local(self) -> bool:
        return self.address == "local"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Options that do not apply on a cluster, with why (the CLI flag names them).
_REFUSED_FOOTAGE = {
    "max_frames": ("--max-frames", "a preview runs on one machine; drop --ray"),
    "allow_partial": ("--allow-partial", "a clip split into segments must decode whole"),
}


def check_cluster_job(options: MatteOptions, footage: bool, live: bool, sequence: bool, servers: Any,
                      model: Any) -> None:
    """Refuses, before any work, what a cluster job cannot do (one line naming the option).

    Raises:
        UsageError.
    """
    if servers is not None:
        raise UsageError("--ray and --server are alternatives: Ray workers load the model themselves; pass one")
    if not isinstance(model, ModelSpec):
        raise UsageError("--ray needs a model spec (--model, --checkpoint or --seed): each Ray worker loads it; a "
                         "loaded Predictor cannot be sent to other machines")
    if not footage:
        return
    if live or options.src_format is not None:
        raise UsageError("--ray splits a clip into segments; a live source has no end to split: drop --ray")
    for name, (flag, why) in _REFUSED_FOOTAGE.items():
        value = getattr(options, name)
        if value not in (None, False):
            raise UsageError(f"{flag} does not apply with --ray ({why})")
    if options.align and options.align_how == "clip":
        raise UsageError("--align with --ray: each segment would fit its own homography; pass --align-mode frame "
                         "(one per frame, the same on every worker) or drop --ray")


def check_cluster_spec(spec: ModelSpec) -> None:
    """The spec's files and target, checked on the driver; a GPU target's device is checked by
    the workers (the driver may have no GPU)."""
    try:
        spec.check()
    except RuntimeUnavailableError:
        if spec.resolve_target().device == "cpu":
            raise


# -- Ray -----------------------------------------------------------------------------------------
def import_ray(loopback: bool = False) -> Any:
    """Ray, or a :class:`MissingExtraError` naming the install command.

    Args:
        loopback: the cluster is on this machine's loopback address: Ray is told to take
            127.0.0.1 as the node address (before it is imported).
    """
    if loopback:
        os.environ.setdefault(_RAY_LOOPBACK_ENV, "0")
        # A private instance reports nothing to Ray's usage statistics service.
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray  # optional extra "ray"
    except ImportError:
        raise MissingExtraError(f"--ray needs Ray, which is not installed: {RAY_INSTALL_HINT}") from None
    return ray


def _is_loopback(address: str) -> bool:
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


@contextlib.contextmanager
def connect(options: ClusterOptions, say: Status) -> Iterator[Any]:
    """Joins the cluster (or starts a local instance) for the job; leaves it as it found it.

    Yields:
        The ``ray`` module, initialised.

    Raises:
        MissingExtraError: Ray is not installed; BgmDeployError: the cluster cannot be reached.
    """
    ray = import_ray(loopback=options.is_local or _is_loopback(options.address))
    if ray.is_initialized():  # the caller's own session (a notebook, a Ray job): use it, leave it
        yield ray
        return
    say("starting a local Ray instance ..." if options.is_local else f"joining the Ray cluster at {options.address} ...")
    started = time.perf_counter()
    settings: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False, "include_dashboard": False}
    try:
        if options.is_local:
            # Only task descriptions and small results travel through the object store.
            ray.init(num_cpus=options.local_cpus, object_store_memory=LOCAL_OBJECT_STORE_BYTES, **settings)
        else:
            ray.init(address=options.address, **settings)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise BgmDeployError(f"--ray {options.address}: cannot connect ({_first_line(exc)}); start the cluster "
                             "(ray start --head) or pass --ray local") from None
    say(f"Ray ready in {time.perf_counter() - started:.1f} s ({_describe_resources(ray.cluster_resources())})")
    try:
        yield ray
    finally:
        ray.shutdown()


def _describe_resources(resources: dict[str, float]) -> str:
    nodes = sum(1 for key in resources if key.startswith("node:") and key != "node:__internal_head__")
    return f"{nodes} node(s), {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# -- the worker ------------------------------------------------------------------------------------
@dataclass
class TaskResult:
    """What one task sends back (small: the work itself went to shared storage)."""

    worker: int
    units: int
    seconds: float
    items: list[PairResult] = field(default_factory=list)
    stages: StageTimes = field(default_factory=StageTimes)
    error: BaseException | None = None


@dataclass(frozen=True)
class PhotoTask:
    """A chunk of photo pairs."""

    index: int
    pairs: tuple[Pair, ...]
    output: str
    options: MatteOptions


@dataclass(frozen=True)
class Segment:
    """A run of frames starting at a keyframe.

    Attributes:
        index: position in the clip.
        first: index of its first frame in the clip.
        count: frames.
        start_pts: presentation timestamp of its first frame (a keyframe), source time base.
        end_pts: that of the next segment's first frame (None: to the end of the clip).
    """

    index: int
    first: int
    count: int
    start_pts: int
    end_pts: int | None


@dataclass(frozen=True)
class SegmentTask:
    """One segment of a clip, every output kind still to do."""

    segment: Segment
    src: str
    bgr: str
    folder: str
    kinds: tuple[str, ...]
    formats: dict[str, str]
    options: MatteOptions


class MatteWorker:
    """A Ray actor's state: one predictor, loaded once, and the tasks it runs.

    ``__init__`` never raises (Ray would report a failed actor without our message): a model
    that cannot load is reported by :meth:`ready`.
    """

    def __init__(self, spec_json: str, worker: int, footage: bool) -> None:
        self.worker = worker
        self.error: BaseException | None = None
        self.predictor: Predictor | None = None
        started = time.perf_counter()
        try:
            # Footage: the decoder and encoders share the actor's cores with the model.
            self.predictor = Predictor.from_spec(ModelSpec.from_json(spec_json), shared_cores=footage)
        except BgmDeployError as exc:
            self.error = exc
        self.load_seconds = time.perf_counter() - started

    def ready(self) -> dict[str, Any]:
        """Where this worker runs and what it loaded (or why it could not)."""
        info: dict[str, Any] = {"worker": self.worker, "host": socket.gethostname(), "pid": os.getpid(),
                                "load_seconds": self.load_seconds}
        with contextlib.suppress(Exception):  # outside an actor (tests) there is no runtime context
            import ray  # optional extra; present in every Ray worker

            info["node"] = ray.get_runtime_context().get_node_id()
        if self.error is not None:
            info["error"] = self.error
        elif self.predictor is not None:
            info["model"] = self.predictor.describe()
        return info

    def photos(self, task: PhotoTask) -> TaskResult:
        """Mattes a chunk of pairs into the shared output folder (each file atomic)."""
        started = time.perf_counter()
        result = TaskResult(self.worker, 0, 0.0)
        plan = PairPlan(list(task.pairs), [], [], [], [])
        source = PhotoSource(plan, task.options, task.options.backdrop_value)
        sink = PhotoSink(Path(task.output), task.options, result.items, result.stages)
        counts = Counts()
        try:
            run_pipeline(source, self.predictor, sink, task.options, result.stages, counts)
        except BgmDeployError as exc:
            sink.abort()
            result.error = exc
        except BaseException:
            sink.abort()
            raise
        result.units = counts.matted + counts.failed
        result.seconds = time.perf_counter() - started
        return result

    def segment(self, task: SegmentTask) -> TaskResult:
        """Mattes one segment into its own folder (see :func:`matte_segment`)."""
        started = time.perf_counter()
        result = TaskResult(self.worker, 0, 0.0)
        try:
            result.units = matte_segment(self.predictor, task, result.stages)
        except BgmDeployError as exc:
            result.error = exc
        result.seconds = time.perf_counter() - started
        return result


# -- footage: segments ---------------------------------------------------------------------------------
class SegmentSource:
    """The frames of one segment of a video file or image sequence, as a footage source.

    Frames keep their index and name in the whole clip; their timestamps are rebased to start
    at 0 (the segment file's own timeline; the join puts ``start_pts`` back).
    """

    def __init__(self, spec: str, segment: Segment, rate: float | None, threads: int) -> None:
        self.segment = segment
        self.inner = open_source(spec, rate, threads=threads)  # the one-machine job's opener
        self.spec = spec
        self.live = False
        self.stopped: str | None = None
        self.audio_stream = None
        self.info: StreamInfo = dataclasses.replace(self.inner.info, frames=segment.count)
        self.decoded = 0

    def frames(self) -> Iterator[Frame]:
        segment = self.segment
        paths = getattr(self.inner, "paths", None)
        if paths is not None:  # an image sequence: read its own files only
            for index in range(segment.first, segment.first + segment.count):
                rgb = load_image(paths[index])
                yield Frame(index, index - segment.first, float(index / self.info.rate), rgb, paths[index].stem)
                self.decoded += 1
            return
        inner = self.inner
        if segment.index > 0:
            # Backward: the keyframe at or before start_pts; frames before it are decoded and dropped.
            inner.container.seek(segment.start_pts, stream=inner.stream, backward=True, any_frame=False)
        for frame in inner.frames():
            if frame.pts < segment.start_pts:
                continue
            if segment.end_pts is not None and frame.pts >= segment.end_pts:
                break
            index = segment.first + self.decoded
            yield Frame(index, frame.pts - segment.start_pts, frame.time, frame.rgb, f"{index:06d}")
            self.decoded += 1
            if self.decoded == segment.count:
                break
        if self.decoded != segment.count:
            raise VideoError(f"{self.spec}: segment {segment.index} (frames {segment.first}-"
                             f"{segment.first + segment.count - 1}) decoded {self.decoded} of {segment.count} frames; "
                             "the file is truncated or corrupt: re-encode it, or matte it without --ray")

    def close(self) -> None:
        self.inner.close()


def segment_format(fmt: VideoFormat) -> VideoFormat:
    """The format a segment of an output is written in: the final codec, in a container that
    keeps the timestamps exactly (see ``_SEGMENT_CONTAINERS``)."""
    container, suffix = _SEGMENT_CONTAINERS.get(fmt.codec or "", _DEFAULT_SEGMENT_CONTAINER)
    return dataclasses.replace(fmt, container=container, suffix=suffix)


def _segment_folder(folder: Path, segment: Segment) -> Path:
    return folder / f"{segment.index:05d}"


def segment_complete(folder: Path, segment: Segment, kinds: tuple[str, ...], formats: dict[str, VideoFormat]) -> bool:
    """Whether a segment's folder holds every kind, complete (its manifest says so, the files exist)."""
    where = _segment_folder(folder, segment)
    state = read_manifest(where).get("outputs", {})
    for kind in kinds:
        record = state.get(kind, {})
        path = output_path(where, kind, segment_format(formats[kind]) if not formats[kind].is_sequence else formats[kind])
        if not record.get("complete") or record.get("frames") != segment.count or not path.exists():
            return False
        if formats[kind].is_sequence and sum(1 for p in path.iterdir() if p.suffix == ".png") != segment.count:
            return False  # an interrupted join moved some of its frames already
    return True


def matte_segment(predictor: Any, task: SegmentTask, times: StageTimes) -> int:
    """Mattes one segment with the package's footage source and sink into its folder.

    The folder is emptied first (what a killed attempt left), so a segment's files are
    either complete (recorded in its ``.bgm-matte.json``) or absent.

    Returns:
        Frames matted.
    """
    segment = task.segment
    where = _segment_folder(Path(task.folder), segment)
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    options = dataclasses.replace(task.options, overwrite=False, skip_existing=False, audio=None)
    # The one-machine opener checks the plate and backdrop against the source; the segment
    # then reads its own frames.
    footage = open_footage(task.src, task.bgr, options)
    footage.source.close()
    try:
        source = SegmentSource(task.src, segment, options.rate, options.workers)
    except BaseException:
        footage.close()
        raise
    segment_footage = FootageSource(source, footage.plate, footage.backdrop, footage.colour, options)
    sink = None
    try:
        for plate in (footage.plate, footage.backdrop):
            _advance(plate, segment.first)
        formats = {kind: FORMATS[task.formats[kind]] for kind in task.kinds}
        plan = OutputPlan({kind: fmt if fmt.is_sequence else segment_format(fmt) for kind, fmt in formats.items()},
                          list(task.kinds), {})
        size = options.resize or source.info.size
        sink = FootageSink(where, plan, source.info, options, times, size)
        _no_reordering(sink)
        counts = Counts()
        run_pipeline(segment_footage, predictor, sink, options, times, counts, fatal_unit_errors=True)
        sink.finish(None, complete=True, source=f"{task.src} segment {segment.index}")
        sink = None
        return counts.matted
    finally:
        if sink is not None:
            sink.abort()
        segment_footage.close()


def _advance(plate: Any, frames: int) -> None:
    """A background (or backdrop) video moved to a segment's first frame (decoded and dropped:
    frame for frame in step with the source, as the one-machine job reads it)."""
    if plate is None or plate.video is None:
        return
    for index in range(frames):
        plate.next(Frame(index, index, 0.0, np.empty((0, 0, 3), np.uint8)))


def _no_reordering(sink: FootageSink) -> None:
    """x264 segments without B-frames: a segment then ends on a whole frame in decode order as
    in display order, and the joined stream's decode timestamps stay increasing (the default
    preset, ultrafast, has none anyway)."""
    for writer in sink.writers.values():
        if getattr(writer, "fmt", None) is not None and writer.fmt.quality == "x264":
            writer.stream.options = {**writer.stream.options, "bf": "0"}


def plan_segments(spec: str, info: StreamInfo, options: ClusterOptions, workers: int) -> list[Segment]:
    """Cuts a clip into keyframe-aligned segments (video files: demuxed, not decoded; image
    sequences: any frame).

    Raises:
        VideoError: the file cannot be read.
    """
    if info.kind == "sequence":
        total = int(info.frames or 0)
        keyframes = list(range(total))
        pts = list(range(total))
    else:
        pts, keyframes = _keyframes(spec)
        total = len(pts)
    if total == 0:
        raise VideoError(f"{spec} has no frames; give a clip with at least one frame")
    # Enough segments for ``segment_seconds`` each, and at least four per worker so a short
    # clip still spreads evenly (a worker that finishes early takes the next one); cut at the
    # keyframes nearest to even shares.
    rate = float(info.rate or 30)
    wanted = max(math.ceil(total / max(1.0, options.segment_seconds * rate)), 4 * max(workers, 1))
    starts = _even_starts(keyframes, total, wanted)
    segments = []
    for number, first in enumerate(starts):
        end = starts[number + 1] if number + 1 < len(starts) else total
        segments.append(Segment(number, first, end - first, pts[first], pts[end] if end < total else None))
    return segments


def _even_starts(keyframes: list[int], total: int, wanted: int) -> list[int]:
    """First frames of about ``wanted`` segments: frame 0, then the keyframes nearest to even
    shares of ``total`` (every keyframe when there are no more than that)."""
    candidates = [index for index in keyframes if 0 < index < total]
    if len(candidates) < wanted:
        return [0, *candidates]
    starts = [0]
    for number in range(1, wanted):
        target = number * total / wanted
        at = bisect.bisect_left(candidates, target)
        around = [index for index in candidates[max(0, at - 1):at + 1] if index > starts[-1]]
        if not around:  # both neighbours taken: the next free keyframe
            after = bisect.bisect_right(candidates, starts[-1])
            around = candidates[after:after + 1]
        if around:
            starts.append(min(around, key=lambda index: (abs(index - target), index)))
    return starts


def _keyframes(spec: str) -> tuple[list[int], list[int]]:
    """Display timestamps of every frame (sorted) and the frame indices that are keyframes."""
    av = import_av()
    try:
        with av.open(spec) as container:
            stream = container.streams.video[0]
            packets = [(packet.pts, bool(packet.is_keyframe)) for packet in container.demux(stream)
                       if packet.pts is not None]
    except av.FFmpegError as exc:
        raise VideoError(f"{spec}: cannot read its packets ({exc}); re-encode it, or matte it without --ray") from None
    packets.sort()
    return [pts for pts, _ in packets], [index for index, (_, key) in enumerate(packets) if key]


def join_segments(parts: list[tuple[Path, int]], final: Path, fmt: VideoFormat, info: StreamInfo,
                  audio_from: str | None) -> tuple[int, str | None]:
    """Concatenates segment files into ``final`` without re-encoding, atomically.

    Packets are copied; each segment's timestamps are shifted back by its start (they were
    rebased to 0), so every frame keeps its source timestamp. The source's first audio
    stream is remuxed in, interleaved by time.

    Args:
        parts: ``(segment file, start pts in the source's time base)`` in order.
        audio_from: the source file whose audio to carry (None: video only).

    Returns:
        Frames written, and a note when the container could not take the audio.
    """
    av = import_av()
    note = None
    if audio_from is not None:
        try:
            return _join(av, parts, final, fmt, info, audio_from), None
        except (av.FFmpegError, ValueError) as exc:
            note = (f"{final.name}: audio not carried over ({_first_line(exc)}); pick a format whose container "
                    "takes the source's audio codec (mp4/mkv/mov)")
            log.warning("%s", note)
    return _join(av, parts, final, fmt, info, None), note


def _join(av: Any, parts: list[tuple[Path, int]], final: Path, fmt: VideoFormat, info: StreamInfo,
          audio_from: str | None) -> int:
    temp = new_temp_file(final, ".part")
    frames = 0
    try:
        with contextlib.ExitStack() as stack:
            inputs = [stack.enter_context(av.open(str(path))) for path, _ in parts]
            out = stack.enter_context(av.open(str(temp), "w", format=fmt.container))
            video_out = out.add_stream_from_template(inputs[0].streams.video[0])
            video_out.time_base = info.time_base  # as the one-machine writer sets it
            streams: list[Iterator[Any]] = [_shifted_video(inputs, [start for _, start in parts], info)]
            audio_out = None
            if audio_from is not None:
                audio_in = stack.enter_context(av.open(audio_from))
                if audio_in.streams.audio:
                    audio_out = out.add_stream_from_template(audio_in.streams.audio[0])
                    streams.append(audio_in.demux(audio_in.streams.audio[0]))
            for packet in _by_time(streams):
                if packet.stream.type == "video":
                    packet.stream = video_out
                    frames += 1
                else:
                    packet.stream = audio_out
                out.mux(packet)
        os.chmod(temp, 0o666 & ~_UMASK)
        os.replace(temp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    return frames


def _shifted_video(inputs: list[Any], starts: list[int], info: StreamInfo) -> Iterator[Any]:
    """Every segment's video packets in order, timestamps back on the source's timeline."""
    last_dts: int | None = None
    for container, start in zip(inputs, starts):
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            if packet.pts is None and packet.dts is None:
                continue  # the demuxer's end-of-stream flush packet
            shift = fractions.Fraction(start) * info.time_base / packet.time_base
            if shift.denominator != 1:
                raise VideoError(f"segment timestamps of {container.name} cannot be shifted exactly "
                                 f"({start} in {info.time_base} is not a multiple of {packet.time_base})")
            offset = int(shift)
            if packet.pts is not None:
                packet.pts += offset
            if packet.dts is not None:
                packet.dts += offset
                if last_dts is not None and packet.dts <= last_dts:
                    packet.dts = last_dts + 1
                last_dts = packet.dts
            yield packet


def _by_time(streams: list[Iterator[Any]]) -> Iterator[Any]:
    """Packets of several streams interleaved by decode time (muxers want them so)."""
    def keyed(number: int, packets: Iterator[Any]) -> Iterator[tuple[fractions.Fraction, int, Any]]:
        for packet in packets:
            stamp = packet.dts if packet.dts is not None else packet.pts
            if stamp is None:
                continue
            yield fractions.Fraction(stamp) * packet.time_base, number, packet

    for _, _, packet in heapq.merge(*(keyed(n, s) for n, s in enumerate(streams)), key=lambda item: item[:2]):
        yield packet


# -- the driver ---------------------------------------------------------------------------------------
@dataclass
class ClusterStats:
    """What the report's ``cluster`` section holds."""

    address: str
    workers: int = 0
    nodes: int = 0
    tasks: int = 0
    tasks_reused: int = 0
    retries: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    per_worker: dict[str, dict[str, Any]] = field(default_factory=dict)
    segments: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Pool:
    """Actors that each hold one predictor, fed one task at a time; a dead actor is replaced
    and its task retried."""

    def __init__(self, ray: Any, spec: ModelSpec, options: ClusterOptions, footage: bool, stats: ClusterStats,
                 say: Status) -> None:
        self.ray, self.options, self.footage, self.stats, self.say = ray, options, footage, stats, say
        target = spec.resolve_target()
        gpus = options.gpus_per_worker if options.gpus_per_worker is not None else (1.0 if target.device == "cuda" else 0.0)
        if spec.threads is None and target.device == "cpu":
            # One actor per CPU it asked for: its runtime must not use every core of the node.
            spec = dataclasses.replace(spec, threads=max(1, int(options.cpus_per_worker)))
        self.spec_json = spec.with_paths_resolved().to_json()
        resources = ray.cluster_resources()
        if gpus and not resources.get("GPU"):
            raise RuntimeUnavailableError(
                f"target {target.name} runs on a GPU but the Ray cluster at {options.address} has none "
                f"({_describe_resources(resources)}); add GPU nodes, or pick a CPU target (--target cpu)")
        count = options.workers
        if count is None:
            by_cpu = int(resources.get("CPU", 1) // options.cpus_per_worker)
            count = max(1, int(resources.get("GPU", 0) // gpus) if gpus else by_cpu)
        if count * options.cpus_per_worker > resources.get("CPU", 0):
            say(f"warning: {count} workers x {options.cpus_per_worker:g} CPUs exceed the cluster's "
                f"{resources.get('CPU', 0):g} CPUs; some wait until the cluster grows")
        self.actor_class = ray.remote(num_cpus=options.cpus_per_worker, num_gpus=gpus, max_restarts=0,
                                      max_task_retries=0)(MatteWorker)
        self.actors: list[Any] = []
        self.model: dict[str, Any] = {}
        self._keys: dict[int, str] = {}
        started = time.perf_counter()
        self.actors = [self._start(number) for number in range(count)]
        infos = [self._ready(actor) for actor in self.actors]
        stats.seconds["start_workers"] = time.perf_counter() - started
        stats.workers = count
        stats.nodes = len({info.get("node") for info in infos})
        for info in infos:
            self._record(info)
        self.model = infos[0].get("model", {})
        say(f"{count} Ray worker(s) on {stats.nodes} node(s) loaded the model in {stats.seconds['start_workers']:.1f} s")

    def _start(self, number: int) -> Any:
        return self.actor_class.remote(self.spec_json, number, self.footage)

    def _ready(self, actor: Any) -> dict[str, Any]:
        try:
            info = self.ray.get(actor.ready.remote(), timeout=self.options.start_timeout)
        except self.ray.exceptions.GetTimeoutError:
            raise BgmDeployError(f"a Ray worker did not start within {self.options.start_timeout:g} s (the cluster "
                                 "lacks the CPUs/GPUs it asks for, or loading the model hangs); pass fewer "
                                 "--ray-workers or grow the cluster") from None
        except self.ray.exceptions.RayError as exc:
            raise BgmDeployError(f"a Ray worker could not start ({_first_line(exc)}); check that every node has "
                                 f"bgm-deploy and its extras installed ({RAY_INSTALL_HINT})") from None
        error = info.get("error")
        if error is not None:
            raise type(error)(f"Ray worker on {info.get('host')}: {error}")
        return info

    def _record(self, info: dict[str, Any]) -> None:
        key = f"{info['worker']}@{info['host']}:{info['pid']}"
        self.stats.per_worker[key] = {"node": info.get("node"), "load_seconds": info["load_seconds"], "tasks": 0,
                                      "units": 0, "busy_seconds": 0.0}
        self._keys[info["worker"]] = key

    def run(self, tasks: list[Any], method: str, done: Callable[[Any, TaskResult], None]) -> None:
        """Runs every task; ``done(task, result)`` after each, on this thread."""
        ray = self.ray
        pending: deque[tuple[Any, int]] = deque((task, 0) for task in tasks)
        idle = deque(range(len(self.actors)))
        flying: dict[Any, tuple[int, Any, int]] = {}
        while pending or flying:
            while pending and idle:
                number = idle.popleft()
                task, attempt = pending.popleft()
                flying[getattr(self.actors[number], method).remote(task)] = (number, task, attempt)
            ready, _ = ray.wait(list(flying), num_returns=1)
            for ref in ready:
                number, task, attempt = flying.pop(ref)
                try:
                    result: TaskResult = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                        ray.exceptions.ObjectLostError) as exc:
                    self.stats.retries += 1
                    if attempt >= self.options.max_retries:
                        raise BgmDeployError(f"a Ray worker died {attempt + 1} times running the same task "
                                             f"({_first_line(exc)}); see the Ray logs (/tmp/ray/session_latest/logs)") from None
                    self.say(f"Ray worker {number} died ({_first_line(exc)}); retrying its task on a new worker")
                    pending.appendleft((task, attempt + 1))
                    with contextlib.suppress(Exception):  # it is dead already; make sure
                        ray.kill(self.actors[number])
                    self.actors[number] = self._start(number)
                    self._record(self._ready(self.actors[number]))
                    idle.append(number)
                    continue
                except ray.exceptions.RayTaskError as exc:  # not ours (an OSError on shared storage, a bug)
                    cause = getattr(exc, "cause", None) or exc
                    raise BgmDeployError(f"a Ray worker failed running a task: {type(cause).__name__}: "
                                         f"{_first_line(cause)}; see the Ray logs (/tmp/ray/session_latest/logs)") from None
                if result.error is not None:
                    raise result.error
                row = self.stats.per_worker[self._keys[result.worker]]
                row["tasks"] += 1
                row["units"] += result.units
                row["busy_seconds"] += result.seconds
                self.stats.tasks += 1
                idle.append(number)
                done(task, result)

    def close(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):  # a dead actor, or the cluster gone
                self.ray.kill(actor)
        self.actors = []


def _finish_stats(stats: ClusterStats) -> None:
    for row in stats.per_worker.values():
        row["units_per_second"] = row["units"] / row["busy_seconds"] if row["busy_seconds"] > 0 else None


def _merge_stages(total: StageTimes, part: StageTimes) -> None:
    for name in ("decode", "predict", "infer", "wait_decode", "wait_encode", "finalize"):
        setattr(total, name, getattr(total, name) + getattr(part, name))
    for kind, seconds in part.encode.items():
        total.encode[kind] = total.encode.get(kind, 0.0) + seconds


def _remove_temp_files(folders: list[Path]) -> list[Path]:
    """Temp files left under the outputs by workers that died (on any node: every task has
    finished, so none is being written)."""
    removed = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in folder.rglob(f"*{TEMP_MARKER}*"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def matte_photos_on_cluster(pairs: list[Pair], output: Path, spec: ModelSpec, options: MatteOptions,
                            cluster: ClusterOptions, results: list[PairResult], stages: StageTimes,
                            progress: Progress | None, say: Status, offset: int = 0,
                            total: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Mattes photo pairs on Ray workers into ``output`` (shared storage).

    Pairs whose outputs all exist are skipped here with ``skip_existing``.

    Returns:
        ``(model description, cluster statistics)``.
    """
    stats = ClusterStats(cluster.address)
    total = len(pairs) + offset if total is None else total
    done = offset
    todo = []
    for pair in pairs:
        paths = output_paths(output, pair.name, options)
        if options.skip_existing and all(path.exists() for path in paths.values()):
            results.append(PairResult(str(pair.src), str(pair.bgr), "skipped", outputs=[str(p) for p in paths.values()]))
            done += 1
            if progress is not None:
                progress(done, total, Unit(pair.name, -1, meta=pair), "skipped", None)
        else:
            todo.append(pair)
    stats.tasks_reused = len(pairs) - len(todo)
    if not todo:
        return {"source": spec.source, "loaded": False}, stats.to_dict()
    with connect(cluster, say) as ray:
        pool = _Pool(ray, spec, cluster, False, stats, say)
        try:
            size = cluster.photos_per_task or max(1, min(64, math.ceil(len(todo) / (4 * len(pool.actors)))))
            # Workers get absolute paths (their working folder is not ours); reports keep the user's.
            given = {str(pair.src.resolve()): pair for pair in todo}
            absolute = [Pair(pair.src.resolve(), pair.bgr.resolve(), pair.name) for pair in todo]
            tasks = [PhotoTask(number, tuple(absolute[start:start + size]), str(output.resolve()), options)
                     for number, start in enumerate(range(0, len(todo), size))]

            def finished(task: PhotoTask, result: TaskResult) -> None:
                nonlocal done
                _merge_stages(stages, result.stages)
                for item in result.items:
                    pair = given.get(item.src)
                    if pair is not None:
                        item.src, item.bgr = str(pair.src), str(pair.bgr)
                    results.append(item)
                    done += 1
                    if progress is not None:
                        progress(done, total, Unit(pair.name if pair else item.src, -1, meta=pair), item.status,
                                 item.error)

            started = time.perf_counter()
            pool.run(tasks, "photos", finished)
            stats.seconds["run"] = time.perf_counter() - started
            model = pool.model
        finally:
            pool.close()
            _remove_temp_files([output / kind for kind in options.outputs])
    _finish_stats(stats)
    return model, stats.to_dict()


def _fingerprint(src: str, bgr: str, spec: ModelSpec, options: MatteOptions, info: StreamInfo) -> dict[str, Any]:
    """What a segment's content depends on: a rerun reuses segments only when it is the same."""
    def stat(path: str | None) -> list[Any] | None:
        if path is None or not Path(path).exists():
            return None
        status = Path(path).stat()
        return [str(Path(path).resolve()), status.st_size, status.st_mtime_ns]

    kept = {key: value for key, value in options.to_dict().items()
            if key not in ("overwrite", "skip_existing", "workers", "queue_size", "outputs", "audio")}
    return {"src": stat(src) if Path(src).is_file() else str(Path(src).resolve()), "bgr": stat(bgr),
            "backdrop": stat(options.backdrop), "model": spec.with_paths_resolved().to_dict(), "options": kept,
            "model_file": stat(spec.model), "checkpoint": stat(spec.checkpoint), "frames": info.frames,
            "time_base": str(info.time_base)}


def _load_plan(folder: Path, fingerprint: dict[str, Any]) -> list[Segment] | None:
    try:
        data = json.loads((folder / PLAN_FILE).read_text())
    except (OSError, ValueError):
        return None
    same = data.get("fingerprint") == json.loads(json.dumps(fingerprint, default=str))
    if data.get("schema_version") != PLAN_SCHEMA_VERSION or not same:
        return None
    return [Segment(**row) for row in data["segments"]]


def matte_footage_on_cluster(src: str | Path, bgr: str | Path, output: Path, spec: ModelSpec, options: MatteOptions,
                             info: StreamInfo, formats: dict[str, VideoFormat], kinds: list[str], cluster: ClusterOptions,
                             stages: StageTimes, progress: Progress | None, say: Status
                             ) -> tuple[dict[str, Any], dict[str, Any], dict[str, str], dict[str, int], list[str]]:
    """Mattes a clip on Ray workers, segment by segment, and joins the segments.

    Segments are planned once and recorded in ``OUT/.bgm-segments/plan.json``; a rerun of
    the same job (same source, model and options) keeps the complete segments and does the
    rest. ``overwrite`` starts over.

    Returns:
        ``(model description, cluster statistics, {kind: output path}, counts, notes)``.
    """
    stats = ClusterStats(cluster.address)
    folder = output / SEGMENTS_DIR
    src, bgr = str(src), str(bgr)
    fingerprint = _fingerprint(src, bgr, spec, options, info)
    if options.overwrite:
        shutil.rmtree(folder, ignore_errors=True)
    model: dict[str, Any] = {"source": spec.source, "loaded": False}
    notes: list[str] = []
    with connect(cluster, say) as ray:
        started = time.perf_counter()
        segments = _load_plan(folder, fingerprint)
        if segments is None:
            shutil.rmtree(folder, ignore_errors=True)
            workers = cluster.workers or max(1, int(ray.cluster_resources().get("CPU", 1) // cluster.cpus_per_worker))
            segments = plan_segments(src, info, cluster, workers)
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(folder / PLAN_FILE, json.dumps(
                {"schema_version": PLAN_SCHEMA_VERSION, "fingerprint": fingerprint,
                 "segments": [asdict(segment) for segment in segments]}, indent=2, default=str))
        stats.seconds["split"] = time.perf_counter() - started
        total = sum(segment.count for segment in segments)
        todo = [segment for segment in segments if not segment_complete(folder, segment, tuple(kinds), formats)]
        stats.tasks_reused = len(segments) - len(todo)
        stats.segments = [{**asdict(segment), "reused": segment not in todo} for segment in segments]
        done = total - sum(segment.count for segment in todo)
        if todo:
            say(f"{len(segments)} segment(s) of {total} frames; {len(todo)} to matte"
                + (f", {len(segments) - len(todo)} done already" if len(todo) < len(segments) else ""))
            pool = _Pool(ray, spec, cluster, True, stats, say)
            try:
                tasks = [SegmentTask(segment, str(Path(src).resolve()), str(Path(bgr).resolve()), str(folder.resolve()),
                                     tuple(kinds), {kind: formats[kind].name for kind in kinds}, options)
                         for segment in todo]

                def finished(task: SegmentTask, result: TaskResult) -> None:
                    nonlocal done
                    done += result.units
                    _merge_stages(stages, result.stages)
                    if progress is not None:
                        progress(done, total, None, "ok", None)

                started = time.perf_counter()
                pool.run(tasks, "segment", finished)
                stats.seconds["run"] = time.perf_counter() - started
                model = pool.model
            finally:
                pool.close()
    started = time.perf_counter()
    outputs, frames_out = {}, {}
    audio = src if options.audio_value and info.kind == "video" and info.audio else None
    for kind in kinds:
        fmt = formats[kind]
        final = output_path(output, kind, fmt)
        if fmt.is_sequence:
            if options.overwrite:
                SequenceWriter.clear(final)
            final.mkdir(parents=True, exist_ok=True)
            count = 0
            for segment in segments:
                for frame in sorted(output_path(_segment_folder(folder, segment), kind, fmt).glob("*.png")):
                    os.replace(frame, final / frame.name)
                    count += 1
        else:
            parts = [(output_path(_segment_folder(folder, segment), kind, segment_format(fmt)), segment.start_pts)
                     for segment in segments]
            count, note = join_segments(parts, final, fmt, info, audio)
            if note:
                notes.append(note)
        if count != total:
            raise VideoError(f"joining {kind}: {count} frames from the segments, expected {total}; rerun the job "
                             f"(complete segments are kept) or remove {folder}")
        outputs[kind] = str(final)
        frames_out[kind] = count
    write_manifest(output, {kind: {"path": path, "frames": frames_out[kind], "complete": True}
                            for kind, path in outputs.items()}, str(src))
    shutil.rmtree(folder, ignore_errors=True)
    stats.seconds["join"] = time.perf_counter() - started
    stages.finalize += stats.seconds["join"]
    _finish_stats(stats)
    counts = {"read": total, "matted": sum(segment.count for segment in todo), "skipped": total - sum(
        segment.count for segment in todo), "lost": 0, "written": min(frames_out.values(), default=0)}
    return model, stats.to_dict(), outputs, counts, notes


# -- Ray Data ---------------------------------------------------------------------------------------------
class MatteBatches:
    """A Ray Data ``map_batches`` callable: one predictor per actor, batches of images in,
    mattes out.

    ::

        ds = ray.data.from_items([{"src": src_array, "bgr": bgr_array}, ...])
        ds = ds.map_batches(MatteBatches, fn_constructor_kwargs={"spec": spec.to_json()},
                            concurrency=2, num_cpus=1, batch_size=4)

    Args:
        spec: a :class:`ModelSpec` or its JSON (what every actor loads).
        outputs: predictor outputs to add to each batch (``pha``, ``fgr``, ``rgba``, ``err``,
            ``ref``), float32 in 0..1 (``rgba`` RGBA uint8).
        src_column / bgr_column: the batch's image columns: ``(N, H, W, 3)`` uint8 arrays, or
            object arrays of images of any sizes (matted one by one).
    """

    def __init__(self, spec: ModelSpec | str, outputs: tuple[str, ...] = ("pha", "fgr"), src_column: str = "src",
                 bgr_column: str = "bgr") -> None:
        self.spec = ModelSpec.from_json(spec) if isinstance(spec, str) else spec
        self.outputs = tuple(outputs)
        self.src_column, self.bgr_column = src_column, bgr_column
        self.predictor = Predictor.from_spec(self.spec)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for column in (self.src_column, self.bgr_column):
            if column not in batch:
                raise UsageError(f"MatteBatches: the batch has no column {column!r} (columns: {', '.join(batch)}); "
                                 "pass src_column/bgr_column")
        src, bgr = batch[self.src_column], batch[self.bgr_column]
        result = dict(batch)
        if src.dtype != object and src.ndim == 4:
            prediction = self.predictor.predict(src.transpose(0, 3, 1, 2), bgr.transpose(0, 3, 1, 2), self.outputs)
            for name in self.outputs:
                result[name] = getattr(prediction, name)
            return result
        rows = [self.predictor.predict(s, b, self.outputs) for s, b in zip(src, bgr)]
        for name in self.outputs:
            column = np.empty(len(rows), dtype=object)
            column[:] = [getattr(row, name) for row in rows]
            result[name] = column
        return result


__all__ = ["ClusterOptions", "MatteBatches", "MatteWorker", "Segment", "check_cluster_job", "join_segments",
           "matte_footage_on_cluster", "matte_photos_on_cluster", "plan_segments"]
