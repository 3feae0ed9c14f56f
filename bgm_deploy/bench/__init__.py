"""``bench``: compare backends on one machine, in one run (the API behind ``bgm-deploy bench``).

Protocol (see benchmarks/README.md): for every backbone × resolution × precision the
model is built (or exported, once) per backend, inputs are prepared in the backend's own
form, warmup calls are discarded, and per-iteration times are summarised. ``fixed`` mode
sets ``refine_prevent_oversampling=False`` so exactly ``sample_pixels`` are refined every
frame (timings do not depend on what the weights select); ``adaptive`` cycles through the
bundled real photo pairs with the model's own settings and reports the refined fraction.
"""

from __future__ import annotations

import io
import itertools
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from exporters.metadata import detect_format, read_metadata
from exporters.paths import check_input_file, check_output_dir, check_output_file
from model import BACKBONES
from model.checkpoint import build_model, config_for_checkpoint
from model.config import NAMED_SIZES, ModelConfig, auto_backbone_scale, check_backbone_scale_for, parse_size
from model.errors import BgmDeployError, RuntimeUnavailableError, UsageError
from model.spec import BACKBONE_SCALE_RANGE, MAX_SAMPLE_PIXELS, MAX_SIDE, MIN_SAMPLE_PIXELS

from ..environment import environment_info
from ..images import BUNDLED_PAIRS_DIR, load_image, resize_rgb
from ..metrics import matting_scores
from .backends import (
    ORIGINAL_BACKEND,
    PRECISIONS,
    ArtifactCache,
    Inputs,
    compatible_rows,
    get_row,
    prepare_backend,
    row_names,
    unavailable_reason,
)
from .flops import count_flops, measure_peak_gemm
from .harness import TimingConfig, measure, measure_stages
from .report import (
    BenchReport,
    BenchResult,
    SkippedBackend,
    StageResult,
    write_json,
    write_markdown,
    write_plot,
)
from .stats import NOISY_CV, speedup, summarize

MODES = ("fixed", "adaptive")
NAMED_RESOLUTIONS = NAMED_SIZES
# The fixed-mode input: the HD pair, resized to each benchmark resolution.
FIXED_PAIR = "astronaut_rocket_1920x1080_shifted"

Progress = Callable[[str], None]


def parse_resolution(text: str) -> tuple[int, int]:
    """``"hd"``, ``"4k"`` or ``"WxH"`` → ``(width, height)``; both at least 32 and divisible by 4."""
    return parse_size(text, "--resolution", minimum=32)


def parse_warmup(text: str) -> int | float:
    """``"3"`` → 3 calls; ``"2.5"`` or ``"2.5s"`` → 2.5 seconds."""
    value = text.strip().lower()
    try:
        if value.endswith("s"):
            return float(value[:-1])
        return float(value) if "." in value else int(value)
    except ValueError:
        raise UsageError(f"warmup={text!r} is not valid; give a number of calls (e.g. 3) or seconds (e.g. 2.5s)") from None


def split_list(values: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Comma-separated and repeated option values, flattened, empty items dropped."""
    return tuple(item.strip() for value in values for item in value.split(",") if item.strip())


@dataclass(frozen=True)
class BenchConfig:
    """What to benchmark and how.

    Attributes:
        models: exported files (.onnx, .pt, .engine) to benchmark instead of exporting;
            each is compared with eager PyTorch built from its embedded model config.
        backends: backends to run; None = every backend, unusable ones reported as skipped.
            Named explicitly, an unusable backend is an error.
        backbones: backbones of the default (synthetic-weights) model.
        resolutions: ``(width, height)`` pairs.
        batch: frames per call.
        precisions: ``"fp32"`` and/or ``"fp16"``.
        timing: warmup and measured iterations/duration.
        mode: ``"fixed"`` or ``"adaptive"``.
        end_to_end: also time decode → preprocess → infer → postprocess → encode.
        threads: intra-op threads for torch and onnxruntime (None: torch's current setting).
        backbone_scale / sample_pixels: None picks the original's presets per resolution.
        checkpoint: weights file for the eager model (and exports); None = synthetic.
        seed: synthetic-weights seed.
        onnx_exporter: ``"legacy"`` or ``"dynamo"`` for the ONNX exports; None = the
            exporter's default (what ``bgm-deploy export`` writes).
        count_flops: count FLOPs and measure the GEMM peak.
        quality: score each row's alpha against the bundled pairs' ground truth (alpha MSE/SAD).
        workdir: where exports go (None: a temporary directory, removed afterwards).
        json_path / markdown_path / plot_path: report files to write.
    """

    models: tuple[Path, ...] = ()
    backends: tuple[str, ...] | None = None
    backbones: tuple[str, ...] = ("mobilenetv2",)
    resolutions: tuple[tuple[int, int], ...] = ((1920, 1080),)
    batch: int = 1
    precisions: tuple[str, ...] = ("fp32",)
    timing: Any = None  # bgm_deploy.bench.harness.TimingConfig; None = its defaults
    mode: str = "fixed"
    end_to_end: bool = False
    threads: int | None = None
    backbone_scale: float | None = None
    sample_pixels: int | None = None
    checkpoint: Path | None = None
    seed: int = 0
    onnx_exporter: str | None = None
    count_flops: bool = True
    quality: bool = True
    workdir: Path | None = None
    json_path: Path | None = None
    markdown_path: Path | None = None
    plot_path: Path | None = None

    def __post_init__(self) -> None:
        if self.timing is None:
            object.__setattr__(self, "timing", TimingConfig())
        if self.mode not in MODES:
            raise UsageError(f"mode={self.mode!r} is not valid; valid: {', '.join(MODES)}")
        if self.batch < 1:
            raise UsageError(f"batch={self.batch!r} is not valid; it must be >= 1")
        if self.onnx_exporter not in (None, "legacy", "dynamo"):
            raise UsageError(f"onnx_exporter={self.onnx_exporter!r} is not valid; valid: legacy, dynamo")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"threads={self.threads!r} is not valid; it must be >= 1")
        for backend in self.backends or ():
            get_row(backend)  # raises, naming the valid rows
        for precision in self.precisions:
            if precision not in PRECISIONS:
                raise UsageError(f"precision={precision!r} is not valid; valid: {', '.join(PRECISIONS)}")
        if not self.resolutions or not self.precisions or not self.backbones:
            raise UsageError("resolutions, precisions and backbones must each name at least one value")
        for backbone in self.backbones:
            if backbone not in BACKBONES:
                raise UsageError(f"backbone={backbone!r} is not valid; valid: {', '.join(BACKBONES)}")
        for width, height in self.resolutions:
            if width % 4 or height % 4 or not (32 <= width <= MAX_SIDE and 32 <= height <= MAX_SIDE):
                raise UsageError(f"--resolution {width}x{height} is not valid; width and height must be in 32..{MAX_SIDE} "
                                 "and divisible by 4")
            if self.backbone_scale is not None:
                check_backbone_scale_for(self.backbone_scale, width, height)
        low, high = BACKBONE_SCALE_RANGE
        if self.backbone_scale is not None and not low <= self.backbone_scale <= high:
            raise UsageError(f"--backbone-scale {self.backbone_scale} is not valid; it must be in [{low}, {high}]")
        if self.sample_pixels is not None and not MIN_SAMPLE_PIXELS <= self.sample_pixels <= MAX_SAMPLE_PIXELS:
            raise UsageError(f"--sample-pixels {self.sample_pixels} is not valid; it must be in "
                             f"{MIN_SAMPLE_PIXELS}..{MAX_SAMPLE_PIXELS}")
        # Paths before any work: a missing checkpoint or an unwritable report must not cost a run.
        for model in self.models:
            check_input_file(model, "MODEL")
        if self.checkpoint is not None:
            check_input_file(self.checkpoint, "--checkpoint", "pass the path of a pytorch_<backbone>.pth file")
        inputs = [*(("MODEL", m) for m in self.models), ("--checkpoint", self.checkpoint)]
        reports = [("--json", self.json_path), ("--markdown", self.markdown_path), ("--plot", self.plot_path)]
        for label, path in reports:
            if path is not None:
                check_output_file(path, label, inputs=inputs + [r for r in reports if r[0] != label])
        if self.workdir is not None:
            check_output_dir(self.workdir, "--workdir")


def _default_progress(message: str) -> None:
    return None


# -- inputs ------------------------------------------------------------------------------------
def _load_rgb(path: Path, size: tuple[int, int]) -> np.ndarray:
    # Bilinear, as the published numbers' inputs were made.
    return resize_rgb(load_image(path), size, "bilinear")


def _to_batch(image: np.ndarray, batch: int) -> np.ndarray:
    """HWC uint8 → (batch, 3, H, W) float32 in 0..1."""
    chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / 255.0
    return np.repeat(chw[None], batch, axis=0)


def _pair_names(mode: str) -> list[str]:
    if mode == "fixed":
        return [FIXED_PAIR]
    return sorted(p.name for p in BUNDLED_PAIRS_DIR.iterdir() if (p / "src.jpg").is_file())


def _inputs(mode: str, size: tuple[int, int], batch: int) -> list[Any]:

    return [
        Inputs(_to_batch(_load_rgb(BUNDLED_PAIRS_DIR / name / "src.jpg", size), batch), _to_batch(_load_rgb(BUNDLED_PAIRS_DIR / name / "bgr.jpg", size), batch))
        for name in _pair_names(mode)
    ]


# -- end-to-end pipeline ---------------------------------------------------------------------
def _e2e_files(mode: str, size: tuple[int, int], workdir: Path) -> list[tuple[Path, Path]]:
    """The pairs as JPEG files at the benchmark resolution (written untimed, decoded timed)."""
    from PIL import Image

    files = []
    for name in _pair_names(mode):
        paths = []
        for part in ("src", "bgr"):
            path = workdir / f"e2e_{name}_{size[0]}x{size[1]}_{part}.jpg"
            if not path.exists():
                Image.fromarray(_load_rgb(BUNDLED_PAIRS_DIR / name / f"{part}.jpg", size)).save(path, quality=95)
            paths.append(path)
        files.append((paths[0], paths[1]))
    return files


def _e2e_stages(backend: Any, batch: int) -> list[tuple[str, Callable[[Any], Any]]]:
    from PIL import Image

    def decode(paths: tuple[Path, Path]) -> tuple[np.ndarray, np.ndarray]:
        images = []
        for path in paths:
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("RGB")))
        return images[0], images[1]

    def preprocess(images: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
        return {"src": _to_batch(images[0], batch), "bgr": _to_batch(images[1], batch)}

    def postprocess(outputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        # Foreground premultiplied by alpha as RGBA, the usual compositing deliverable.
        pha, fgr = outputs["pha"].astype(np.float32), outputs["fgr"].astype(np.float32)
        rgba = np.concatenate([fgr * pha, pha], axis=1).transpose(0, 2, 3, 1)
        return list(np.clip(rgba * 255.0 + 0.5, 0, 255).astype(np.uint8))

    def encode(frames: list[np.ndarray]) -> list[bytes]:
        encoded = []
        for frame in frames:
            buffer = io.BytesIO()
            Image.fromarray(frame, "RGBA").save(buffer, format="PNG")
            encoded.append(buffer.getvalue())
        return encoded

    return [("decode", decode), ("preprocess", preprocess), ("infer", backend.infer), ("postprocess", postprocess), ("encode", encode)]


# -- the run -----------------------------------------------------------------------------------
@dataclass
class _Job:
    """One model to measure: its config, and the exported file given by the user (if any)."""

    config: ModelConfig
    backends: list[str]
    model_file: Path | None = None
    warnings: list[str] = field(default_factory=list)


def _model_config(config: BenchConfig, backbone: str, size: tuple[int, int]) -> ModelConfig:
    scale, pixels = auto_backbone_scale(*size)
    model = ModelConfig(
        backbone=backbone,
        backbone_scale=config.backbone_scale if config.backbone_scale is not None else scale,
        refine_sample_pixels=config.sample_pixels if config.sample_pixels is not None else pixels,
        seed=config.seed,
    )
    if config.checkpoint is not None:

        model = config_for_checkpoint(model, config.checkpoint)
    return _apply_mode(model, config.mode)


def _apply_mode(model: ModelConfig, mode: str) -> ModelConfig:
    if mode == "fixed" and model.model_type == "refine":
        return model.replace(refine_mode="sampling", refine_prevent_oversampling=False)
    return model


def _file_backends(fmt: str, requested: tuple[str, ...] | None) -> list[str]:
    compatible = compatible_rows(fmt)
    if requested is None:
        return compatible
    chosen = [get_row(b).name for b in requested if get_row(b).name in compatible]
    if not chosen:
        raise UsageError(f"--backend {','.join(requested)} cannot run a {fmt} file; valid for it: {', '.join(compatible)}")
    return chosen


def _jobs(config: BenchConfig, size: tuple[int, int]) -> list[_Job]:

    if not config.models:
        backends = [get_row(b).name for b in config.backends] if config.backends else row_names()
        return [_Job(_model_config(config, backbone, size), backends) for backbone in config.backbones]

    jobs = []
    for path in config.models:
        fmt = detect_format(path)
        meta = read_metadata(path)
        job = _Job(meta.model_config, ["eager", *_file_backends(fmt, config.backends)], Path(path))
        if config.mode == "fixed" and meta.model_config.refine_prevent_oversampling:
            job.warnings.append(
                f"{path}: exported with refine_prevent_oversampling=True, so --mode fixed cannot hold the refined "
                "budget constant for it; timings depend on the image content (re-export with it off)"
            )
        # The eager reference runs the file's refine settings (baked into it), with the
        # eager crop/replace methods (identical results).
        job.config = meta.model_config.replace(refine_patch_crop_method="unfold", refine_patch_replace_method="scatter_nd")
        jobs.append(job)
    return jobs


def bench(config: BenchConfig, progress: Progress | None = None) -> Any:
    """Runs the benchmark described by ``config``.

    Args:
        config: see :class:`BenchConfig`.
        progress: called with one-line status messages (the CLI prints them unless --quiet).

    Returns:
        A :class:`bgm_deploy.bench.report.BenchReport`; report files named in ``config`` are written.

    Raises:
        RuntimeUnavailableError: a backend named explicitly cannot run here.
        UsageError: an option value is not valid.
    """
    import torch



    say = progress or _default_progress
    device = "cuda" if torch.cuda.is_available() else "cpu"
    requested = config.backends
    if requested is not None:
        for backend, precision in itertools.product(requested, config.precisions):
            reason = unavailable_reason(backend, precision)
            if reason is not None:
                raise RuntimeUnavailableError(f"backend {backend!r} ({precision}) cannot run on this machine: {reason}")
    saved_threads = torch.get_num_threads()
    threads = config.threads or saved_threads
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="bgm-bench-") as tmp:
            workdir = Path(config.workdir) if config.workdir is not None else Path(tmp)
            workdir.mkdir(parents=True, exist_ok=True)
            runner = _Run(config, device, threads, workdir, say)
            runner.run()
    finally:
        torch.set_num_threads(saved_threads)

    environment = environment_info()
    environment["threads"] = threads
    # Other processes' load right after the run: numbers taken under load are not comparable.
    environment["load_average_1min"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    settings = {
        "backends": list(requested) if requested else "all usable",
        "backbones": list(config.backbones),
        "resolutions": [f"{w}x{h}" for w, h in config.resolutions],
        "batch": config.batch,
        "precisions": list(config.precisions),
        "mode": config.mode,
        "end_to_end": config.end_to_end,
        "threads": threads,
        "device": device,
        "timing": config.timing.describe(),
        "timing_config": asdict(config.timing),
        "models": [str(m) for m in config.models],
        "checkpoint": str(config.checkpoint) if config.checkpoint else None,
        "seed": config.seed,
        "onnx_exporter": config.onnx_exporter or "default",
    }
    report = BenchReport(runner.results, runner.skipped, environment, settings, runner.peaks, runner.warnings)
    if config.json_path is not None:
        write_json(report, config.json_path)
    if config.markdown_path is not None:
        write_markdown(report, config.markdown_path)
    if config.plot_path is not None and report.results:
        write_plot(report, config.plot_path)
    return report


class _Run:
    """The measuring loop of one :func:`bench` call (state shared by its steps)."""

    def __init__(self, config: BenchConfig, device: str, threads: int, workdir: Path, say: Progress) -> None:
        self.config = config
        self.device = device
        self.threads = threads
        self.workdir = workdir
        self.say = say
        self.artifacts = ArtifactCache(workdir, say, config.checkpoint, config.onnx_exporter)
        self.results: list[Any] = []
        self.warnings: list[str] = []
        self.skipped: list[Any] = []
        self.peaks: dict[str, Any] = {}
        self._flops: dict[tuple[str, int, int], int] = {}

    def run(self) -> None:
        config = self.config
        if config.count_flops:
            self._measure_peaks()
        for size in config.resolutions:
            for job in _jobs(config, size):
                self.warnings.extend(w for w in job.warnings if w not in self.warnings)
                for precision in config.precisions:
                    for backend in job.backends:
                        reason = unavailable_reason(backend, precision)
                        if reason is None and config.backends is None and not get_row(backend).target.bench_by_default:
                            reason = f"opt-in row (building its file takes minutes): pass --backend {backend}"
                        if reason is None:
                            self._measure(job, backend, precision, size)
                        elif (skipped := SkippedBackend(backend, precision, reason)) not in self.skipped:
                            self.skipped.append(skipped)
        self._speedups()

    def _measure_peaks(self) -> None:
        self.say("measuring the fp32 GEMM peak…")
        self.peaks["cpu"] = measure_peak_gemm("cpu").to_dict()
        if self.device == "cuda":
            self.peaks["cuda"] = measure_peak_gemm("cuda", size=8192).to_dict()

    def _measure(self, job: _Job, backend_name: str, precision: str, size: tuple[int, int]) -> None:
        config, model = self.config, job.config
        label = f"{backend_name} {model.backbone} {size[0]}x{size[1]} {precision}"
        self.say(f"preparing {label}…")
        model_file = job.model_file if backend_name != "eager" else None
        try:
            backend = prepare_backend(
                backend_name, model, precision, self.threads, self.artifacts, model_file,
                self.config.checkpoint, (config.batch, size[1], size[0]),
            )
        except BgmDeployError as exc:
            if self.config.backends is not None:
                raise
            # Default run: one backend that cannot be prepared here must not hide the others.
            self.say(f"  skipping {label}: {exc}")
            self.skipped.append(SkippedBackend(backend_name, precision, f"preparation failed: {exc}"))
            return
        try:
            inputs = _inputs(config.mode, size, config.batch)
            # One untimed run per input, through the runner: the refined fraction this
            # backend actually saw (files exported without ref_sm report none).
            first = [backend.infer(i.feeds()) for i in inputs]
            refined = [float(outputs["ref_sm"].mean()) for outputs in first if "ref_sm" in outputs]
            calls = [backend.compute(i) for i in inputs]
            cycle = itertools.cycle(calls)
            self.say(f"timing {label} ({config.timing.describe()})…")
            stats = summarize(measure(lambda: next(cycle)(), config.timing, backend.timer), config.batch)
            quality = _quality(backend, size, config.batch) if config.quality else None
            flops = self._count_flops(model, size) if config.count_flops else None
            peak = self.peaks.get("cuda" if _on_gpu(backend) else "cpu")
            achieved = flops * config.batch / (stats.median_ms / 1e3) / 1e9 if flops else None
            common = dict(
                backend=backend_name,
                provider=backend.provider,
                backbone=model.backbone,
                backbone_scale=model.backbone_scale,
                sample_pixels=model.refine_sample_pixels,
                width=size[0],
                height=size[1],
                batch=config.batch,
                precision=precision,
                mode=config.mode,
                refined_fraction=float(np.mean(refined)) if refined else None,
                model_file=str(job.model_file) if job.model_file and backend_name != "eager" else None,
                alpha_mse=quality[0] if quality else None,
                alpha_sad=quality[1] if quality else None,
            )
            self._add(BenchResult(
                scope="compute",
                stats=stats,
                flops=flops,
                achieved_gflops=achieved,
                peak_fraction=achieved / peak["gflops"] if achieved and peak else None,
                **common,
            ))
            if config.end_to_end:
                self.say(f"timing {label} end to end…")
                files = itertools.cycle(_e2e_files(config.mode, size, self.workdir))
                per_stage = measure_stages(_e2e_stages(backend, config.batch), lambda: next(files), config.timing)
                totals = [sum(t) for t in zip(*per_stage.values())]
                total_mean = float(np.mean(totals))
                stages = tuple(
                    StageResult(name, summarize(times, config.batch), float(np.mean(times)) / total_mean if total_mean else 0.0)
                    for name, times in per_stage.items()
                )
                self._add(BenchResult(scope="end-to-end", stats=summarize(totals, config.batch), stages=stages, **common))
        finally:
            backend.close()

    def _add(self, result: Any) -> None:
        self.results.append(result)
        s = result.stats
        self.say(f"  {result.backend} {result.scope}: median {s.median_ms:.1f} ms, p99 {s.p99_ms:.1f} ms, CV {s.cv:.3f}")
        if s.is_noisy:
            self.warnings.append(
                f"{result.backend} {result.backbone} {result.resolution} {result.precision} {result.scope}: "
                f"CV {s.cv:.2f} > {NOISY_CV} — the machine was busy or throttling; rerun on a quiet machine"
            )

    def _count_flops(self, model: ModelConfig, size: tuple[int, int]) -> int | None:
        if model.model_type != "refine" or (model.checkpoint_sha256 is not None and self.config.checkpoint is None):
            return None
        key = (model.to_json(), *size)
        if key not in self._flops:
            import torch



            fixed = _apply_mode(model, "fixed")
            self.say(f"counting FLOPs of {model.backbone} at {size[0]}x{size[1]}…")
            reference = build_model(fixed, self.config.checkpoint)
            generator = torch.Generator().manual_seed(0)
            src, bgr = (torch.rand(1, 3, size[1], size[0], generator=generator) for _ in range(2))
            self._flops[key] = count_flops(reference, src, bgr)
        return self._flops[key]

    def _speedups(self) -> None:
        import dataclasses

        def key(r: Any, precision: str) -> tuple[Any, ...]:
            return (r.backbone, r.backbone_scale, r.sample_pixels, r.width, r.height, r.batch, precision, r.scope)

        eager = {key(r, r.precision): r for r in self.results if r.backend == "eager"}
        original = {key(r, r.precision): r for r in self.results if r.backend == ORIGINAL_BACKEND}
        updated = []
        for r in self.results:
            reference = eager.get(key(r, r.precision)) or eager.get(key(r, "fp32"))
            baseline = original.get(key(r, r.precision)) or original.get(key(r, "fp32"))
            updated.append(dataclasses.replace(
                r,
                speedup_vs_eager=speedup(reference.stats, r.stats) if reference else None,
                speedup_vs_original=speedup(baseline.stats, r.stats) if baseline else None,
            ))
        self.results = updated


def _quality(backend: Any, size: tuple[int, int], batch: int) -> tuple[float, float] | None:
    """Mean alpha MSE and SAD/1000 of ``backend`` on the bundled pairs (with ground truth),
    resized to ``size``, through the runner: what this row's runtime and precision cost in
    matte quality. Each pair is fed ``batch`` times (a fixed-size file takes that batch only)
    and the first item scored. None when the file has no ``pha`` output."""
    mses, sads = [], []
    for folder in sorted(p for p in BUNDLED_PAIRS_DIR.iterdir() if p.is_dir()):
        src, bgr = (resize_rgb(load_image(folder / f"{kind}.jpg"), size) for kind in ("src", "bgr"))
        truth = Image.open(folder / "alpha.png").convert("L").resize(size, Image.Resampling.BILINEAR)
        outputs = backend.infer({"src": _to_batch(src, batch), "bgr": _to_batch(bgr, batch)})
        if "pha" not in outputs:
            return None
        pha = np.clip(np.asarray(outputs["pha"], dtype=np.float32)[0, 0], 0, 1)
        scores = matting_scores(pha, np.asarray(truth, dtype=np.float32) / np.float32(255))
        mses.append(scores.mse)
        sads.append(scores.sad)
    return float(np.mean(mses)), float(np.mean(sads))


def _on_gpu(backend: Any) -> bool:
    return getattr(backend, "device", "cpu") == "cuda"
