"""``verify``: numerical parity of an exported model against its PyTorch reference.

The reference is rebuilt from the file's embedded :class:`ModelConfig` (synthetic seed, or
the checkpoint it was exported from, checked by sha256) and run eagerly in float32 on the
same inputs as the exported model, which runs through the runtime layer.

Refinement-aware: the refiner picks patches from an error map, and tiny numeric
differences (ties in top-k, values at the threshold, fp16) can flip a patch between
runtimes. Each case reports the refined-patch counts on both sides and the cells that
differ; outputs are compared everywhere and, separately, outside the disagreeing 4x4
blocks. A selection that differs only at cells whose error sits on the selection boundary
is explained (warning); different values under the same selection is a failure.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_open, atomic_write_text
from .config import ModelConfig, check_resolution
from .errors import ImageError, UsageError
from .paths import check_input_file, check_output_dir

REPORT_SCHEMA_VERSION = 1
DEFAULT_RESOLUTIONS: tuple[tuple[int, int], ...] = ((320, 256), (256, 192), (640, 480))
INPUT_KINDS = ("random", "pairs")
# Default max-abs tolerances per precision, overridable per output.
DEFAULT_ATOL = {"float32": 1e-4, "float16": 2e-2}
DEFAULT_RTOL = 0.0
# An error value this close to the selection boundary counts as a tie.
TIE_TOLERANCE = {"float32": 1e-4, "float16": 1e-2}
IMAGE_OUTPUTS = ("pha", "fgr", "pha_sm", "fgr_sm", "err_sm", "err")
FULL_RES_OUTPUTS = ("pha", "fgr")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class VerifyConfig:
    """What to compare and how strictly.

    Attributes:
        provider: runtime provider for the exported model (``cpu``, ``cuda``, ``tensorrt``).
        resolutions: ``(width, height)`` of the random cases (each divisible by 4).
        batch: batch size of one extra random case at the first resolution (1 to skip it).
        inputs: ``random`` and/or ``pairs``.
        pairs_dir: folder of ``<name>/src.jpg, bgr.jpg`` pairs (default: the bundled ones).
        atol / rtol: per-output overrides; the defaults depend on the model's precision.
        checkpoint: the checkpoint the model was exported from (if it was).
        save_diff: folder for PNG heatmaps of |Δpha| and |Δfgr| of failing cases.
        seed: seed of the random inputs.
    """

    provider: str = "cpu"
    resolutions: tuple[tuple[int, int], ...] = DEFAULT_RESOLUTIONS
    batch: int = 2
    inputs: tuple[str, ...] = INPUT_KINDS
    pairs_dir: str | None = None
    atol: dict[str, float] = field(default_factory=dict)
    rtol: dict[str, float] = field(default_factory=dict)
    default_atol: float | None = None
    default_rtol: float | None = None
    checkpoint: str | None = None
    save_diff: str | None = None
    seed: int = 0
    allow_fallback: bool = False

    def __post_init__(self) -> None:
        for width, height in self.resolutions:
            check_resolution(width, height, "--resolution")
        if self.batch < 1:
            raise UsageError(f"batch={self.batch} is not valid; it must be >= 1")
        bad = [kind for kind in self.inputs if kind not in INPUT_KINDS]
        if bad or not self.inputs:
            raise UsageError(f"inputs={','.join(self.inputs)!r} is not valid; choose from {', '.join(INPUT_KINDS)}")
        for option, default, per_output in (("--atol", self.default_atol, self.atol), ("--rtol", self.default_rtol, self.rtol)):
            for name, value in {"every output": default, **per_output}.items():
                if value is not None and not value >= 0:  # also refuses NaN
                    raise UsageError(f"{option} {value} for {name} is not valid; tolerances must be >= 0")


@dataclass
class OutputStats:
    """Error statistics of one output in one case."""

    name: str
    shape: list[int]
    max_abs: float
    mean_abs: float
    p99_abs: float
    max_rel: float
    psnr: float | None
    over_tolerance: int
    worst_index: list[int]
    atol: float
    rtol: float
    passed: bool
    # The same, outside 4x4 blocks whose refinement differs between the two sides.
    max_abs_outside: float | None = None
    over_tolerance_outside: int | None = None


@dataclass
class SelectionStats:
    """How the refiner's patch selection compares between reference and runtime."""

    observable: bool
    cells: int = 0
    refined_reference: int = 0
    refined_runtime: int = 0
    differing: int = 0
    differing_at_ties: int = 0

    @property
    def refined_fraction(self) -> float:
        return self.refined_reference / self.cells if self.cells else 0.0


@dataclass
class CaseResult:
    """One input case: shape, per-output stats, selection analysis, verdict."""

    name: str
    shape: list[int]
    outputs: list[OutputStats]
    selection: SelectionStats
    verdict: str  # "pass", "warn" (explained selection differences) or "fail"
    notes: list[str] = field(default_factory=list)


@dataclass
class VerifyReport:
    """The whole verification; ``to_dict`` is the schema-versioned JSON report."""

    model: str
    format: str
    provider: str
    model_config: dict[str, Any]
    export: dict[str, Any]
    environment: dict[str, Any]
    cases: list[CaseResult]
    warnings: list[str]
    verdict: str  # "pass" or "fail"
    summary: list[str] = field(default_factory=list)
    schema_version: int = REPORT_SCHEMA_VERSION

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for case, raw in zip(self.cases, data["cases"]):
            raw["selection"]["refined_fraction"] = case.selection.refined_fraction
        return data


# -- statistics ---------------------------------------------------------------------------
def compare_output(
    name: str, reference: np.ndarray, actual: np.ndarray, atol: float, rtol: float, mask: np.ndarray | None = None
) -> OutputStats:
    """Error statistics of ``actual`` against ``reference`` (same shape, float).

    Args:
        mask: optional boolean array broadcastable to the shape; True marks elements to
            exclude from the "outside" statistics (patches whose refinement differs).
    """
    ref = reference.astype(np.float64)
    act = actual.astype(np.float64)
    diff = np.abs(act - ref)
    bound = atol + rtol * np.abs(ref)
    over = diff > bound
    worst = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.size else ()
    rel = diff / np.maximum(np.abs(ref), 1e-6)
    mse = float(np.mean(diff**2)) if diff.size else 0.0
    psnr = None
    if name in IMAGE_OUTPUTS:
        psnr = float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))
    stats = OutputStats(
        name=name,
        shape=list(reference.shape),
        max_abs=float(diff.max()) if diff.size else 0.0,
        mean_abs=float(diff.mean()) if diff.size else 0.0,
        p99_abs=float(np.percentile(diff, 99)) if diff.size else 0.0,
        max_rel=float(rel.max()) if diff.size else 0.0,
        psnr=psnr,
        over_tolerance=int(over.sum()),
        worst_index=[int(i) for i in worst],
        atol=atol,
        rtol=rtol,
        passed=not bool(over.any()),
    )
    if mask is not None:
        keep = ~np.broadcast_to(mask, diff.shape)
        stats.max_abs_outside = float(diff[keep].max()) if keep.any() else 0.0
        stats.over_tolerance_outside = int((over & keep).sum())
    return stats


def analyse_selection(
    ref_reference: np.ndarray,
    ref_runtime: np.ndarray,
    err_quarter: np.ndarray,
    mode: str,
    threshold: float,
    k: int,
    prevent_oversampling: bool,
    tie_tolerance: float,
) -> tuple[SelectionStats, np.ndarray]:
    """Compares two refinement maps ``(B, 1, H/4, W/4)``.

    A differing cell is "at a tie" when its quarter-resolution error (from the reference)
    lies within ``tie_tolerance`` of the selection boundary: the threshold in thresholding
    mode; in sampling mode the k-th largest error of its image (or 0, the
    prevent-oversampling cut).

    Returns:
        The statistics and the boolean map of differing cells.
    """
    a = ref_reference > 0.5
    b = ref_runtime > 0.5
    differing = a != b
    at_tie = np.zeros_like(differing)
    for image in range(differing.shape[0]):
        cells = err_quarter[image].reshape(-1)
        if mode == "sampling":
            kth = np.sort(cells)[::-1][min(k, cells.size) - 1]
            boundaries = [kth] + ([0.0] if prevent_oversampling else [])
        else:
            boundaries = [threshold]
        near = np.zeros(err_quarter[image].shape, dtype=bool)
        for boundary in boundaries:
            near |= np.abs(err_quarter[image] - boundary) <= tie_tolerance
        at_tie[image] = differing[image] & near
    stats = SelectionStats(
        observable=True,
        cells=int(a.size),
        refined_reference=int(a.sum()),
        refined_runtime=int(b.sum()),
        differing=int(differing.sum()),
        differing_at_ties=int(at_tie.sum()),
    )
    return stats, differing


# -- inputs -------------------------------------------------------------------------------
def _random_case(width: int, height: int, batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Smooth background + a random foreground blob: a refiner sees edges, as in real use.
    bgr = rng.random((batch, 3, height, width), dtype=np.float32)
    src = bgr.copy()
    ys, xs = np.mgrid[0:height, 0:width]
    for image in range(batch):
        cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
        blob = ((ys - cy) / (0.3 * height)) ** 2 + ((xs - cx) / (0.2 * width)) ** 2 < 1
        src[image][:, blob] = rng.random((3, 1), dtype=np.float32)
    return src, bgr


def bundled_pairs_dir() -> Path:
    return Path(__file__).resolve().parent / "data" / "pairs"


def _load_pairs(folder: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not folder.is_dir():
        raise UsageError(f"--pairs {folder} is not a directory of <name>/src.jpg + bgr.jpg pairs")
    pairs = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        src_path = next((p for p in sub.iterdir() if p.stem == "src"), None)
        bgr_path = next((p for p in sub.iterdir() if p.stem == "bgr"), None)
        if src_path is None or bgr_path is None:
            continue
        try:
            images = [np.asarray(ImageOps.exif_transpose(Image.open(p)).convert("RGB")) for p in (src_path, bgr_path)]
        except (OSError, UnidentifiedImageError) as exc:
            raise ImageError(f"{sub}: cannot read the pair ({exc})") from None
        if images[0].shape != images[1].shape:
            raise UsageError(f"{sub}: src {images[0].shape[:2]} and bgr {images[1].shape[:2]} differ in size")
        height, width = (images[0].shape[0] // 4) * 4, (images[0].shape[1] // 4) * 4
        src, bgr = (im[:height, :width].transpose(2, 0, 1)[None].astype(np.float32) / 255 for im in images)
        pairs.append((f"pair:{sub.name}", np.ascontiguousarray(src), np.ascontiguousarray(bgr)))
    if not pairs:
        raise UsageError(f"--pairs {folder} holds no <name>/src.* + bgr.* pairs")
    return pairs


def _cases(config: VerifyConfig) -> list[tuple[str, np.ndarray, np.ndarray]]:
    cases = []
    if "random" in config.inputs:
        for index, (width, height) in enumerate(config.resolutions):
            src, bgr = _random_case(width, height, 1, config.seed + index)
            cases.append((f"random {width}x{height}", src, bgr))
        if config.batch > 1:
            width, height = config.resolutions[0]
            src, bgr = _random_case(width, height, config.batch, config.seed + 100)
            cases.append((f"random {width}x{height} batch {config.batch}", src, bgr))
        # A frame identical to its background: thresholding may refine nothing at all.
        width, height = config.resolutions[0]
        src, _ = _random_case(width, height, 1, config.seed + 200)
        cases.append((f"random {width}x{height} src=bgr", src, src.copy()))
    if "pairs" in config.inputs:
        cases.extend(_load_pairs(Path(config.pairs_dir) if config.pairs_dir else bundled_pairs_dir()))
    return cases


# -- the check ----------------------------------------------------------------------------
def _tolerance(config: VerifyConfig, name: str, precision: str) -> tuple[float, float]:
    atol = config.atol.get(name, config.default_atol if config.default_atol is not None else DEFAULT_ATOL[precision])
    rtol = config.rtol.get(name, config.default_rtol if config.default_rtol is not None else DEFAULT_RTOL)
    return atol, rtol


def _quarter_error(err_sm: np.ndarray, height: int, width: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(err_sm, dtype=np.float32))
    return F.interpolate(tensor, size=(height // 4, width // 4), mode="bilinear", align_corners=False).numpy()


def _run_case(
    name: str,
    src: np.ndarray,
    bgr: np.ndarray,
    reference: Any,
    runner: Any,
    model_config: ModelConfig,
    io_dtype: np.dtype,
    precision: str,
    config: VerifyConfig,
) -> tuple[CaseResult, dict[str, np.ndarray], dict[str, np.ndarray]]:
    expected = reference.infer({"src": src, "bgr": bgr})
    got = runner.infer({"src": src.astype(io_dtype), "bgr": bgr.astype(io_dtype)})
    notes: list[str] = []
    outputs: list[OutputStats] = []
    selection = SelectionStats(observable=False)
    differing_full: np.ndarray | None = None
    if model_config.model_type == "refine" and model_config.refine_mode != "full":
        if "ref_sm" in got and "err_sm" in expected:
            height, width = src.shape[2], src.shape[3]
            err_q = _quarter_error(expected["err_sm"], height, width)
            selection, differing = analyse_selection(
                expected["ref_sm"],
                got["ref_sm"].astype(np.float32),
                err_q,
                model_config.refine_mode,
                model_config.refine_threshold,
                model_config.refine_sample_pixels // 16,
                model_config.refine_prevent_oversampling,
                TIE_TOLERANCE[precision],
            )
            differing_full = np.repeat(np.repeat(differing, 4, axis=2), 4, axis=3)
        else:
            notes.append("ref_sm is not an output of this model: the patch selection cannot be compared")
    elif model_config.model_type == "refine":
        selection = SelectionStats(True, int(np.prod(expected["ref_sm"].shape)), int(expected["ref_sm"].size), int(expected["ref_sm"].size))
    for out_name, value in got.items():
        if out_name not in expected:
            notes.append(f"output {out_name!r} is not an output of the reference model")
            outputs.append(OutputStats(out_name, list(value.shape), float("inf"), float("inf"), float("inf"), float("inf"),
                                       None, int(value.size), [], 0.0, 0.0, False))
            continue
        ref_value = expected[out_name]
        if tuple(value.shape) != tuple(ref_value.shape):
            notes.append(f"output {out_name!r} has shape {tuple(value.shape)}, the reference {tuple(ref_value.shape)}")
            outputs.append(OutputStats(out_name, list(value.shape), float("inf"), float("inf"), float("inf"), float("inf"),
                                       None, int(value.size), [], 0.0, 0.0, False))
            continue
        atol, rtol = _tolerance(config, out_name, precision)
        mask = differing_full if out_name in FULL_RES_OUTPUTS else None
        if out_name == "ref_sm":
            atol = max(atol, 0.5)  # compared cell by cell in the selection analysis instead
        outputs.append(compare_output(out_name, ref_value, value.astype(np.float32), atol, rtol, mask))

    shape_ok = all(np.isfinite(o.max_abs) for o in outputs)
    values_ok = all(o.passed for o in outputs)
    outside_ok = all(o.passed or (o.over_tolerance_outside == 0) for o in outputs) and shape_ok
    if values_ok and selection.differing == 0:
        verdict = "pass"
    elif selection.differing and selection.differing == selection.differing_at_ties and outside_ok:
        verdict = "warn"
        notes.append(
            f"selection differs at {selection.differing} tie cell(s) (error on the selection boundary); "
            "outputs match outside those patches"
        )
    else:
        verdict = "fail"
        if selection.differing > selection.differing_at_ties:
            notes.append(f"{selection.differing - selection.differing_at_ties} refined cell(s) differ away from any tie")
        elif selection.differing == 0 and shape_ok:
            notes.append("same patch selection, different values")
    case = CaseResult(name, list(src.shape), outputs, selection, verdict, notes)
    return case, expected, got


def _save_diff(folder: Path, case: CaseResult, expected: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> list[str]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    slug = "".join(c if c.isalnum() else "_" for c in case.name).strip("_")
    for name in FULL_RES_OUTPUTS:
        if name not in got or name not in expected or got[name].shape != expected[name].shape:
            continue
        diff = np.abs(got[name].astype(np.float32) - expected[name]).max(axis=1)  # (B, H, W)
        for image in range(diff.shape[0]):
            scale = max(float(diff[image].max()), 1e-12)
            heat = (np.clip(diff[image] / scale, 0, 1) * 255).astype(np.uint8)
            rgb = np.stack([heat, np.zeros_like(heat), 255 - heat], axis=-1)
            path = folder / f"{slug}_b{image}_{name}_absdiff_max{scale:.2e}.png"
            with atomic_open(path) as handle:
                Image.fromarray(rgb).save(handle, format="PNG")
            written.append(str(path))
    return written


def verify(model_path: str | Path, config: VerifyConfig | None = None, progress: Progress | None = None) -> VerifyReport:
    """Verifies an exported model (.onnx or TorchScript) against PyTorch.

    Raises:
        ModelFileError / CheckpointError / RuntimeUnavailableError / UsageError: the check
            cannot be run (exit code 2 on the CLI). A parity failure is *not* raised: it is
            the report's verdict (``report.passed`` is False).
    """
    from exporters.metadata import read_metadata
    from runtimes import create_runner
    from runtimes.providers import runner_options

    from .environment import environment_info

    config = config or VerifyConfig()
    say = progress or (lambda message: None)
    path = Path(model_path)
    # Everything that can be wrong with the request is checked before the (long) run.
    if config.save_diff:
        check_output_dir(config.save_diff, "--save-diff")
    if "pairs" in config.inputs and config.pairs_dir and not Path(config.pairs_dir).is_dir():
        raise UsageError(f"--pairs {config.pairs_dir} is not a directory of <name>/src.jpg + bgr.jpg pairs")
    if config.checkpoint is not None:
        check_input_file(config.checkpoint, "--checkpoint")
    metadata = read_metadata(path)
    model_config = metadata.model_config
    available = tuple(metadata.export.get("outputs") or ())
    unknown = sorted((set(config.atol) | set(config.rtol)) - set(available)) if available else []
    if unknown:
        raise UsageError(f"--atol/--rtol name an output {path.name} does not have: {', '.join(unknown)}; "
                         f"its outputs: {', '.join(available)}")
    if model_config.checkpoint_sha256 is None and config.checkpoint is not None:
        raise UsageError(f"{path} was exported with synthetic weights ({model_config.weights_label}); "
                         "--checkpoint does not apply to it (drop it, or verify a model exported from that checkpoint)")
    io_dtype = np.dtype(metadata.export.get("io_dtype", "float32"))
    precision = "float16" if metadata.export.get("precision") == "fp16" else "float32"
    if model_config.checkpoint_sha256 is not None and config.checkpoint is None:
        raise UsageError(
            f"{path} was exported from a checkpoint (sha256 {model_config.checkpoint_sha256[:12]}…); "
            "pass the same file with --checkpoint"
        )
    runner_name, options = runner_options(metadata.format, config.provider, config.allow_fallback)
    say(f"reference: PyTorch eager float32, {model_config.backbone} {model_config.model_type}, weights {model_config.weights_label}")
    reference = create_runner("pytorch", model_config=model_config, checkpoint=config.checkpoint)
    runner = create_runner(runner_name, path=path, **options)
    cases: list[CaseResult] = []
    warnings: list[str] = []
    summary: list[str] = []
    with reference, runner:
        say(f"runtime: {runner_name} ({runner.provider})")
        for name, src, bgr in _cases(config):
            say(f"case {name} {tuple(src.shape)}")
            case, expected, got = _run_case(name, src, bgr, reference, runner, model_config, io_dtype, precision, config)
            if case.verdict == "fail" and config.save_diff:
                case.notes.extend(f"diff heatmap: {p}" for p in _save_diff(Path(config.save_diff), case, expected, got))
            cases.append(case)
        provider = runner.provider
    if model_config.model_type == "refine" and model_config.refine_mode != "full":
        observed = [c.selection for c in cases if c.selection.observable]
        if not observed:
            warnings.append("the patch selection was not observable (ref_sm not exported): refinement is checked only through pha/fgr")
        elif sum(s.refined_reference for s in observed) == 0:
            warnings.append("the refiner refined no patch in any case: this check proves nothing about the refiner")
        else:
            share = sum(s.refined_reference for s in observed) / max(sum(s.cells for s in observed), 1)
            summary.append(f"the refiner touched {share:.1%} of the quarter-resolution cells across cases")
    if any(c.verdict == "warn" for c in cases):
        warnings.append("some cases differ only in patches selected at ties (explained; see the cases' notes)")
    verdict = "fail" if any(c.verdict == "fail" for c in cases) else "pass"
    return VerifyReport(
        model=str(path),
        format=metadata.format,
        provider=provider,
        model_config=model_config.to_dict(),
        export=metadata.export,
        environment=environment_info(),
        cases=cases,
        warnings=warnings,
        verdict=verdict,
        summary=summary,
    )


def format_table(report: VerifyReport) -> str:
    """A readable table: one row per case × output, PASS/FAIL, worst error and where."""
    header = f"{'case':<40} {'output':<7} {'max abs':>9} {'p99 abs':>9} {'PSNR dB':>8} {'tol':>8} {'refined ref/rt (diff)':>22}  result  worst at"
    lines = [header, "-" * len(header)]
    for case in report.cases:
        sel = case.selection
        sel_text = f"{sel.refined_reference}/{sel.refined_runtime} ({sel.differing})" if sel.observable else "n/a"
        for index, out in enumerate(case.outputs):
            psnr = "-" if out.psnr is None else ("inf" if out.psnr == float("inf") else f"{out.psnr:.1f}")
            status = "PASS" if out.passed else ("WARN" if case.verdict == "warn" else "FAIL")
            lines.append(
                f"{case.name if index == 0 else '':<40} {out.name:<7} {out.max_abs:>9.2e} {out.p99_abs:>9.2e} {psnr:>8} "
                f"{out.atol:>8.0e} {sel_text if index == 0 else '':>22}  {status:<6}  {tuple(out.worst_index)}"
            )
        for note in case.notes:
            lines.append(f"    note: {note}")
    lines.append("")
    for line in report.summary:
        lines.append(line)
    for warning in report.warnings:
        lines.append(f"warning: {warning}")
    lines.append(f"verdict: {report.verdict.upper()} ({report.format} on {report.provider}, {len(report.cases)} cases)")
    return "\n".join(lines)


def write_json(report: VerifyReport, path: str | Path) -> None:
    """Writes the report atomically."""
    atomic_write_text(path, json.dumps(report.to_dict(), indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
