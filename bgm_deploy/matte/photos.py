"""Batch image matting: folders (or files) of sources and backgrounds to alpha/foreground/...

``matte(src, bgr, output, model=...)`` pairs sources with backgrounds by relative path
(stem), recursively, or uses one background for all sources; runs a bounded pipeline
(decode threads → inference on the calling thread → encode threads) so the model does
not wait on the disk; writes ``OUT/<type>/<relative path>.png`` atomically; and reports
every pair (ok, skipped, failed, unmatched) instead of stopping at the first bad file.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exporters.paths import check_input_file, check_output_dir, check_output_file, looks_like_checkpoint
from model.config import ModelConfig, sample_pixels_note
from model.errors import BgmDeployError, ImageError, UsageError

from .align import align_background, import_cv2
from .client import TritonMatteClient
from .images import IMAGE_SUFFIXES, atomic_write_text, load_image, resize_rgb, save_image, to_uint8
from .predictor import OUTPUT_CHOICES, Prediction, Predictor, config_from_checkpoint

log = logging.getLogger(__name__)

REPORT_SCHEMA_VERSION = 1
FGR_FORMATS = ("png", "jpg")


@dataclass(frozen=True)
class MatteOptions:
    """How ``matte`` runs (everything except what to read, where to write, and the model).

    Attributes:
        outputs: any of ``pha``, ``fgr``, ``com``, ``err``, ``ref``.
        fgr_format: ``"png"`` (lossless) or ``"jpg"`` for the foreground.
        align: align each background to its source with a homography (needs OpenCV).
        resize: ``(width, height)`` to resize both images of every pair to; None keeps sizes
            (a pair of different sizes is then an error unless alignment maps one onto the other).
        workers: decode threads and encode threads (each).
        overwrite: replace existing outputs.
        skip_existing: skip pairs whose outputs all exist (resume an interrupted run).
        padding: ``"replicate"`` or ``"reflect"`` padding to the model's multiple of 4.
    """

    outputs: tuple[str, ...] = ("pha", "fgr")
    fgr_format: str = "png"
    align: bool = False
    resize: tuple[int, int] | None = None
    workers: int = 2
    overwrite: bool = False
    skip_existing: bool = False
    padding: str = "replicate"

    def __post_init__(self) -> None:
        unknown = [name for name in self.outputs if name not in OUTPUT_CHOICES]
        if unknown or not self.outputs or len(set(self.outputs)) != len(self.outputs):
            raise UsageError(f"outputs={','.join(self.outputs)!r} is not valid; choose distinct names from {', '.join(OUTPUT_CHOICES)}")
        if self.fgr_format not in FGR_FORMATS:
            raise UsageError(f"fgr_format={self.fgr_format!r} is not valid; valid: {', '.join(FGR_FORMATS)}")
        if self.resize is not None and (len(self.resize) != 2 or min(self.resize) < 4):
            raise UsageError(f"resize={self.resize!r} is not valid; give (width, height), both >= 4")
        if self.workers < 1:
            raise UsageError(f"workers={self.workers!r} is not valid; it must be >= 1")
        if self.overwrite and self.skip_existing:
            raise UsageError("overwrite and skip_existing exclude each other; pass one of --overwrite / --skip-existing")


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
class MatteReport:
    """Everything ``matte`` did; ``ok`` is False when any source failed or had no background."""

    output: str
    model: dict[str, Any]
    options: dict[str, Any]
    pairs: list[PairResult] = field(default_factory=list)
    unmatched_backgrounds: list[str] = field(default_factory=list)
    ignored_files: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for pair in self.pairs if pair.status == status)

    @property
    def ok(self) -> bool:
        return self.count("failed") == 0 and self.count("unmatched") == 0

    def summary(self) -> str:
        done = self.count("ok")
        rate = f", {done / self.seconds:.2f} images/s" if self.seconds > 0 and done else ""
        parts = [f"{done} matted", f"{self.count('skipped')} skipped (existing)", f"{self.count('failed')} failed",
                 f"{self.count('unmatched')} without background"]
        if self.unmatched_backgrounds:
            parts.append(f"{len(self.unmatched_backgrounds)} unused backgrounds")
        return f"{', '.join(parts)} in {self.seconds:.1f} s{rate}; outputs in {self.output}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["schema_version"] = REPORT_SCHEMA_VERSION
        data["counts"] = {status: self.count(status) for status in ("ok", "skipped", "failed", "unmatched")}
        data["ok"] = self.ok
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


@dataclass
class PairPlan:
    """Sources matched with backgrounds, before anything is decoded."""

    pairs: list[Pair]
    unmatched_sources: list[Path]
    unmatched_backgrounds: list[Path]
    ambiguous: list[tuple[Path, list[Path]]]
    ignored: list[Path]


ProgressCallback = Callable[[PairResult, int, int], None]


# -- pairing --------------------------------------------------------------------------------
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
        relative = path.relative_to(root)
        stem = relative.with_suffix("").as_posix()
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
    for label, path in (("src", src), ("bgr", bgr)):
        if not path.exists():
            raise UsageError(f"{label} {path} does not exist (give an image file or a directory of images)")
    if src.is_file():
        if bgr.is_dir():
            raise UsageError(f"src {src} is a file but bgr {bgr} is a directory; give the background image file")
        return PairPlan([Pair(src, bgr, src.stem)], [], [], [], [])
    sources, ignored = _list_images(src)
    if not sources:
        raise UsageError(f"src directory {src} contains no images (looked for {', '.join(IMAGE_SUFFIXES)}, recursively)")
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
    """Where each requested output of one pair goes: ``OUT/<type>/<name>.<ext>``."""
    suffix = {"fgr": f".{options.fgr_format}"}
    return {kind: output / kind / f"{name}{suffix.get(kind, '.png')}" for kind in options.outputs}


# -- the pipeline ----------------------------------------------------------------------------
def matte(
    src: str | Path,
    bgr: str | Path,
    output: str | Path,
    model: str | Path | None = None,
    checkpoint: str | Path | None = None,
    model_config: ModelConfig | None = None,
    provider: str = "cpu",
    allow_fallback: bool = False,
    options: MatteOptions | None = None,
    progress: ProgressCallback | None = None,
    report_path: str | Path | None = None,
    predictor: Predictor | None = None,
    status: Callable[[str], None] | None = None,
    model_settings: dict[str, Any] | None = None,
    servers: tuple[str, ...] = (),
    server_options: dict[str, Any] | None = None,
    config_file: str | Path | None = None,
    runtime: str | None = None,
) -> MatteReport:
    """Mattes every (source, background) pair and writes the outputs under ``output``.

    Args:
        src: a source image or a directory of them (searched recursively).
        bgr: a background image (for all sources) or a directory matched by relative path.
        output: root of ``<type>/<relative path>`` outputs.
        model: an exported model file (see :meth:`Predictor.load`); or None with
            ``checkpoint``/``model_config`` for the PyTorch reference.
        provider: ``"cpu"``, ``"cuda"`` or ``"tensorrt"``.
        allow_fallback: run on CPU with a loud warning when the provider is unusable.
        options: see :class:`MatteOptions`.
        progress: called after each source with ``(result, done, total)``.
        report_path: also write the report as JSON there.
        predictor: an already loaded predictor, or a :class:`bgm_deploy.client.TritonMatteClient`
            (requests then run ``concurrency`` at a time); model/checkpoint/provider are ignored.
        status: called with a line before and after slow phases (loading the model).
        model_settings: with ``checkpoint``: ``backbone``, ``backbone_scale``, ``refine_*``
            overrides (None values ignored); an exported ``model`` carries its own.
        servers: ``bgm-deploy serve`` URLs (``http://HOST:PORT``, ``grpc://HOST:PORT``): the work
            goes to them through a :class:`bgm_deploy.client.TritonMatteClient` instead of a
            local model; ``server_options`` are its keyword arguments (``model_name``,
            ``concurrency``, ``shared_memory``).
        config_file: with ``model``: its metadata JSON (``--config``, the ``<file>.bgm.json``
            export wrote), for a file whose embedded metadata a graph tool stripped.
        runtime: ``"openvino"`` runs an ONNX ``model`` with OpenVINO (f32) instead of onnxruntime.

    Returns:
        The report; ``report.ok`` is False if any source failed or had no background.

    Raises:
        UsageError: bad paths/options, or outputs exist without overwrite/skip_existing.
        ModelFileError, CheckpointError, RuntimeUnavailableError: the model cannot be loaded.
    """
    options = options or MatteOptions()
    output = Path(output)
    started = time.perf_counter()
    if servers:
        if model is not None or checkpoint is not None or predictor is not None:
            raise UsageError("--server sends the work to running servers; drop --model/--checkpoint")
        check_matte_paths(src, bgr, output, report_path=report_path)  # before connecting
        with TritonMatteClient(servers, padding=options.padding, **(server_options or {})) as client:
            return matte(src, bgr, output, options=options, progress=progress, report_path=report_path,
                         predictor=client, status=status)
    if predictor is None and model is None and checkpoint is None and model_config is None:
        raise UsageError("no model to matte with: pass --model FILE (an exported .onnx/.pt/.engine) or "
                         "--checkpoint FILE (PyTorch weights)")
    check_matte_paths(src, bgr, output, model=model if predictor is None else None, report_path=report_path)
    if runtime is not None and model is None:
        raise UsageError(f"--runtime {runtime} runs an exported ONNX --model file; pass --model FILE.onnx with it")
    if config_file is not None:
        if model is None:
            raise UsageError("--config is the metadata of an exported --model file; pass --model FILE with it")
        check_input_file(config_file, "--config")
    if model_config is None:  # a config given by the caller is kept as it is
        if checkpoint is not None:
            (status or (lambda _message: None))(f"reading {checkpoint} ...")
        model_config = model_config_for(model, checkpoint, model_settings)
    plan = find_pairs(src, bgr)
    if options.align:
        import_cv2()  # fail before loading the model, with the install hint
    todo, results = _plan_results(plan, output, options)
    owned = predictor is None and bool(todo)
    if predictor is None and todo:  # a fully resumed run needs no model
        say = status or (lambda _message: None)
        say(f"loading {model or checkpoint or 'the model'} ({provider}) ...")
        loading = time.perf_counter()
        predictor = Predictor.load(
            model, checkpoint=checkpoint, model_config=model_config,
            target="openvino-cpu" if runtime == "openvino" else provider,
            allow_fallback=allow_fallback, padding=options.padding, config_file=config_file,
        )
        say(f"model loaded in {time.perf_counter() - loading:.1f} s; matting {len(todo)} pair(s)")
        _warn_sample_pixels(predictor, todo[0], options, say)
    total = len(results) + len(todo)
    report = MatteReport(
        str(output),
        predictor.describe() if predictor is not None else {"source": str(model or checkpoint), "loaded": False},
        {**asdict(options), "src": str(src), "bgr": str(bgr)},
        unmatched_backgrounds=[str(p) for p in plan.unmatched_backgrounds], ignored_files=[str(p) for p in plan.ignored],
    )
    try:
        for done, result in enumerate(results, 1):
            report.pairs.append(result)
            if progress:
                progress(result, done, total)
        if predictor is not None:
            _check_outputs_available(predictor, options)
            _run_pipeline(todo, predictor, output, options, report, progress, total)
    finally:
        if owned and predictor is not None:
            predictor.close()
        report.seconds = time.perf_counter() - started
        if report_path is not None:
            atomic_write_text(report_path, report.to_json())
    return report


def _warn_sample_pixels(predictor: Predictor, first: Pair, options: MatteOptions, say: Callable[[str], None]) -> None:
    """Sampling mode with more sample pixels than an image has refines everything: say so once."""
    config = predictor.model_config
    if config is None or config.model_type != "refine" or config.refine_mode != "sampling":
        return
    if options.resize is not None:
        width, height = options.resize
    else:
        from PIL import Image  # reads the header only

        try:
            with Image.open(first.src) as image:
                width, height = image.size
        except OSError:
            return  # the pipeline reports unreadable images per pair
    note = sample_pixels_note(config.refine_sample_pixels, width, height)
    if note:
        say(f"warning: {note} (first image {first.src})")


def model_config_for(
    model: str | Path | None, checkpoint: str | Path | None, settings: dict[str, Any] | None
) -> ModelConfig | None:
    """The model config a matte job runs with a ``checkpoint`` (its architecture plus the
    ``settings`` overrides, None values ignored); None for an exported ``model``, which
    carries its own settings (overrides are then an error)."""
    given = {key: value for key, value in (settings or {}).items() if value is not None}
    if model is not None and checkpoint is not None:
        raise UsageError("--model and --checkpoint are alternatives: an exported file, or PyTorch weights; pass one")
    if given and checkpoint is None:
        raise UsageError("--model carries its own settings; --backbone/--backbone-scale/--refine-* apply only with "
                         "--checkpoint")
    return config_from_checkpoint(checkpoint, **given) if checkpoint is not None else None


def check_matte_paths(
    src: str | Path,
    bgr: str | Path,
    output: str | Path,
    model: str | Path | None = None,
    report_path: str | Path | None = None,
) -> None:
    """Refuses, before any work, paths that would lose or corrupt something.

    The output folder may not lie inside ``src`` or ``bgr`` (a rerun would matte its own
    outputs), ``src`` and ``bgr`` may not be the same (every image against itself), the
    report may not replace an input, and ``model`` may not be a PyTorch checkpoint.

    Raises:
        UsageError: naming the option and the fix.
    """
    src, bgr = Path(src), Path(bgr)
    if src.exists() and bgr.exists() and os.path.samefile(src, bgr):
        raise UsageError(f"--src and --bgr are the same ({src}): every image would be matted against itself; "
                         "pass the background plate(s) (the scene without the subject) with --bgr")
    trees = [("--src", src), ("--bgr", bgr)]
    check_output_dir(output, "-o/--output", input_trees=trees)
    if report_path is not None:
        report = Path(report_path)
        for label, tree in trees:
            if tree.is_dir() and tree.resolve() in report.resolve().parents:
                raise UsageError(f"--report {report} is inside {label} {tree}; write it elsewhere (outputs never go "
                                 "into an input tree)")
        check_output_file(report, "--report", inputs=[*trees, ("--model", model)])
    if model is not None and looks_like_checkpoint(model):
        raise UsageError(f"--model {model} is a PyTorch checkpoint (weights), not an exported model; pass it with "
                         f"--checkpoint {model}, or export it first: bgm-deploy export --checkpoint {model} ...")


def _plan_results(plan: PairPlan, output: Path, options: MatteOptions) -> tuple[list[Pair], list[PairResult]]:
    """Pairs to run, and results already known (unmatched, ambiguous, skipped)."""
    results = [PairResult(str(path), None, "unmatched", "no background with the same relative name") for path in plan.unmatched_sources]
    results += [
        PairResult(str(path), None, "failed", f"ambiguous background: {', '.join(str(c) for c in candidates)}")
        for path, candidates in plan.ambiguous
    ]
    todo, existing = [], []
    for pair in plan.pairs:
        paths = output_paths(output, pair.name, options)
        present = [path for path in paths.values() if path.exists()]
        if options.skip_existing and len(present) == len(paths):
            results.append(PairResult(str(pair.src), str(pair.bgr), "skipped", outputs=[str(p) for p in paths.values()]))
            continue
        existing += present
        todo.append(pair)
    if existing and not options.overwrite and not options.skip_existing:
        raise UsageError(
            f"{len(existing)} output file(s) already exist (e.g. {existing[0]}); pass --overwrite to replace them "
            "or --skip-existing to keep finished pairs and do the rest"
        )
    return todo, results


def _check_outputs_available(predictor: Predictor, options: MatteOptions) -> None:
    missing = [name for name in options.outputs if name not in predictor.available_outputs]
    if missing:
        raise UsageError(
            f"--outputs {','.join(options.outputs)}: {', '.join(missing)} not available from {predictor.source} "
            f"(it provides {', '.join(predictor.available_outputs)})"
        )


Decoded = tuple[np.ndarray, np.ndarray, dict[str, Any] | None, Prediction | None]


def _run_pipeline(
    todo: list[Pair],
    predictor: Predictor,
    output: Path,
    options: MatteOptions,
    report: MatteReport,
    progress: ProgressCallback | None,
    total: int,
) -> None:
    """decode (threads) → predict (this thread; a remote client: the decode threads) → encode
    (threads), each stage bounded."""
    # A remote predictor (matte --server) takes `concurrency` requests at once: it predicts in
    # the decode threads; a local one predicts on this thread.
    parallel = max(1, int(getattr(predictor, "concurrency", 1)))
    depth = max(2 * options.workers, parallel)  # items in flight per stage: hides I/O, bounded memory
    # One background for every source (fixed camera): decode it once, shared read-only.
    shared = _SharedImage(todo[0].bgr) if todo and len({pair.bgr for pair in todo}) == 1 else None
    decode_pool = ThreadPoolExecutor(max(options.workers, parallel), thread_name_prefix="bgm-decode")
    encode_pool = ThreadPoolExecutor(options.workers, thread_name_prefix="bgm-encode")
    decoding: deque[tuple[Pair, Future[Decoded]]] = deque()
    encoding: deque[tuple[PairResult, Future[list[str]]]] = deque()
    pending = iter(todo)

    def finish(result: PairResult) -> None:
        report.pairs.append(result)
        if progress:
            progress(result, len(report.pairs), total)

    def collect_encoded(block: bool) -> None:
        while encoding and (block or encoding[0][1].done() or len(encoding) > depth):
            result, future = encoding.popleft()
            try:
                result.outputs = future.result()
            except ImageError as exc:
                result.status, result.error = "failed", str(exc)
            finish(result)

    def refill() -> None:
        while len(decoding) < depth:
            pair = next(pending, None)
            if pair is None:
                return
            remote = predictor if parallel > 1 else None
            decoding.append((pair, decode_pool.submit(_decode, pair, options, shared, remote)))

    try:
        refill()
        while decoding:
            pair, future = decoding.popleft()
            refill()
            result = PairResult(str(pair.src), str(pair.bgr), "ok")
            try:
                src_image, bgr_image, result.align, prediction = future.result()
                result.size = (src_image.shape[1], src_image.shape[0])
                if prediction is None:
                    prediction = predictor.predict(src_image, bgr_image, options.outputs)
                result.seconds = prediction.seconds
            except BgmDeployError as exc:
                result.status, result.error = "failed", str(exc)
                finish(result)
                continue
            paths = output_paths(output, pair.name, options)
            encoding.append((result, encode_pool.submit(_encode, prediction, paths)))
            collect_encoded(block=False)
        collect_encoded(block=True)
    finally:
        # On an interrupt: drop queued work; writes in progress finish or leave no file.
        decode_pool.shutdown(wait=True, cancel_futures=True)
        encode_pool.shutdown(wait=True, cancel_futures=True)


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


def _decode(pair: Pair, options: MatteOptions, shared: _SharedImage | None, remote: Any = None) -> Decoded:
    src = load_image(pair.src)
    bgr = shared.get() if shared is not None else load_image(pair.bgr)
    if options.resize is not None:
        src, bgr = resize_rgb(src, options.resize), resize_rgb(bgr, options.resize)
    align = None
    if options.align:

        bgr, result = align_background(src, bgr)
        align = result.to_dict()
        log.info("%s: %s", pair.src, result.describe())
    if src.shape != bgr.shape:
        raise UsageError(
            f"size mismatch: src {pair.src} is {src.shape[1]}x{src.shape[0]} but bgr {pair.bgr} is "
            f"{bgr.shape[1]}x{bgr.shape[0]}; pass --resize WxH (both are resized) or --align"
        )
    prediction = remote.predict(src, bgr, options.outputs) if remote is not None else None
    return src, bgr, align, prediction


def _encode(prediction: Prediction, paths: dict[str, Path]) -> list[str]:
    for kind, path in paths.items():
        value = getattr(prediction, kind)
        save_image(path, value if kind == "com" else to_uint8(value))
    return [str(path) for path in paths.values()]


# -- progress for the CLI ----------------------------------------------------------------------
class ProgressPrinter:
    """Renders ``matte`` progress: a one-line bar with rate and ETA on a terminal, one plain
    line per image otherwise (logs, CI). Failures always get their own line on stderr."""

    def __init__(self, echo: Callable[..., None], tty: bool | None = None, quiet: bool = False) -> None:
        self.echo = echo
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.quiet = quiet
        self.started = time.perf_counter()
        self.processed = 0
        self._bar_visible = False

    def status(self, message: str) -> None:
        """One line about a slow phase (e.g. loading the model), silenced by quiet."""
        if not self.quiet:
            self._clear()
            self.echo(message, err=True)

    def __call__(self, result: PairResult, done: int, total: int) -> None:
        if result.status == "ok":
            self.processed += 1
        if result.status in ("failed", "unmatched"):
            self._clear()
            self.echo(f"{result.status.upper()}: {result.src}: {result.error}", err=True)
        if self.quiet:
            return
        elapsed = time.perf_counter() - self.started
        rate = self.processed / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else float("nan")
        if self.tty:
            width = 30
            filled = int(width * done / max(total, 1))
            eta_text = "--:--" if eta != eta else f"{int(eta) // 60:02d}:{int(eta) % 60:02d}"
            line = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {rate:.2f} img/s ETA {eta_text}"
            self.echo(f"\r{line}", err=True, nl=False)
            self._bar_visible = True
            if done == total:
                self._clear()
        elif result.status in ("ok", "skipped"):
            extra = f" ({result.seconds:.2f} s)" if result.status == "ok" else ""
            align = result.align or {}
            note = f", align {align['status']}, {align['inliers']} inliers" if align else ""
            self.echo(f"[{done}/{total}] {result.status} {result.src}{extra}{note}", err=True)

    def _clear(self) -> None:
        if self._bar_visible:
            self.echo("", err=True)
            self._bar_visible = False
