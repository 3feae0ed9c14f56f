"""Bench rows: a registered target plus the export recipe it runs, timed through the runner.

Every target that declares a ``bench`` row name (:mod:`runtimes.targets`) is a row, with the
file its ``recipe`` makes (``onnx``, ``onnx-tensorrt`` for the TensorRT-safe graph,
``torchscript``, ``tensorrt`` for an engine, a registered recipe such as ``executorch``; none
for the eager reference). One more row, ``onnx-original``, runs the same model exported the
way the original project's script does (:mod:`exporters.original`) on ``onnxruntime-cpu``:
the comparison users ask for.

A prepared row gives two things, both through the runner contract:

* ``compute(inputs)`` → :meth:`runtimes.base.BaseRunner.prepare`: the inputs placed where the
  runtime computes (tensors on the device, buffers bound once) and a zero-argument call on
  them: what compute-only timings measure, as published figures are;
* ``infer(feeds)`` → the runner's ``infer`` (numpy in and out), used by the end-to-end
  pipeline, where the host↔device copies belong to the measured work.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from exporters.config import DEFAULT_EXPORTER, OnnxConfig
from exporters.original import export_original_recipe, original_recipe_config
from exporters.registered import RecipeConfig, get_recipe
from exporters.tensorrt import EngineConfig, engine_from_onnx
from model.checkpoint import build_model
from model.config import ModelConfig
from model.errors import UsageError
from runtimes.targets import Target, get_target, targets

from ..export import export
from ..model_spec import ModelSpec, spec_for_config
from .harness import CudaEventTimer, SyncTimer, Timer, cpu_timer
from .report import ORIGINAL_BACKEND

PRECISIONS = ("fp32", "fp16")


@dataclass(frozen=True)
class BenchRow:
    """One row: ``name`` (what ``--backend`` takes), the target, and the recipe of its file."""

    name: str
    target: Target
    recipe: str | None


def bench_rows() -> list[BenchRow]:
    """Every row, from the target registry (plus the original project's recipe)."""
    rows = [BenchRow(t.bench, t, t.recipe) for t in targets() if t.bench is not None]
    rows.insert(next((i for i, r in enumerate(rows) if r.name == "onnx-cpu"), 0) + 1,
                BenchRow(ORIGINAL_BACKEND, get_target("onnxruntime-cpu"), ORIGINAL_BACKEND))
    return rows


def row_names() -> list[str]:
    return [row.name for row in bench_rows()]


def get_row(name: str) -> BenchRow:
    """The row called ``name`` (a row name, or a target name for its default recipe)."""
    for row in bench_rows():
        if name in (row.name, row.target.name) and (row.recipe != ORIGINAL_BACKEND or name == row.name):
            return row
    raise UsageError(f"--backend {name!r} is not valid; valid: {', '.join(row_names())}")


def unavailable_reason(name: str, precision: str) -> str | None:
    """Why row ``name`` cannot run here at ``precision`` (None when it can)."""
    row = get_row(name)
    if precision not in PRECISIONS:
        raise UsageError(f"precision={precision!r} is not valid; valid: {', '.join(PRECISIONS)}")
    reason = row.target.why_unusable()
    if reason is not None:
        return reason
    recipe = get_recipe(row.recipe) if row.recipe else None
    if recipe is not None and recipe.unavailable() is not None:
        return recipe.unavailable()
    if precision == "fp16":
        if row.recipe == ORIGINAL_BACKEND:
            return "the original ONNX recipe is benchmarked at fp32 on the CPU (as onnx-cpu)"
        if row.target.device != "cuda":
            return "fp16 is benchmarked on GPU targets only (CPU kernels for fp16 are not what a deployment runs)"
        if row.target.runner == "onnxruntime" and row.recipe == "onnx":
            return "fp16 is benchmarked on TensorRT (onnx-tensorrt, tensorrt) and CUDA PyTorch only"
    return None


class ArtifactCache:
    """Exported files in ``workdir``, one per (model config, recipe, size), made on first use."""

    def __init__(
        self,
        workdir: Path,
        progress: Callable[[str], None] | None = None,
        checkpoint: Path | None = None,
        onnx_exporter: str | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.checkpoint = checkpoint
        # None: the exporter's default (what `bgm-deploy export` produces).
        self.onnx_exporter = onnx_exporter
        self.progress = progress or (lambda message: None)
        self._paths: dict[tuple[str, ...], Path] = {}
        self.export_seconds: dict[str, float] = {}

    def path(self, config: ModelConfig, recipe: str, resolution: tuple[int, int], precision: str = "fp32",
             batch: int = 1) -> Path:
        """The file ``recipe`` makes of ``config`` for ``resolution`` (width, height).

        ONNX files are traced at the benchmark resolution (they stay dynamic): in fixed mode
        at the exporter's small default size, 80,000 sample pixels select nearly every cell,
        many of them tied at zero error, and which tied cells top-k keeps is
        implementation-defined, so the export's parity re-check would compare different
        (equally valid) selections. Fixed-size formats are made for that size and batch.
        """
        key = (config.to_json(), recipe, f"{resolution}", precision, str(batch))
        if key in self._paths:
            return self._paths[key]
        trace = (max(64, resolution[0]), max(64, resolution[1]))
        start = time.perf_counter()
        index = len(self._paths)
        if recipe == ORIGINAL_BACKEND:
            path = self.workdir / f"original{index}.onnx"
            self.progress(f"exporting {config.backbone} the way the original project's script does (legacy exporter, "
                          "opset 12, its refiner)…")
            model = build_model(original_recipe_config(config), self.checkpoint).eval()
            export_original_recipe(model, path, trace)
        elif recipe == "tensorrt":
            onnx_path = self.path(config, "onnx-tensorrt", resolution)
            path = onnx_path.with_name(f"{onnx_path.stem}_{precision}_{batch}x{resolution[1]}x{resolution[0]}.engine")
            self.progress(f"building a TensorRT {precision} engine for {batch}x{resolution[1]}x{resolution[0]}…")
            shape = (batch, resolution[1], resolution[0])
            engine_from_onnx(onnx_path, EngineConfig(precision=precision, min_shape=shape, opt_shape=shape,
                                                     max_shape=shape), path)
        else:
            fmt = "onnx" if recipe.startswith("onnx") else recipe
            suffix = {"onnx": ".onnx", "torchscript": ".pt"}.get(fmt) or (get_recipe(fmt).suffix if get_recipe(fmt) else "")
            path = self.workdir / f"model{index}{suffix}"
            self.progress(f"exporting {config.backbone} ({config.backbone_scale:g}, {config.refine_sample_pixels} px) "
                          f"to {recipe}…")
            onnx_config = None
            if fmt == "onnx":
                onnx_config = OnnxConfig(target="tensorrt" if recipe == "onnx-tensorrt" else "generic",
                                         exporter=self.onnx_exporter or DEFAULT_EXPORTER, trace_resolution=trace)
            # A registered recipe's file is made for this size and batch (fixed-size formats take no other).
            recipe_config = RecipeConfig(resolution=resolution, batch=batch, precision=precision) \
                if get_recipe(fmt) is not None else None
            export(config, path, fmt, onnx=onnx_config, checkpoint=self.checkpoint, overwrite=True,
                   resolution=resolution if fmt not in ("onnx", "torchscript") else None, recipe_config=recipe_config)
        self.export_seconds[path.name] = time.perf_counter() - start
        self._paths[key] = path
        return path


@dataclass
class Inputs:
    """One batch of inputs, float32 NCHW numpy."""

    src: np.ndarray
    bgr: np.ndarray

    def feeds(self) -> dict[str, np.ndarray]:
        return {"src": self.src, "bgr": self.bgr}


class PreparedBackend:
    """A row ready to run (see the module docstring). Close it when done."""

    def __init__(self, row: BenchRow, runner: Any) -> None:
        self.name = row.name
        self.target = row.target
        self.device = row.target.device
        self.runner = runner
        self.runner.activate()
        self.provider = self.runner.provider
        self.input_dtype = np.dtype(self.runner.input_metadata()["src"].dtype)
        self.timer: Timer = cpu_timer
        if self.device == "cuda" and row.target.runner in ("pytorch", "torchscript"):
            # Work on torch's current stream: CUDA events around the call measure it.
            self.timer = CudaEventTimer()
        elif self.device == "cuda":
            # onnxruntime / TensorRT use their own streams: synchronise the device around the call.
            self.timer = SyncTimer(self.runner.synchronize)

    def compute(self, inputs: Inputs) -> Callable[[], Any]:
        return self.runner.prepare({k: v.astype(self.input_dtype, copy=False) for k, v in inputs.feeds().items()})

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.runner.infer({k: v.astype(self.input_dtype, copy=False) for k, v in feeds.items()})

    def close(self) -> None:
        if self.runner.is_active:
            self.runner.deactivate()


def prepare_backend(
    name: str,
    config: ModelConfig,
    precision: str,
    threads: int,
    artifacts: ArtifactCache,
    model_file: Path | None = None,
    checkpoint: Path | None = None,
    batch_shape: tuple[int, int, int] = (1, 1080, 1920),
) -> PreparedBackend:
    """Exports (once) and loads row ``name`` for ``config``.

    Args:
        name: a row of :func:`bench_rows` (availability checked by the caller).
        config: the model configuration (already in the benchmark's refine settings).
        precision: ``"fp32"`` or ``"fp16"``.
        threads: intra-op threads for CPU runtimes.
        artifacts: where exports are made and cached.
        model_file: an exported file to load instead of exporting ``config``.
        checkpoint: the weights of ``config`` when it is not synthetic.
        batch_shape: ``(batch, height, width)`` fixed-size files are made for.
    """
    row = get_row(name)
    batch, height, width = batch_shape
    if row.recipe is None:
        spec = spec_for_config(config, checkpoint, target=row.target.name, threads=threads)
    else:
        path = model_file or artifacts.path(config, row.recipe, (width, height), precision, batch)
        spec = ModelSpec(model=str(path), target=row.target.name, threads=threads)
    # The config is known unless a user's file is benchmarked (the original recipe's file carries none).
    runner, _, _ = spec.create_runner(None if model_file is not None and row.recipe is not None else config,
                                      precision=precision, cache_dir=artifacts.workdir / "trt_cache")
    return PreparedBackend(row, runner)


def compatible_rows(fmt: str) -> list[str]:
    """Rows that run files of format ``fmt`` (for benchmarking a given file)."""
    return [row.name for row in bench_rows() if fmt in row.target.formats and row.recipe != ORIGINAL_BACKEND
            and row.target.runner != "pytorch"]

