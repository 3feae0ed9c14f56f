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

import dataclasses
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exporters.atomic import atomic_open, atomic_write_text
from exporters.metadata import fixed_input_shape, read_metadata
from exporters.paths import check_input_file, check_output_dir, check_output_file
from model.config import ModelConfig, check_resolution
from model.demo import demo_checkpoint_for
from model.errors import UsageError
from runtimes import create_runner

from .environment import environment_info
from .images import BUNDLED_PAIRS_DIR, load_image
from .model_spec import ModelSpec

REPORT_SCHEMA_VERSION = 1
DEFAULT_RESOLUTIONS: tuple[tuple[int, int], ...] = ((320, 256), (256, 192), (640, 480))
INPUT_KINDS = ("random", "pairs")
# Default max-abs tolerances per precision, overridable per output.
DEFAULT_ATOL = {"float32": 1e-4, "float16": 2e-2}
DEFAULT_RTOL = 0.0
IMAGE_OUTPUTS = ("pha", "fgr", "pha_sm", "fgr_sm", "err_sm", "err")
FULL_RES_OUTPUTS = ("pha", "fgr")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class VerifyConfig:
    """What to compare and how strictly.

    Attributes:
        target: where the exported model runs: a registered target (``onnxruntime-cpu``,
            ``openvino-cpu``, ...) or a device word (``cpu``, ``cuda``, ``tensorrt``); None: the
            file format's CPU default. An unusable target is an error, never a silent CPU run.
        options: the target's own options (``{"precision": "default"}`` for OpenVINO).
        threads: intra-op threads of the runtime (None: its default).
        resolutions: ``(width, height)`` of the random cases (each divisible by 4).
        batch: batch size of one extra random case at the first resolution (1 to skip it).
        inputs: ``random`` and/or ``pairs``.
        pairs_dir: folder of ``<name>/src.jpg, bgr.jpg`` pairs (default: the bundled ones).
        atol / rtol: per-output overrides; the defaults depend on the model's precision.
        checkpoint: the checkpoint the model was exported from (if it was).
        save_diff: folder for PNG heatmaps of |Δpha| and |Δfgr| of failing cases.
        seed: seed of the random inputs.
        allow_fallback: run on what loaded (loud warning) when the provider is not usable.
        json_path: also write the JSON report there (checked before the run, written atomically).
        config_file: the model's metadata JSON (the ``<file>.bgm.json`` export wrote) for a file
            whose embedded metadata a tool stripped; read before the file's own (``--config``).
    """

    target: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None
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
    json_path: str | None = None
    config_file: str | None = None

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
    target: str = ""
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


def selection_boundaries(err_image: np.ndarray, mode: str, threshold: float, k: int, prevent_oversampling: bool) -> list[float]:
    """The error values at which a cell of one image flips in or out of the selection.

    Thresholding: the threshold. Sampling: the k-th largest error of the image (cells tied
    with it are picked in an implementation-defined order) and, with prevent-oversampling,
    0 (cells with zero error are dropped).
    """
    if mode != "sampling":
        return [float(threshold)]
    cells = np.sort(err_image.reshape(-1))[::-1]
    boundaries = [float(cells[min(k, cells.size) - 1])] if cells.size and k > 0 else []
    return boundaries + ([0.0] if prevent_oversampling else [])


def near_boundary(
    err_quarter: np.ndarray, mode: str, threshold: float, k: int, prevent_oversampling: bool, tie_tolerance: float
) -> np.ndarray:
    """Boolean map ``(B, 1, Hq, Wq)`` of cells whose error lies within ``tie_tolerance`` of a
    selection boundary: a runtime whose error map differs by less than the tolerance may
    select or drop exactly these cells."""
    near = np.zeros(err_quarter.shape, dtype=bool)
    for image in range(err_quarter.shape[0]):
        for boundary in selection_boundaries(err_quarter[image], mode, threshold, k, prevent_oversampling):
            near[image] |= np.abs(err_quarter[image] - boundary) <= tie_tolerance
    return near


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
    lies within ``tie_tolerance`` (the error map's tolerance) of the selection boundary:
    the threshold in thresholding mode; in sampling mode the k-th largest error of its
    image (or 0, the prevent-oversampling cut). Any other differing cell is a real
    disagreement.

    Returns:
        The statistics and the boolean map of differing cells.
    """
    a = ref_reference > 0.5
    b = ref_runtime > 0.5
    differing = a != b
    at_tie = differing & near_boundary(err_quarter, mode, threshold, k, prevent_oversampling, tie_tolerance)
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


def _load_pairs(folder: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    if not folder.is_dir():
        raise UsageError(f"--pairs {folder} is not a directory of <name>/src.jpg + bgr.jpg pairs")
    pairs = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        src_path = next((p for p in sub.iterdir() if p.stem == "src"), None)
        bgr_path = next((p for p in sub.iterdir() if p.stem == "bgr"), None)
        if src_path is None or bgr_path is None:
            continue
        images = [load_image(path) for path in (src_path, bgr_path)]
        if images[0].shape != images[1].shape:
            raise UsageError(f"{sub}: src {images[0].shape[:2]} and bgr {images[1].shape[:2]} differ in size")
        height, width = (images[0].shape[0] // 4) * 4, (images[0].shape[1] // 4) * 4
        src, bgr = (im[:height, :width].transpose(2, 0, 1)[None].astype(np.float32) / 255 for im in images)
        pairs.append((f"pair:{sub.name}", np.ascontiguousarray(src), np.ascontiguousarray(bgr)))
    if not pairs:
        raise UsageError(f"--pairs {folder} holds no <name>/src.* + bgr.* pairs")
    return pairs


def _fixed_size_cases(config: VerifyConfig, shape: tuple[int, int, int, int]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The cases for a file that takes one input shape (ExecuTorch, LiteRT, Core ML): as many
    random cases as ``config.resolutions`` asks for, all at that shape, the src=bgr case, and
    the pairs resized to it (bilinear)."""
    batch, _, height, width = shape
    cases = []
    if "random" in config.inputs:
        for index in range(len(config.resolutions)):
            src, bgr = _random_case(width, height, batch, config.seed + index)
            cases.append((f"random {width}x{height}" + (f" batch {batch}" if batch > 1 else ""), src, bgr))
        src, _ = _random_case(width, height, batch, config.seed + 200)
        cases.append((f"random {width}x{height} src=bgr", src, src.copy()))
    if "pairs" in config.inputs:
        import torch

        for name, src, bgr in _load_pairs(Path(config.pairs_dir) if config.pairs_dir else BUNDLED_PAIRS_DIR):
            resized = [torch.nn.functional.interpolate(torch.from_numpy(x), size=(height, width), mode="bilinear",
                                                       align_corners=False).clamp(0, 1).numpy() for x in (src, bgr)]
            src, bgr = (np.ascontiguousarray(np.repeat(x, batch, axis=0)) for x in resized)
            cases.append((f"{name} resized to {width}x{height}", src, bgr))
    return cases


def _cases(config: VerifyConfig, fixed_shape: tuple[int, int, int, int] | None = None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    if fixed_shape is not None:
        return _fixed_size_cases(config, fixed_shape)
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
        cases.extend(_load_pairs(Path(config.pairs_dir) if config.pairs_dir else BUNDLED_PAIRS_DIR))
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


def _blocks(cells: np.ndarray) -> np.ndarray:
    """Quarter-resolution cells ``(B, 1, Hq, Wq)`` to their 4x4 full-resolution blocks."""
    return np.repeat(np.repeat(cells, 4, axis=2), 4, axis=3)


def _mismatch(name: str, value: np.ndarray) -> OutputStats:
    inf = float("inf")
    return OutputStats(name, list(value.shape), inf, inf, inf, inf, None, int(value.size), [], 0.0, 0.0, False)


def compare_case(
    name: str,
    shape: list[int],
    expected: dict[str, np.ndarray],
    got: dict[str, np.ndarray],
    model_config: ModelConfig,
    precision: str,
    config: VerifyConfig,
) -> CaseResult:
    """Compares one case's outputs: the single parity rule of bgm-deploy.

    Every check of an exported file against PyTorch (verify, the re-check after export)
    ends here. Refinement-aware: a cell whose quarter-resolution error lies within the
    error map's tolerance of the selection boundary may be selected on one side only; the
    4x4 blocks of such cells are excluded from the "outside" statistics. Verdicts:

    * ``pass``: every output within tolerance, same selection;
    * ``warn``: the selections differ only at boundary cells and every output matches
      outside those blocks (explained in the notes);
    * ``fail``: anything else: a flip away from the boundary, different values under the
      same selection, a missing or misshapen output.

    When ``ref_sm`` is not an output (pruned), the selection cannot be observed; the
    blocks of every cell near the boundary (on the reference's error map) are then the
    ones a runtime may legitimately refine differently.
    """
    model_config = model_config.resolved()  # settings left unset: the defaults the model ran with
    notes: list[str] = []
    outputs: list[OutputStats] = []
    selection = SelectionStats(observable=False)
    excluded_q: np.ndarray | None = None  # quarter-resolution cells whose outputs may differ
    differing_q: np.ndarray | None = None
    ambiguous = 0
    refines = model_config.model_type == "refine"
    if refines and model_config.refine_mode != "full" and "err_sm" in expected:
        height, width = shape[2], shape[3]
        err_q = _quarter_error(expected["err_sm"], height, width)
        tie_tolerance = _tolerance(config, "err_sm", precision)[0]
        args = (model_config.refine_mode, model_config.refine_threshold, model_config.refine_sample_pixels // 16,
                model_config.refine_prevent_oversampling)
        if "ref_sm" in got and tuple(got["ref_sm"].shape) == tuple(expected["ref_sm"].shape):
            selection, differing_q = analyse_selection(expected["ref_sm"], got["ref_sm"].astype(np.float32), err_q,
                                                       *args, tie_tolerance)
            excluded_q = differing_q
        elif "ref_sm" not in got:
            excluded_q = near_boundary(err_q, *args, tie_tolerance)
            ambiguous = int(excluded_q.sum())
            notes.append("ref_sm is not an output of this model: the patch selection cannot be compared; "
                         f"{ambiguous} cell(s) near the selection boundary may be refined differently")
    elif refines and "ref_sm" in expected:
        cells = int(expected["ref_sm"].size)
        selection = SelectionStats(True, cells, cells, cells)
    for out_name, value in got.items():
        if out_name not in expected:
            notes.append(f"output {out_name!r} is not an output of the reference model")
            outputs.append(_mismatch(out_name, value))
            continue
        ref_value = expected[out_name]
        if tuple(value.shape) != tuple(ref_value.shape):
            notes.append(f"output {out_name!r} has shape {tuple(value.shape)}, the reference {tuple(ref_value.shape)}")
            outputs.append(_mismatch(out_name, value))
            continue
        atol, rtol = _tolerance(config, out_name, precision)
        mask = None
        if excluded_q is not None and out_name in FULL_RES_OUTPUTS:
            mask = _blocks(excluded_q)
        elif excluded_q is not None and out_name == "ref_sm":
            mask = excluded_q
        outputs.append(compare_output(out_name, ref_value, value.astype(np.float32), atol, rtol, mask))

    shape_ok = all(np.isfinite(o.max_abs) for o in outputs)
    values_ok = all(o.passed for o in outputs)
    outside_ok = shape_ok and all(o.passed or o.over_tolerance_outside == 0 for o in outputs)
    if values_ok and selection.differing == 0:
        verdict = "pass"
    elif selection.differing and selection.differing == selection.differing_at_ties and outside_ok:
        verdict = "warn"
        notes.append(
            f"selection differs at {selection.differing} cell(s), all on the selection boundary (error within "
            f"{_tolerance(config, 'err_sm', precision)[0]:.0e} of the k-th value/threshold); outputs match outside those patches"
        )
    elif not selection.observable and ambiguous and outside_ok:
        verdict = "warn"
        notes.append("outputs differ only inside patches whose selection is ambiguous (error on the selection "
                     "boundary); they match everywhere else")
    else:
        verdict = "fail"
        if selection.differing > selection.differing_at_ties:
            notes.append(f"{selection.differing - selection.differing_at_ties} refined cell(s) differ away from any tie")
        elif not shape_ok:
            pass  # the shape/name notes above say what is wrong
        elif selection.observable and selection.differing == 0:
            notes.append("same patch selection, different values")
        elif selection.observable:
            notes.append("the selection differs only at boundary cells, but outputs also differ outside those patches")
        else:
            notes.append("outputs differ outside the patches whose selection is ambiguous")
    return CaseResult(name, list(shape), outputs, selection, verdict, notes)


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
    case = compare_case(name, list(src.shape), expected, got, model_config, precision, config)
    return case, expected, got


def _heat_colour(level: np.ndarray) -> np.ndarray:
    """0..1 → RGB uint8 along dark blue → magenta → orange → yellow (readable over grey)."""
    stops = np.array([[20, 30, 140], [200, 40, 160], [255, 140, 0], [255, 255, 60]], dtype=np.float32)
    position = np.clip(level, 0, 1) * (len(stops) - 1)
    low = np.minimum(position.astype(int), len(stops) - 2)
    frac = (position - low)[..., None]
    return (stops[low] * (1 - frac) + stops[low + 1] * frac).astype(np.uint8)


def render_diff(image: np.ndarray, diff: np.ndarray, tolerance: float, title: str) -> Any:
    """A heatmap a person can read: |difference| over the (greyed) input image, on a log
    scale from tolerance/100 to the maximum, with pixels over tolerance opaque, and a
    labelled colour bar (scale, tolerance mark, maximum) underneath.

    Args:
        image: the source image ``(3, H, W)`` float 0..1.
        diff: ``(H, W)`` absolute differences.
    """
    from PIL import Image, ImageDraw

    height, width = diff.shape
    grey = (np.clip(image.mean(axis=0), 0, 1) * 160 + 40).astype(np.uint8)
    base = np.stack([grey] * 3, axis=-1).astype(np.float32)
    peak = float(diff.max())
    low = max(tolerance / 100, 1e-9)
    high = max(peak, low * 10)
    level = np.clip((np.log10(np.maximum(diff, low)) - np.log10(low)) / (np.log10(high) - np.log10(low)), 0, 1)
    # Visible where it matters: everything over tolerance fully opaque, the rest by size.
    opacity = np.where(diff > tolerance, 1.0, level * 0.8)[..., None]
    heat = base * (1 - opacity) + _heat_colour(level).astype(np.float32) * opacity
    bar_height, margin = 56, 6
    canvas = Image.new("RGB", (max(width, 360), height + bar_height + 18), (255, 255, 255))
    canvas.paste(Image.fromarray(heat.astype(np.uint8)), (0, 18))
    draw = ImageDraw.Draw(canvas)
    over = int((diff > tolerance).sum())
    draw.text((2, 3), f"{title}: max {peak:.2e}, {over} px over tolerance {tolerance:.0e}", fill=(0, 0, 0))
    bar_width = canvas.width - 2 * margin
    ramp = _heat_colour(np.linspace(0, 1, bar_width, dtype=np.float32))
    top = height + 18 + margin
    canvas.paste(Image.fromarray(np.repeat(ramp[None], 14, axis=0)), (margin, top))

    def x_of(value: float) -> int:
        fraction = (np.log10(max(value, low)) - np.log10(low)) / (np.log10(high) - np.log10(low))
        return margin + int(round(float(np.clip(fraction, 0, 1)) * (bar_width - 1)))

    for value, label in ((low, f"<={low:.0e}"), (tolerance, f"tol {tolerance:.0e}"), (high, f"{high:.1e}")):
        x = x_of(value)
        draw.line([(x, top - 2), (x, top + 16)], fill=(0, 0, 0), width=1)
        text_x = min(max(x - 20, 0), canvas.width - 60)
        draw.text((text_x, top + 18), label, fill=(0, 0, 0))
    draw.text((margin, top + 32), "|difference|, log scale; grey: the input image", fill=(80, 80, 80))
    return canvas


def _save_diff(
    folder: Path, case: CaseResult, src: np.ndarray, expected: dict[str, np.ndarray], got: dict[str, np.ndarray]
) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    slug = "".join(c if c.isalnum() else "_" for c in case.name).strip("_")
    tolerances = {out.name: out.atol for out in case.outputs}
    for name in FULL_RES_OUTPUTS:
        if name not in got or name not in expected or got[name].shape != expected[name].shape:
            continue
        diff = np.abs(got[name].astype(np.float32) - expected[name]).max(axis=1)  # (B, H, W)
        for image in range(diff.shape[0]):
            scale = float(diff[image].max())
            picture = render_diff(src[image], diff[image], tolerances.get(name, 1e-4), f"{case.name} [{image}] |d{name}|")
            path = folder / f"{slug}_b{image}_{name}_absdiff_max{scale:.2e}.png"
            with atomic_open(path) as handle:
                picture.save(handle, format="PNG")
            written.append(str(path))
    return written


def verify(model_path: str | Path, config: VerifyConfig | None = None, progress: Progress | None = None) -> VerifyReport:
    """Verifies an exported model (.onnx or TorchScript) against PyTorch.

    Raises:
        ModelFileError / CheckpointError / RuntimeUnavailableError / UsageError: the check
            cannot be run (exit code 2 on the CLI). A parity failure is *not* raised: it is
            the report's verdict (``report.passed`` is False).
    """


    config = config or VerifyConfig()
    say = progress or (lambda message: None)
    path = Path(model_path)
    # Everything that can be wrong with the request is checked before the (long) run.
    if config.json_path:  # a result that cannot be written at the end is lost
        check_output_file(config.json_path, "--json", inputs=[("MODEL", path), ("--checkpoint", config.checkpoint)])
    if config.save_diff:
        check_output_dir(config.save_diff, "--save-diff")
    if "pairs" in config.inputs and config.pairs_dir and not Path(config.pairs_dir).is_dir():
        raise UsageError(f"--pairs {config.pairs_dir} is not a directory of <name>/src.jpg + bgr.jpg pairs")
    if config.checkpoint is not None:
        check_input_file(config.checkpoint, "--checkpoint")
    metadata = read_metadata(path, config.config_file)
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
    if config.checkpoint is None and demo_checkpoint_for(model_config.checkpoint_sha256) is not None:
        config = dataclasses.replace(config, checkpoint=str(demo_checkpoint_for(model_config.checkpoint_sha256)))
        say("reference weights: the bundled demo weights (the file was exported from them)")
    if model_config.checkpoint_sha256 is not None and config.checkpoint is None:
        raise UsageError(
            f"{path} was exported from a checkpoint (sha256 {model_config.checkpoint_sha256[:12]}…); "
            "pass the same file with --checkpoint"
        )
    spec = ModelSpec(model=str(path), config_file=config.config_file, target=config.target,
                     allow_fallback=config.allow_fallback, options=config.options, threads=config.threads)
    runner, target, _ = spec.create_runner(model_config)
    say(f"reference: PyTorch eager float32, {model_config.backbone} {model_config.model_type}, weights {model_config.weights_label}")
    reference = create_runner("pytorch", model_config=model_config, checkpoint=config.checkpoint)
    cases: list[CaseResult] = []
    warnings: list[str] = []
    summary: list[str] = []
    with reference, runner:
        say(f"target: {target.name} ({runner.provider})")
        for name, src, bgr in _cases(config, fixed_input_shape(metadata.export)):
            say(f"case {name} {tuple(src.shape)}")
            case, expected, got = _run_case(name, src, bgr, reference, runner, model_config, io_dtype, precision, config)
            if case.verdict == "fail" and config.save_diff:
                case.notes.extend(f"diff heatmap: {p}" for p in _save_diff(Path(config.save_diff), case, src, expected, got))
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
    report = VerifyReport(
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
        target=target.name,
    )
    if config.json_path:
        write_json(report, config.json_path)
    return report


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
    lines.append(f"verdict: {report.verdict.upper()} ({report.format} on {report.target}: {report.provider}, {len(report.cases)} cases)")
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
