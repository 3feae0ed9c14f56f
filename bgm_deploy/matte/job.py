"""The matte job: photos or footage, a local model or servers, one set of rules.

``matte(src, bgr, output, model)`` decides the source (photos, or a video file / image
sequence / live stream), refuses options that do not apply to it, checks every path before
any work (an output is never an input nor inside an input tree; the report is writable;
existing outputs are replaced only when asked), loads the model once (a
:class:`~bgm_deploy.model_spec.ModelSpec`, a loaded :class:`~bgm_deploy.predictor.Predictor`,
or ``bgm-deploy serve`` servers), runs :func:`~bgm_deploy.matte.pipeline.run_pipeline`, and
writes one report. An interrupt keeps finished outputs and leaves no partial file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from exporters.atomic import atomic_write_text
from exporters.paths import check_output_dir, check_output_file
from model.config import sample_pixels_note
from model.demo import DEMO_NOTE, DEMO_WEIGHTS_PATH, demo_available
from model.errors import UsageError, VideoError

from ..model_spec import ModelSpec
from ..predictor import Predictor
from ..serve.client import TritonMatteClient
from .align import import_cv2
from .cluster import (
    ClusterOptions,
    Status,
    check_cluster_job,
    check_cluster_spec,
    matte_footage_on_cluster,
    matte_photos_on_cluster,
)
from .footage import FootageSink, is_video_job, open_footage, output_path, plan_outputs
from .options import LAYOUTS, MatteOptions
from .photos import PairResult, PhotoSink, PhotoSource, existing_outputs, find_pairs, output_paths
from .pipeline import Counts, Progress, StageTimes, Unit, run_pipeline
from .render import parse_colour
from .video_io import import_av, is_live

log = logging.getLogger(__name__)

REPORT_SCHEMA_VERSION = 2


@dataclass(frozen=True)
class ServerOptions:
    """``bgm-deploy serve`` servers to send the work to instead of loading a model.

    Attributes:
        urls: ``http://HOST:PORT`` / ``grpc://HOST:PORT``.
        model_name: the served model's name.
        concurrency: requests in flight over all servers (order is kept).
        shared_memory: pass images through Triton's system shared memory (same host only);
            None: on when every server is on this machine (the client's rule).
        padding: how the client pads sizes that are not a multiple of 4 (``replicate``, ``reflect``).
    """

    urls: tuple[str, ...]
    model_name: str = "bgm"
    concurrency: int = 4
    shared_memory: bool | None = None
    padding: str = "replicate"


@dataclass
class MatteReport:
    """Everything a matte job did; ``ok`` is False when something was not matted.

    ``items`` has one row per photo pair (photos) and is empty for footage, whose frames are
    counted in ``counts``. ``partial`` marks outputs that hold less than the source (frames
    lost to decode errors, kept with ``allow_partial``; a ``max_frames`` preview).
    """

    source: dict[str, Any]
    bgr: str
    output: str
    model: dict[str, Any]
    options: dict[str, Any]
    counts: dict[str, int] = field(default_factory=dict)
    items: list[PairResult] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    formats: dict[str, str] = field(default_factory=dict)
    stages: StageTimes = field(default_factory=StageTimes)
    unmatched_backgrounds: list[str] = field(default_factory=list)
    ignored_files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    partial: bool = False
    seconds: float = 0.0
    cluster: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return str(self.source.get("kind", "photos"))

    def count(self, status: str) -> int:
        if self.kind == "photos":
            return sum(1 for item in self.items if item.status == status)
        return {"ok": self.counts.get("matted", 0), "skipped": self.counts.get("skipped", 0)}.get(status, 0)

    @property
    def ok(self) -> bool:
        if self.kind == "photos":
            return (self.count("failed") == 0 and self.count("unmatched") == 0) or bool(self.options.get("allow_partial"))
        return not self.partial or bool(self.options.get("allow_partial")) or bool(self.options.get("max_frames"))

    def summary(self) -> str:
        if self.kind == "photos":
            done = self.count("ok")
            rate = f", {done / self.seconds:.2f} images/s" if self.seconds > 0 and done else ""
            parts = [f"{done} matted", f"{self.count('skipped')} skipped (existing)", f"{self.count('failed')} failed",
                     f"{self.count('unmatched')} without background"]
            if self.unmatched_backgrounds:
                parts.append(f"{len(self.unmatched_backgrounds)} unused backgrounds")
            return f"{', '.join(parts)} in {self.seconds:.1f} s{rate}{self._on_cluster()}; outputs in {self.output}"
        matted = self.counts.get("matted", 0)
        fps = matted / self.seconds if self.seconds > 0 else 0.0
        skipped = f", {self.counts['skipped']} already done" if self.counts.get("skipped") else ""
        lost = f", {self.counts['lost']} lost to decode errors" if self.counts.get("lost") else ""
        outs = ", ".join(f"{kind} → {path}" for kind, path in self.outputs.items())
        return (f"{matted} frames matted{skipped}{lost} in {self.seconds:.1f} s ({fps:.2f} fps, model "
                f"{self.stages.infer:.1f} s, decode {self.stages.decode:.1f} s{self._on_cluster()}); {outs}")

    def _on_cluster(self) -> str:
        if not self.cluster or not self.cluster.get("workers"):
            return ""
        return (f" on {self.cluster['workers']} Ray worker(s), {self.cluster['nodes']} node(s), "
                f"{self.cluster['retries']} retries")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["schema_version"] = REPORT_SCHEMA_VERSION
        data["ok"] = self.ok
        if self.kind == "photos":
            data["counts"] = {status: self.count(status) for status in ("ok", "skipped", "failed", "unmatched")}
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)


def check_matte_paths(src: str | Path, bgr: str | Path, output: str | Path, spec: ModelSpec | None = None,
                      report_path: str | Path | None = None, backdrop: str | None = None) -> None:
    """Refuses, before any work, paths that would lose or corrupt something (every source).

    The output folder may not lie inside ``src`` or ``bgr`` nor be one of them, ``src`` and
    ``bgr`` may not be the same, a ``backdrop`` that is not a colour must be a file, and the
    report may not replace an input or lie in an input tree or be unwritable.

    Raises:
        UsageError: naming the option and the fix.
    """
    src_path, bgr_path = Path(src), Path(bgr)
    live = is_live(src)
    if not live and src_path.exists() and bgr_path.exists() and os.path.samefile(src_path, bgr_path):
        raise UsageError(f"--src and --bgr are the same ({src}): every image would be matted against itself; "
                         "pass the background plate(s) (the scene without the subject) with --bgr")
    inputs: list[tuple[str, str | Path | None]] = [("--bgr", bgr)]
    if not live:
        inputs.append(("--src", src))
    if spec is not None:
        inputs += [("--model", spec.model), ("--checkpoint", spec.checkpoint), ("--config", spec.config_file)]
    if backdrop is not None and parse_colour(backdrop) is None:
        if not Path(backdrop).is_file():
            raise UsageError(f"--backdrop {backdrop!r} is neither a colour (R,G,B in 0..255, or #rrggbb) nor an image "
                             "or video file")
        inputs.append(("--backdrop", backdrop))
    trees = [(label, path) for label, path in inputs if path is not None]
    for label, path in trees:
        if Path(path).exists() and Path(path).resolve() == Path(output).resolve():
            raise UsageError(f"-o/--output {output} is {label} itself; choose another folder")
    check_output_dir(output, "-o/--output", input_trees=[(label, path) for label, path in trees if Path(path).is_dir()])
    if report_path is not None:
        report = Path(report_path)
        for label, tree in trees:
            if Path(tree).is_dir() and Path(tree).resolve() in report.resolve().parents:
                raise UsageError(f"--report {report} is inside {label} {tree}; write it elsewhere (outputs never go "
                                 "into an input tree)")
        check_output_file(report, "--report", inputs=trees)


def _open_predictor(model: ModelSpec | Any, servers: ServerOptions | None, footage: bool,
                    say: Status) -> tuple[Any, bool]:
    """The predictor to run with, and whether this job owns (and closes) it."""
    if servers is not None:
        say(f"connecting to {', '.join(servers.urls)} ...")
        client = TritonMatteClient(servers.urls, model_name=servers.model_name, concurrency=servers.concurrency,
                                   shared_memory=servers.shared_memory, padding=servers.padding)
        say(f"shared memory: {client.shared_memory_note}")
        return client, True
    if not isinstance(model, ModelSpec):
        return model, False
    say(f"loading {model.source} ({model.resolve_target().name}) ...")
    started = time.perf_counter()
    # The decoder and encoders of footage share the cores with the model.
    predictor = Predictor.from_spec(model, shared_cores=footage)
    say(f"model loaded in {time.perf_counter() - started:.1f} s")
    return predictor, True


def _check_outputs_available(predictor: Any, options: MatteOptions) -> None:
    missing = [name for name in options.needed() if name not in predictor.available_outputs]
    if missing:
        raise UsageError(
            f"--outputs {','.join(options.outputs)} need {', '.join(missing)}, which {predictor.source} does not provide "
            f"(it provides {', '.join(predictor.available_outputs)}); export with those outputs"
        )


def _warn_sample_pixels(predictor: Any, width: int, height: int, where: str, say: Status) -> None:
    """Sampling mode with more sample pixels than an image has refines everything: say so once."""
    config = getattr(predictor, "model_config", None)
    if config is None or config.model_type != "refine" or config.refine_mode != "sampling":
        return
    if config.refine_sample_pixels is None:
        return  # the reference resolves it from the size (HD preset); nothing to warn about
    note = sample_pixels_note(config.refine_sample_pixels, width, height)
    if note:
        say(f"warning: {note} ({where})")


def matte(
    src: str | Path,
    bgr: str | Path,
    output: str | Path,
    model: ModelSpec | Any | None = None,
    options: MatteOptions | None = None,
    *,
    servers: ServerOptions | None = None,
    report_path: str | Path | None = None,
    progress: Progress | None = None,
    status: Status | None = None,
    sequence: bool = False,
    cluster: ClusterOptions | None = None,
) -> MatteReport:
    """Mattes photos or footage into ``output``.

    Args:
        src: a source image or a folder of them (recursive); or a video file, a folder of
            numbered frames (with ``sequence``), a URL or a device (with ``options.src_format``).
        bgr: a background image (for every source) or a folder matched by relative path; for
            footage a still plate or a background video.
        output: photos: ``OUT/<kind>/<relative name>.<ext>``; footage: ``OUT/<kind>.<ext>``
            videos or ``OUT/<kind>/`` PNG sequences.
        model: a :class:`ModelSpec` (loaded here, closed at the end), a model file path (its
            spec with the defaults), or a loaded :class:`Predictor` (kept open); None with
            ``servers``.
        options: see :class:`MatteOptions`.
        servers: send the work to ``bgm-deploy serve`` servers instead.
        report_path: also write the report there as JSON.
        progress: called after each unit with ``(done, total, unit, outcome, error)``.
        status: called with a line about slow phases (loading the model).
        sequence: ``src`` is a folder of numbered frames of one clip.
        cluster: run on a Ray cluster (:mod:`.cluster`): photo pairs and clip segments as tasks
            on workers that each load ``model`` (a spec), outputs on shared storage.

    Returns:
        The report (``ok`` False when something was not matted).

    Raises:
        UsageError: bad paths/options, outputs that exist without overwrite/skip_existing.
        ModelFileError, CheckpointError, RuntimeUnavailableError: the model cannot be loaded.
        VideoError: unreadable footage (or frames lost without ``allow_partial``).
    """
    options = options or MatteOptions()
    say = status or (lambda _message: None)
    output = Path(output)
    started = time.perf_counter()
    if isinstance(model, (str, Path)):
        model = ModelSpec(model=str(model))
    footage = is_video_job(src, bgr, sequence, options.src_format)
    live = options.src_format is not None or is_live(src)
    if sequence and not Path(src).is_dir():
        raise UsageError(f"--sequence: --src {src} is not a folder of numbered frames; drop --sequence for a video file")
    if options.src_format is not None and Path(src).is_dir():
        raise UsageError(f"--src-format applies to live sources (a device, a URL) and to files FFmpeg reads with that "
                         f"format, not to the folder {src}; drop it")
    options.check_for("video" if footage else "photos", sequence=sequence or (Path(src).is_dir() and footage), live=live)
    if servers is not None and model is not None and not (isinstance(model, ModelSpec) and model.is_empty):
        raise UsageError("--server sends the work to running servers; drop --model/--checkpoint")
    if servers is None and (model is None or isinstance(model, ModelSpec) and model.is_empty):
        if not demo_available():
            raise UsageError("no model to matte with: pass --model FILE (an exported model), --checkpoint FILE (PyTorch "
                             "weights) or --server URL")
        model = dataclasses.replace(model or ModelSpec(), checkpoint=str(DEMO_WEIGHTS_PATH))
        demo = True
    else:
        demo = False
    if cluster is not None:
        check_cluster_job(options, footage, live, sequence, servers, model)
    spec = model if isinstance(model, ModelSpec) else None
    check_matte_paths(src, bgr, output, spec, report_path, options.backdrop)
    if spec is not None and cluster is not None:
        check_cluster_spec(spec)  # a GPU target's device is the workers' to check
    elif spec is not None and servers is None:
        spec.check()  # the target runs the format and is usable here, before any decoding
    if options.align:
        import_cv2()  # fail before loading the model, with the install hint
    if demo:
        say(f"no model given: using the {DEMO_NOTE}")
    if footage:
        return _matte_footage(src, bgr, output, model, options, servers, report_path, progress, say, started, cluster)
    return _matte_photos(src, bgr, output, model, options, servers, report_path, progress, say, started, cluster)


def _matte_photos(src: str | Path, bgr: str | Path, output: Path, model: Any, options: MatteOptions,
                  servers: ServerOptions | None, report_path: str | Path | None, progress: Progress | None,
                  say: Status, started: float, cluster: ClusterOptions | None = None) -> MatteReport:
    plan = find_pairs(src, bgr)
    report = MatteReport({"kind": "photos", "path": str(src)}, str(bgr), str(output), {},
                         {**options.to_dict(), "src": str(src), "bgr": str(bgr)},
                         unmatched_backgrounds=[str(p) for p in plan.unmatched_backgrounds],
                         ignored_files=[str(p) for p in plan.ignored])
    known = [PairResult(str(p), None, "unmatched", "no background with the same relative name")
             for p in plan.unmatched_sources]
    known += [PairResult(str(p), None, "failed", f"ambiguous background: {', '.join(str(c) for c in cands)}")
              for p, cands in plan.ambiguous]
    report.items += known
    for pair in plan.pairs:
        _refuse_inputs_as_outputs(list(output_paths(output, pair.name, options).values()),
                                  [("--src", pair.src), ("--bgr", pair.bgr)])
    existing = existing_outputs(plan, output, options)
    if existing and not options.overwrite and not options.skip_existing:
        raise UsageError(f"{len(existing)} output file(s) already exist (e.g. {existing[0]}); pass --overwrite to replace "
                         "them or --skip-existing to keep finished pairs and do the rest")
    if report_path is not None:
        check_output_file(report_path, "--report", inputs=[(str(p.src), p.src) for p in plan.pairs[:1000]])
    counts = Counts()
    predictor, owned = None, False
    try:
        if cluster is not None:
            for done, item in enumerate(known, 1):
                if progress is not None:
                    progress(done, len(plan.pairs) + len(known), Unit(Path(item.src).stem, -1, meta=item), item.status,
                             item.error)
            report.model, report.cluster = matte_photos_on_cluster(
                plan.pairs, output, model, options, cluster, report.items, report.stages, progress, say,
                offset=len(known))
            return report
        source = PhotoSource(plan, options, options.backdrop_value)
        sink = PhotoSink(output, options, report.items, report.stages)
        needs_model = any(not sink.done(Unit(pair.name, 0, meta=pair)) for pair in plan.pairs)
        if needs_model:  # a fully resumed run needs no model
            predictor, owned = _open_predictor(model, servers, False, say)
            report.model = predictor.describe()
            _check_outputs_available(predictor, options)
            if plan.pairs:
                _warn_first_image(predictor, plan.pairs[0].src, options, say)
        else:
            report.model = {"source": getattr(model, "source", None), "loaded": False}
        total = len(plan.pairs) + len(known)
        for done, item in enumerate(known, 1):
            if progress is not None:
                progress(done, total, Unit(Path(item.src).stem, -1, meta=item), item.status, item.error)
        offset = len(known)

        def shifted(done: int, _total: int | None, unit: Unit | None, outcome: str, error: str | None) -> None:
            if progress is not None:
                progress(done + offset, total, unit, outcome, error)

        try:
            run_pipeline(source, predictor, sink, options, report.stages, counts, shifted)
        except BaseException:
            sink.abort()  # an interrupt or a fatal error: queued writes dropped, finished files kept
            raise
    finally:
        if owned and predictor is not None:
            predictor.close()
        report.seconds = time.perf_counter() - started
        if report_path is not None:
            atomic_write_text(report_path, report.to_json())
    return report


def _warn_first_image(predictor: Any, first: Path, options: MatteOptions, say: Status) -> None:
    if options.resize is not None:
        width, height = options.resize
    else:
        from PIL import Image  # reads the header only

        try:
            with Image.open(first) as image:
                width, height = image.size
        except OSError:
            return  # the pipeline reports unreadable images per pair
    _warn_sample_pixels(predictor, width, height, f"first image {first}", say)


def _refuse_inputs_as_outputs(outputs: list[Path], inputs: list[tuple[str, str | Path | None]]) -> None:
    """An output file may never be one of the inputs (``-o`` holding the source clip itself)."""
    for path in outputs:
        for label, other in inputs:
            if other is None or is_live(other):
                continue
            other = Path(other)
            same = path.absolute() == other.absolute() or (path.exists() and other.exists() and os.path.samefile(path, other))
            inside = other.is_file() and path.is_dir() and path.resolve() in other.resolve().parents
            if same or inside:
                raise UsageError(f"output {path} would replace {label} {other}: the job would destroy its own input; "
                                 "choose another -o folder (or move the input out of it)")


def _check_src_format(av: Any, options: MatteOptions) -> None:
    if options.src_format is None:
        return
    try:
        av.format.ContainerFormat(options.src_format, "r")
    except ValueError:
        raise UsageError(f"--src-format {options.src_format!r} is not an input format of this FFmpeg (PyAV "
                         f"{av.__version__}); use one it has, e.g. v4l2 (Linux cameras), avfoundation (macOS), dshow "
                         "(Windows), mpegts") from None


def _matte_footage(src: str | Path, bgr: str | Path, output: Path, model: Any, options: MatteOptions,
                   servers: ServerOptions | None, report_path: str | Path | None, progress: Progress | None,
                   say: Status, started: float, cluster: ClusterOptions | None = None) -> MatteReport:
    av = import_av()
    _check_src_format(av, options)
    footage = open_footage(src, bgr, options)
    info = footage.source.info
    size = options.resize or info.size
    report = MatteReport(info.to_dict(), str(bgr), str(output), {}, {**options.to_dict(), "src": str(src),
                                                                       "bgr": str(bgr)})
    counts = Counts()
    predictor, owned, sink = None, False, None
    try:
        plan = plan_outputs(output, options, size)
        spec = model if isinstance(model, ModelSpec) else None
        _refuse_inputs_as_outputs(
            [output_path(output, kind, fmt) for kind, fmt in plan.formats.items()],
            [("--src", src), ("--bgr", bgr), ("--backdrop", options.backdrop if "com" in options.outputs else None),
             ("--model", spec.model if spec else None), ("--checkpoint", spec.checkpoint if spec else None)],
        )
        report.formats = {kind: fmt.name for kind, fmt in plan.formats.items()}
        report.outputs.update(plan.done)
        if not plan.todo:
            report.counts = {"read": 0, "matted": 0, "skipped": 0, "lost": 0, "written": 0}
            report.warnings.append("every output is complete already (skip_existing): nothing to do")
            return report
        odd = [kind for kind in plan.todo if not plan.formats[kind].is_sequence
               and plan.formats[kind].pix_fmt(LAYOUTS[kind], size) != plan.formats[kind].pix_fmts[LAYOUTS[kind]]]
        if odd:
            _warn(report, f"odd size {size[0]}x{size[1]}: {', '.join(odd)} encoded as 4:4:4, which some players cannot "
                          "show; crop or --resize to an even size for 4:2:0")
        if cluster is not None:
            report.model, report.cluster, outputs, report.counts, notes = matte_footage_on_cluster(
                src, bgr, output, model, options, info, {kind: plan.formats[kind] for kind in plan.todo}, plan.todo,
                cluster, report.stages, progress, say)
            report.outputs.update(outputs)
            report.warnings += notes
            return report
        predictor, owned = _open_predictor(model, servers, True, say)
        report.model = predictor.describe()
        _check_outputs_available(predictor, options)
        _warn_sample_pixels(predictor, size[0], size[1], "frame size", say)
        sink = FootageSink(output, plan, info, options, report.stages, size)
        run_pipeline(footage, predictor, sink, options, report.stages, counts, progress, fatal_unit_errors=True)
        finalize = time.perf_counter()
        report.counts = {"read": counts.read, "matted": counts.matted, "skipped": counts.skipped, "lost": footage.lost}
        report.partial = bool(footage.lost or footage.lost_reason or options.max_frames and info.frames
                              and counts.read < info.frames)
        if footage.lost_reason:
            _warn(report, f"{footage.lost_reason}; outputs hold the {counts.read} decoded frames (--allow-partial)")
        live = info.kind == "live"
        stopped = getattr(footage.source, "stopped", None) if live else None
        if counts.read == 0:
            raise_no_frames(info.path, stopped)
        if stopped:
            _warn(report, f"live source {stopped}; outputs hold the {counts.read} frames received")
        audio_from = footage.source if options.audio_value and info.kind == "video" else None
        if options.audio_value and live and info.audio:
            _warn(report, "the live source's audio is not carried over (only files' audio is remuxed)")
        report.counts["written"] = min(sink.frames_out().values(), default=0)
        outputs, notes = sink.finish(audio_from, complete=not report.partial, source=str(src),
                                     trim_audio=report.partial)  # a preview's sound ends with its frames
        report.outputs.update(outputs)
        report.warnings += notes
        sink = None
        report.stages.finalize = time.perf_counter() - finalize
        if footage.align_results:
            report.options["align_results"] = footage.align_results[:1] if options.align_how == "clip" else \
                footage.align_results
    finally:
        if sink is not None:
            report.counts = {"read": counts.read, "matted": counts.matted, "skipped": counts.skipped,
                             "lost": footage.lost}
            sink.abort()
        footage.close()
        if owned and predictor is not None:
            predictor.close()
        report.seconds = time.perf_counter() - started
        if report_path is not None:
            atomic_write_text(report_path, report.to_json())
    return report


def raise_no_frames(path: str, stopped: str | None) -> None:
    raise VideoError(f"{path} produced no frames" + (f" (live source {stopped})" if stopped else "")
                     + "; check the source plays (a live source must be streaming)")


def _warn(report: MatteReport, message: str) -> None:
    log.warning("%s", message)
    report.warnings.append(message)


__all__ = ["MatteReport", "ServerOptions", "check_matte_paths", "matte", "output_path"]
