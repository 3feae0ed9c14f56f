"""How each benchmark backend is prepared and invoked.

Every backend gives two things once prepared:

* ``compute(src, bgr)`` → a zero-argument callable running the model on inputs that are
  already in the backend's own form and place (torch tensors on the device, numpy arrays
  for onnxruntime CPU, device buffers bound once for GPU runtimes): what compute-only
  timings measure, as published figures are;
* ``infer(feeds)`` → the runner contract (dict of numpy arrays in and out), used by the
  end-to-end pipeline, where the host↔device copies belong to the measured work.

Exports come from :func:`bgm_deploy.export.export` (ONNX: roi_align crop +
scatter_element replace, its defaults) into a work directory, once per model config.
``onnx-original`` runs the same model exported the way the original project's script does
(:mod:`exporters.original`) on the same onnxruntime CPU session options as ``onnx-cpu``:
the comparison users ask for.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

import runtimes
from exporters.config import DEFAULT_EXPORTER, DEFAULT_TRACE_RESOLUTION, OnnxConfig
from exporters.original import export_original_recipe, original_recipe_config
from exporters.tensorrt import EngineConfig, engine_from_onnx
from model.checkpoint import build_model
from model.config import ModelConfig
from model.errors import UsageError

from ..export import export
from .harness import CudaEventTimer, SyncTimer, Timer, cpu_timer
from .report import ORIGINAL_BACKEND

BACKENDS = ("eager", "torchscript", "onnx-cpu", ORIGINAL_BACKEND, "openvino-cpu", "onnx-cuda", "onnx-tensorrt", "tensorrt")
PRECISIONS = ("fp32", "fp16")
# The backends whose work runs on a CUDA device.
GPU_BACKENDS = ("onnx-cuda", "onnx-tensorrt", "tensorrt")


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def unavailable_reason(backend: str, precision: str, device: str) -> str | None:
    """Why ``backend`` cannot run here at ``precision`` (None when it can).

    ``device`` is where eager PyTorch and TorchScript run (``"cpu"`` or ``"cuda"``).
    """
    if backend not in BACKENDS:
        raise UsageError(f"backend={backend!r} is not valid; valid: {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise UsageError(f"precision={precision!r} is not valid; valid: {', '.join(PRECISIONS)}")
    cuda = _cuda_available()
    if backend in GPU_BACKENDS and not cuda:
        return "no CUDA device (torch.cuda.is_available() is False)"
    if backend in ("onnx-cuda", "onnx-tensorrt"):
        import onnxruntime

        provider = "CUDAExecutionProvider" if backend == "onnx-cuda" else "TensorrtExecutionProvider"
        if provider not in onnxruntime.get_available_providers():
            return f"onnxruntime {onnxruntime.__version__} has no {provider}"
    if backend == "openvino-cpu" and importlib.util.find_spec("openvino") is None:
        return 'OpenVINO is not installed (pip install "bgm-deploy[openvino]")'
    if backend in ("onnx-tensorrt", "tensorrt") and importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (pip install tensorrt)"
    if precision == "fp16":
        if backend == ORIGINAL_BACKEND:
            return "the original ONNX recipe is benchmarked at fp32 on the CPU (as onnx-cpu)"
        if backend in ("onnx-cpu", "openvino-cpu", "onnx-cuda"):
            return "fp16 is benchmarked on TensorRT (onnx-tensorrt, tensorrt) and CUDA PyTorch only"
        if backend in ("eager", "torchscript") and device != "cuda":
            return "fp16 PyTorch is benchmarked on a CUDA device only"
    return None


class ArtifactCache:
    """Exported files in ``workdir``, one per (model config, format), made on first use."""

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
        self._paths: dict[tuple[str, str], Path] = {}
        self.export_seconds: dict[str, float] = {}

    def path(
        self, config: ModelConfig, fmt: str, target: str = "generic", trace_resolution: tuple[int, int] | None = None
    ) -> Path:
        """The exported file of ``config`` in ``fmt`` (``"onnx"``/``"torchscript"``, or
        ``"onnx-original"``: the original project's recipe, traced at ``trace_resolution``).

        ``target="tensorrt"`` asks the ONNX exporter for its TensorRT-safe graph (no TopK
        with K > 3840), which onnx-tensorrt and the engine builder need.
        ``trace_resolution`` (width, height) is where the exporter traces and re-checks the
        graph (it stays dynamic). Fixed mode needs it near the benchmark resolution: at the
        exporter's small default, 80,000 sample pixels select nearly every cell, many of
        them tied at zero error, and which tied cells top-k keeps is implementation-defined,
        so the parity re-check would compare different (equally valid) selections.
        """
        key = (config.to_json(), fmt, target)
        if key not in self._paths and fmt == ORIGINAL_BACKEND:
            path = self.workdir / f"original{len(self._paths)}.onnx"
            self.progress(f"exporting {config.backbone} the way the original project's script does (legacy exporter, "
                          "opset 12, its refiner)…")
            start = time.perf_counter()
            model = build_model(original_recipe_config(config), self.checkpoint).eval()
            size = trace_resolution or DEFAULT_TRACE_RESOLUTION
            export_original_recipe(model, path, (max(64, size[0]), max(64, size[1])))
            self.export_seconds[path.name] = time.perf_counter() - start
            self._paths[key] = path
        if key not in self._paths:
            suffix = {"onnx": ".onnx", "torchscript": ".pt"}[fmt]
            path = self.workdir / f"model{len(self._paths)}{suffix}"
            what = fmt if target == "generic" else f"{fmt} ({target} target)"
            self.progress(f"exporting {config.backbone} ({config.backbone_scale:g}, {config.refine_sample_pixels} px) to {what}…")
            onnx_config = None
            if fmt == "onnx":
                # The exporter's defaults (what `bgm-deploy export` writes) unless one is named.
                onnx_config = OnnxConfig(
                    target=target,
                    exporter=self.onnx_exporter or DEFAULT_EXPORTER,
                    trace_resolution=None if trace_resolution is None else (max(64, trace_resolution[0]), max(64, trace_resolution[1])),
                )
            start = time.perf_counter()
            export(config, path, fmt, onnx=onnx_config, checkpoint=self.checkpoint, overwrite=True)  # bench's own scratch files
            self.export_seconds[path.name] = time.perf_counter() - start
            self._paths[key] = path
        return self._paths[key]


@dataclass
class Inputs:
    """One batch of inputs in the forms backends need: numpy float32 and torch tensors."""

    src: np.ndarray
    bgr: np.ndarray

    def feeds(self) -> dict[str, np.ndarray]:
        return {"src": self.src, "bgr": self.bgr}

    def torch(self, device: str, dtype: str) -> tuple[Any, Any]:
        import torch

        torch_dtype = torch.float16 if dtype == "fp16" else torch.float32
        return tuple(torch.from_numpy(a).to(device=device, dtype=torch_dtype).contiguous() for a in (self.src, self.bgr))


class PreparedBackend:
    """A backend ready to run; see the module docstring. Close it when done."""

    name: str = ""
    provider: str = ""
    timer: Timer = staticmethod(cpu_timer)  # type: ignore[assignment]

    def compute(self, inputs: Inputs) -> Callable[[], Any]:
        raise NotImplementedError

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        """Releases sessions and device memory."""


class RunnerBackend(PreparedBackend):
    """A registered runner (``runtimes``) around an exported file."""

    def __init__(self, name: str, runner_name: str, options: dict[str, Any], device: str, precision: str) -> None:
        self.name = name
        self.device = device
        self.precision = precision
        self.runner = runtimes.create_runner(runner_name, **options)
        self.runner.activate()
        self.provider = self.runner.provider
        self.input_dtype = np.dtype(self.runner.input_metadata()["src"].dtype)
        if device == "cuda" and runner_name in ("pytorch", "torchscript"):
            # Work on torch's current stream: CUDA events around the call measure it.

            self.timer = CudaEventTimer()
        elif device == "cuda":
            # onnxruntime / TensorRT use their own streams: synchronise the whole device.
            import torch

            self.timer = SyncTimer(torch.cuda.synchronize)
        else:
            self.timer = cpu_timer

    def compute(self, inputs: Inputs) -> Callable[[], Any]:
        module = getattr(self.runner, "module", None)
        if module is not None:
            # PyTorch / TorchScript: call the module on ready tensors; the runner's infer()
        # would add numpy↔tensor conversions that compute-only timings exclude.
            import torch

            src, bgr = inputs.torch(self.device, self.precision)

            def run_module() -> Any:
                with torch.inference_mode():
                    return module(src, bgr)

            return run_module
        session = getattr(self.runner, "session", None)
        if self.device == "cuda" and session is not None:
            return self._bound_onnxruntime(inputs)
        if self.device == "cuda":
            # TensorRT runner: inputs given as CUDA tensors (no host→device copy); its infer()
            # still copies the outputs to the host, so these timings include that copy.
            src, bgr = inputs.torch("cuda", "fp16" if self.input_dtype == np.float16 else "fp32")
            cuda_feeds = {"src": src, "bgr": bgr}
            return lambda: self.runner.infer(cuda_feeds)
        feeds = inputs.feeds()
        return lambda: self.runner.infer(feeds)

    def _bound_onnxruntime(self, inputs: Inputs) -> Callable[[], Any]:
        """onnxruntime on CUDA with the runner's IO binding: inputs bound once on the device,
        outputs left there (unverified: no GPU here)."""
        src, bgr = inputs.torch("cuda", "fp32")
        binding = self.runner.bind_device_io({"src": src, "bgr": bgr})
        return lambda: self.runner.run_bound(binding)

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.runner.infer({k: v.astype(self.input_dtype, copy=False) for k, v in feeds.items()})

    def close(self) -> None:
        if self.runner.is_active:
            self.runner.deactivate()


def prepare_backend(
    backend: str,
    config: ModelConfig,
    precision: str,
    device: str,
    threads: int,
    artifacts: ArtifactCache,
    model_file: Path | None = None,
    checkpoint: Path | None = None,
    batch_shape: tuple[int, int, int] = (1, 1080, 1920),
) -> PreparedBackend:
    """Builds/exports and loads ``backend`` for ``config``.

    Args:
        backend: one of :data:`BACKENDS` (availability checked by the caller).
        config: the model configuration (already in the benchmark's refine settings).
        precision: ``"fp32"`` or ``"fp16"``.
        device: where eager PyTorch and TorchScript run.
        threads: intra-op threads for CPU runtimes.
        artifacts: where exports are made and cached.
        model_file: an exported file to load instead of exporting ``config``.
        checkpoint: the weights of ``config`` when it is not synthetic.
        batch_shape: ``(batch, height, width)`` the TensorRT engine is optimised for.
    """
    dtype = "float16" if precision == "fp16" else "float32"
    if backend == "eager":
        options = {"model_config": config, "checkpoint": checkpoint, "device": device, "dtype": dtype}
        return RunnerBackend(backend, "pytorch", options, device, precision)
    if backend == "torchscript":
        path = model_file or artifacts.path(config, "torchscript")
        return RunnerBackend(backend, "torchscript", {"path": path, "device": device}, device, precision)
    if backend == ORIGINAL_BACKEND:
        path = artifacts.path(config, ORIGINAL_BACKEND, trace_resolution=(batch_shape[2], batch_shape[1]))
        return RunnerBackend(backend, "onnxruntime", {"path": path, "provider": "cpu", "threads": threads}, "cpu", precision)
    if backend.startswith("onnx-"):
        provider = backend.split("-", 1)[1]
        target = "tensorrt" if provider == "tensorrt" else "generic"
        path = model_file or artifacts.path(config, "onnx", target, (batch_shape[2], batch_shape[1]))
        options: dict[str, Any] = {"path": path, "provider": provider}
        if provider == "cpu":
            options["threads"] = threads
        else:
            options["trt_fp16"] = precision == "fp16"
            options["cache_dir"] = artifacts.workdir / "trt_cache"
        return RunnerBackend(backend, "onnxruntime", options, "cpu" if provider == "cpu" else "cuda", precision)
    if backend == "openvino-cpu":
        # The same ONNX file as onnx-cpu, compiled by OpenVINO at f32 (its bf16 default
        # ruins the refined patches; see runtimes/openvino.py).
        path = model_file or artifacts.path(config, "onnx", "generic", (batch_shape[2], batch_shape[1]))
        return RunnerBackend(backend, "openvino", {"path": path, "threads": threads}, "cpu", precision)
    if backend == "tensorrt":
        # Unverified: needs the engine builder and TensorRT runner, and a GPU.
        engine = model_file or _build_engine(config, precision, artifacts, batch_shape)
        return RunnerBackend(backend, "tensorrt", {"path": engine}, "cuda", precision)
    raise UsageError(f"backend={backend!r} is not valid; valid: {', '.join(BACKENDS)}")


def _build_engine(config: ModelConfig, precision: str, artifacts: ArtifactCache, shape: tuple[int, int, int]) -> Path:
    """A TensorRT engine optimised for ``shape`` (unverified: no GPU/TensorRT here)."""
    onnx_path = artifacts.path(config, "onnx", "tensorrt", (shape[2], shape[1]))

    engine = onnx_path.with_name(f"{onnx_path.stem}_{precision}_{shape[0]}x{shape[1]}x{shape[2]}.engine")
    if not engine.exists():
        artifacts.progress(f"building a TensorRT {precision} engine for {shape}…")
        engine_from_onnx(onnx_path, EngineConfig(precision=precision, min_shape=shape, opt_shape=shape, max_shape=shape), engine)
    return engine
