"""``evaluate``: matte quality against ground-truth alpha (SAD, MSE, Grad, Conn).

A model (any :class:`~bgm_deploy.model_spec.ModelSpec`, or a loaded predictor) mattes
triples of source, background and true alpha, and each predicted alpha is scored with
:mod:`bgm_deploy.metrics` at full size. Triples come from

* a folder of ``<name>/src.*, bgr.*, alpha.*`` (the bundled pairs' layout; the default is the
  bundled pairs themselves), or
* photos: ``--src``/``--bgr``/``--alpha`` files, or folders matched by relative name (as
  ``matte`` pairs them; ``bgm-deploy samples`` writes this layout), or
* footage: a clip (or image sequence) with ``--alpha`` a folder of per-frame alpha images (in
  natural order) or an alpha video, frame for frame.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exporters.atomic import atomic_write_bytes, atomic_write_text
from exporters.paths import check_output_file
from model.errors import UsageError

from .images import BUNDLED_PAIRS_DIR, IMAGE_SUFFIXES, load_image
from .matte.align import align_background, import_cv2
from .matte.footage import is_video_job, iter_mattes
from .matte.options import MatteOptions
from .matte.photos import find_pairs
from .matte.video_io import import_av, open_source
from .metrics import METRICS_SCHEMA_VERSION, MattingScores, matting_scores

REPORT_SCHEMA_VERSION = 1
Progress = Callable[[str], None]


@dataclass(frozen=True)
class EvaluateConfig:
    """What to evaluate on.

    Attributes:
        pairs_dir: a folder of ``<name>/src.*, bgr.*, alpha.*`` triples (None with ``src``:
            the bundled pairs when ``src`` is None too).
        src, bgr, alpha: photos (files, or folders matched by relative name) or footage (a
            clip or image sequence, its plate, and per-frame alphas: a folder or a video).
        align: align each background to its source first (ORB + RANSAC; needs OpenCV).
        max_frames: footage: evaluate the first frames only.
        json_path: also write the report there (checked before any work).
    """

    pairs_dir: str | Path | None = None
    src: str | Path | None = None
    bgr: str | Path | None = None
    alpha: str | Path | None = None
    align: bool = False
    max_frames: int | None = None
    json_path: str | Path | None = None

    def __post_init__(self) -> None:
        given = [name for name in ("src", "bgr", "alpha") if getattr(self, name) is not None]
        if given and len(given) != 3:
            missing = sorted({"src", "bgr", "alpha"} - set(given))
            raise UsageError(f"--src, --bgr and --alpha go together; missing {', '.join('--' + m for m in missing)}")
        if given and self.pairs_dir is not None:
            raise UsageError("pass either --pairs DIR or --src/--bgr/--alpha, not both")
        if self.max_frames is not None and self.max_frames < 1:
            raise UsageError(f"--max-frames {self.max_frames} is not valid; it must be >= 1")


@dataclass
class ItemScores:
    """The scores of one image or frame."""

    name: str
    width: int
    height: int
    sad: float
    mse: float
    grad: float
    conn: float
    seconds: float


@dataclass
class EvaluateReport:
    """Per item and mean scores (SAD, Grad, Conn /1000; MSE as is), and what was evaluated."""

    model: dict[str, Any]
    source: str
    items: list[ItemScores] = field(default_factory=list)
    align: bool = False
    seconds: float = 0.0
    metrics_schema_version: int = METRICS_SCHEMA_VERSION
    schema_version: int = REPORT_SCHEMA_VERSION

    @property
    def mean(self) -> dict[str, float]:
        if not self.items:
            return {}
        return {key: float(np.mean([getattr(item, key) for item in self.items])) for key in ("sad", "mse", "grad", "conn")}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"] = self.mean
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def table(self) -> str:
        """The scores as a fixed-width table (SAD, Grad, Conn in thousands, as in the papers)."""
        width = max([len("mean")] + [len(item.name) for item in self.items])
        lines = [f"{'item':<{width}}  {'size':>9}  {'SAD':>8}  {'MSE':>8}  {'Grad':>8}  {'Conn':>8}",
                 "-" * (width + 50)]
        for item in self.items:
            lines.append(f"{item.name:<{width}}  {item.width:>4}x{item.height:<4}  {item.sad:>8.2f}  {item.mse:>8.4f}  "
                         f"{item.grad:>8.2f}  {item.conn:>8.2f}")
        mean = self.mean
        if mean:
            lines.append(f"{'mean':<{width}}  {'':>9}  {mean['sad']:>8.2f}  {mean['mse']:>8.4f}  {mean['grad']:>8.2f}  "
                         f"{mean['conn']:>8.2f}")
        return "\n".join(lines)


def _first(folder: Path, stem: str) -> Path:
    for path in sorted(folder.iterdir()):
        if path.stem == stem and path.suffix.lower() in IMAGE_SUFFIXES:
            return path
    raise UsageError(f"{folder} has no {stem} image ({', '.join(IMAGE_SUFFIXES)}); each triple needs src, bgr and alpha")


def _triple_folders(root: Path) -> list[tuple[str, Path, Path, Path]]:
    if not root.is_dir():
        raise UsageError(f"--pairs {root} is not a folder of <name>/src, bgr, alpha triples")
    triples = [(folder.name, _first(folder, "src"), _first(folder, "bgr"), _first(folder, "alpha"))
               for folder in sorted(p for p in root.iterdir() if p.is_dir())]
    if not triples:
        raise UsageError(f"--pairs {root} holds no <name>/ folders with src, bgr and alpha images")
    return triples


def _photo_triples(src: Path, bgr: Path, alpha: Path) -> list[tuple[str, Path, Path, Path]]:
    plan = find_pairs(src, bgr)
    if plan.unmatched_sources or plan.ambiguous:
        first = (plan.unmatched_sources or [plan.ambiguous[0][0]])[0]
        raise UsageError(f"--src {first} has no single matching background in --bgr {bgr}")
    triples = []
    for pair in plan.pairs:
        if alpha.is_file():
            truth = alpha
        else:
            candidates = [p for p in alpha.glob(f"{pair.name}.*") if p.suffix.lower() in IMAGE_SUFFIXES]
            if len(candidates) != 1:
                raise UsageError(f"--alpha {alpha} has no single {pair.name}.* alpha for {pair.src}")
            truth = candidates[0]
        triples.append((pair.name, pair.src, pair.bgr, truth))
    return triples


def _alpha_of(path: Path) -> np.ndarray:
    image = load_image(path)
    return image[..., 0].astype(np.float32) / np.float32(255)


def _alpha_frames(alpha: Path) -> Iterator[np.ndarray]:
    """Per-frame true alphas: a folder of images (natural order) or an alpha video."""
    if not alpha.is_dir():
        import_av()
    source = open_source(alpha)
    try:
        for frame in source.frames():
            yield frame.rgb[..., 0].astype(np.float32) / np.float32(255)
    finally:
        source.close()


def evaluate(predictor: Any, config: EvaluateConfig | None = None, progress: Progress | None = None) -> EvaluateReport:
    """Mattes every triple with ``predictor`` and scores its alpha against the truth.

    Args:
        predictor: a loaded :class:`~bgm_deploy.predictor.Predictor` (or anything with its
            ``predict`` and ``describe``).
        config: see :class:`EvaluateConfig`.
        progress: called with one line per item.

    Raises:
        UsageError: bad paths, missing alphas, sizes that differ; ImageError, VideoError.
    """
    config = config or EvaluateConfig()
    say = progress or (lambda _message: None)
    if config.json_path is not None:
        check_output_file(config.json_path, "--json",
                          inputs=[("--src", config.src), ("--bgr", config.bgr), ("--alpha", config.alpha)])
    if config.align:
        import_cv2()
    started = time.perf_counter()
    if config.src is not None and is_video_job(config.src, config.bgr):
        report = EvaluateReport(predictor.describe(), str(config.src), align=config.align)
        truths = _alpha_frames(Path(str(config.alpha)))
        options = MatteOptions(outputs=("pha",), align=config.align, max_frames=config.max_frames)
        for matted in iter_mattes(config.src, str(config.bgr), predictor, outputs=("pha",), options=options):
            truth = next(truths, None)
            if truth is None:
                raise UsageError(f"--alpha {config.alpha} has fewer frames than --src {config.src} (ended at frame "
                                 f"{matted.index}); give one alpha per frame")
            report.items.append(_score(f"frame {matted.index:06d}", matted.pha, truth, 0.0))
            say(f"frame {matted.index}: mse {report.items[-1].mse:.4f}")
        report.seconds = time.perf_counter() - started
    else:
        if config.src is not None:
            triples = _photo_triples(Path(config.src), Path(str(config.bgr)), Path(str(config.alpha)))
            where = str(config.src)
        else:
            root = Path(config.pairs_dir) if config.pairs_dir is not None else BUNDLED_PAIRS_DIR
            triples = _triple_folders(root)
            where = str(root)
        report = EvaluateReport(predictor.describe(), where, align=config.align)
        for name, src_path, bgr_path, alpha_path in triples:
            src, bgr, truth = load_image(src_path), load_image(bgr_path), _alpha_of(alpha_path)
            if config.align:
                bgr, _ = align_background(src, bgr)
            if truth.shape != src.shape[:2] or bgr.shape != src.shape:
                raise UsageError(f"{name}: src {src.shape[1]}x{src.shape[0]}, bgr {bgr.shape[1]}x{bgr.shape[0]} and alpha "
                                 f"{truth.shape[1]}x{truth.shape[0]} must have one size")
            prediction = predictor.predict(src, bgr, ("pha",))
            report.items.append(_score(name, prediction.pha, truth, prediction.seconds))
            say(f"{name}: mse {report.items[-1].mse:.4f}, sad {report.items[-1].sad:.2f}")
        report.seconds = time.perf_counter() - started
    if not report.items:
        raise UsageError(f"nothing to evaluate in {report.source}")
    if config.json_path is not None:
        atomic_write_text(config.json_path, report.to_json())
    return report


def _score(name: str, pha: np.ndarray, truth: np.ndarray, seconds: float) -> ItemScores:
    if pha.shape != truth.shape:
        raise UsageError(f"{name}: the predicted alpha is {pha.shape[1]}x{pha.shape[0]} but the true one "
                         f"{truth.shape[1]}x{truth.shape[0]}")
    scores: MattingScores = matting_scores(np.clip(pha, 0, 1).astype(np.float32), truth)
    return ItemScores(name, int(truth.shape[1]), int(truth.shape[0]), scores.sad, scores.mse, scores.grad, scores.conn,
                      seconds)


def write_samples(output: str | Path, overwrite: bool = False) -> list[Path]:
    """Copies the bundled pairs as ``OUTPUT/src/<name>.jpg``, ``bgr/<name>.jpg`` and
    ``alpha/<name>.png``, the layout ``matte`` and ``evaluate`` take (a first run on real photos).

    Raises:
        UsageError: an existing file without ``overwrite``.
    """
    output = Path(output)
    written = []
    for name, src, bgr, alpha in _triple_folders(BUNDLED_PAIRS_DIR):
        for kind, source in (("src", src), ("bgr", bgr), ("alpha", alpha)):
            target = output / kind / f"{name}{source.suffix}"
            check_output_file(target, "OUTPUT", overwrite=overwrite)
            written.append(target)
    for path in written:
        kind, name = path.parent.name, path.stem
        atomic_source = BUNDLED_PAIRS_DIR / name / f"{kind}{path.suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, atomic_source.read_bytes())
    return written
