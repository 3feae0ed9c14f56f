"""ONNX Runtime runner: CPU, CUDA and TensorRT execution providers.

onnxruntime-gpu lists the CUDA and TensorRT providers as *available* even on a machine
without a GPU or without the CUDA/TensorRT libraries, and then silently builds a CPU
session. This runner compares what was requested with ``session.get_providers()`` after
the session is created and raises (or, with ``allow_fallback``, warns loudly) instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from model.errors import ModelFileError, RunnerError, RuntimeUnavailableError, UsageError

from .base import BaseRunner, Dim, TensorMeta, check_threads, to_numpy
from .registry import register_runner
from .targets import LoadRequest, Target, all_of, cuda_missing, module_missing, register_target

log = logging.getLogger(__name__)

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}

INSTALL_HINTS = {
    "cuda": (
        "install onnxruntime-gpu with a matching CUDA and cuDNN (see "
        "https://onnxruntime.ai/docs/execution-providers/CUDA-ExecutionProvider.html#requirements) "
        "and make sure an NVIDIA GPU and its driver are present"
    ),
    "tensorrt": (
        "install onnxruntime-gpu plus TensorRT (pip install tensorrt, or the TensorRT libraries on "
        "LD_LIBRARY_PATH; see https://onnxruntime.ai/docs/execution-providers/TensorRT-ExecutionProvider.html) "
        "and make sure an NVIDIA GPU and its driver are present"
    ),
}

# ONNX tensor element types as reported by NodeArg.type.
_ONNX_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise RuntimeUnavailableError(
            "the onnxruntime runner needs onnxruntime, which is not installed: "
            "pip install onnxruntime (CPU) or onnxruntime-gpu (CUDA/TensorRT)"
        ) from None
    return onnxruntime


@register_runner("onnxruntime")
class OnnxRuntimeRunner(BaseRunner):
    """Runs an ONNX file with ONNX Runtime.

    Args:
        path: the ``.onnx`` file.
        provider: ``"cpu"``, ``"cuda"`` or ``"tensorrt"`` (TensorRT falls back to CUDA, then
            CPU, per node, as ONNX Runtime does; the session must still contain the
            requested provider).
        device_id: GPU index for CUDA/TensorRT.
        allow_fallback: when the requested provider did not load, warn and run on what did
            instead of raising :class:`RuntimeUnavailableError`.
        trt_fp16: let TensorRT build fp16 kernels.
        cache_dir: TensorRT engine and timing cache directory (builds are minutes long;
            with a cache the second start is seconds).
        io_binding: on CUDA/TensorRT, bind inputs and outputs to device buffers that are
            reused between calls (torch CUDA tensors given as feeds are bound in place).
        threads: intra-op threads for the CPU provider (None: onnxruntime's default).
        session_options: extra ``onnxruntime.SessionOptions`` attributes, e.g.
            ``{"graph_optimization_level": ...}``.
        allow_spinning: let idle intra-op threads spin-wait for the next parallel region
            (onnxruntime's default). Off when other threads of the process need the same cores
            (the video pipeline's decoder and encoders): spinning workers would take their CPU.
    """

    def __init__(
        self,
        path: str | Path,
        provider: str = "cpu",
        device_id: int = 0,
        allow_fallback: bool = False,
        trt_fp16: bool = False,
        cache_dir: str | Path | None = None,
        io_binding: bool = True,
        threads: int | None = None,
        session_options: dict[str, Any] | None = None,
        allow_spinning: bool = True,
    ) -> None:
        super().__init__()
        if provider not in PROVIDERS:
            raise UsageError(f"provider={provider!r} is not valid for the onnxruntime runner; valid: {', '.join(PROVIDERS)}")
        if device_id < 0:
            raise UsageError(f"device_id={device_id!r} is not valid; it must be >= 0")
        check_threads(threads)
        self.path = Path(path)
        self.requested_provider = provider
        self.device_id = device_id
        self.allow_fallback = allow_fallback
        self.trt_fp16 = trt_fp16
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.io_binding = io_binding
        self.threads = threads
        self.session_options = dict(session_options or {})
        self.allow_spinning = allow_spinning
        self.session: Any = None
        self._binding: Any = None
        self._device_inputs: dict[str, Any] = {}

    # -- lifecycle -------------------------------------------------------------------------
    def _provider_list(self) -> list[Any]:
        """Providers in priority order with their options (CPU always last, as a node fallback)."""
        gpu = {"device_id": self.device_id}
        providers: list[Any] = []
        if self.requested_provider == "tensorrt":
            trt: dict[str, Any] = {**gpu, "trt_fp16_enable": self.trt_fp16}
            if self.cache_dir is not None:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                trt.update(
                    trt_engine_cache_enable=True,
                    trt_engine_cache_path=str(self.cache_dir),
                    trt_timing_cache_enable=True,
                    trt_timing_cache_path=str(self.cache_dir),
                )
            providers.append(("TensorrtExecutionProvider", trt))
        if self.requested_provider in ("tensorrt", "cuda"):
            providers.append(("CUDAExecutionProvider", gpu))
        providers.append("CPUExecutionProvider")
        return providers

    def _activate(self) -> None:
        ort = _import_onnxruntime()
        if not self.path.is_file():
            raise ModelFileError(f"ONNX model {self.path} does not exist")
        wanted = PROVIDERS[self.requested_provider]
        if wanted not in ort.get_available_providers():
            self._missing_provider(wanted, f"this onnxruntime build ({ort.__version__}) does not include it")
        options = ort.SessionOptions()
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
        if not self.allow_spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        for key, value in self.session_options.items():
            if not hasattr(options, key):
                raise UsageError(f"session option {key!r} is not an onnxruntime.SessionOptions attribute")
            setattr(options, key, value)
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=self._provider_list())
        except Exception as exc:  # onnxruntime raises its own pybind exception types without a common base
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelFileError(f"{self.path}: onnxruntime cannot load it ({first})") from None
        actual = self.session.get_providers()
        if wanted not in actual:
            self._missing_provider(wanted, f"the session was created with {actual} only (no usable GPU or libraries)")
        self.provider = actual[0]
        if self.provider != "CPUExecutionProvider" and self.io_binding:
            self._binding = self.session.io_binding()

    def _missing_provider(self, wanted: str, why: str) -> None:
        message = f"onnxruntime provider {wanted} requested (provider={self.requested_provider!r}) but not usable: {why}"
        hint = INSTALL_HINTS.get(self.requested_provider, "")
        if not self.allow_fallback:
            raise RuntimeUnavailableError(f"{message}; {hint}; or pass allow_fallback=True / --allow-fallback to run on CPU")
        # Loud on purpose: a silent CPU fallback makes GPU numbers meaningless.
        log.warning("!!! %s; FALLING BACK to what loaded (allow_fallback=True). %s", message, hint)

    def _deactivate(self) -> None:
        self._binding = None
        self._device_inputs = {}
        self.session = None

    def _io_metadata(self) -> tuple[dict[str, TensorMeta], dict[str, TensorMeta]]:
        def meta(arg: Any) -> TensorMeta:
            dtype = _ONNX_TYPES.get(arg.type)
            if dtype is None:
                raise ModelFileError(f"{self.path}: tensor {arg.name!r} has unsupported type {arg.type}")
            shape: tuple[Dim, ...] = tuple(d if isinstance(d, (int, str)) else None for d in arg.shape)
            return TensorMeta(arg.name, np.dtype(dtype), shape)

        inputs = {arg.name: meta(arg) for arg in self.session.get_inputs()}
        outputs = {arg.name: meta(arg) for arg in self.session.get_outputs()}
        return inputs, outputs

    # -- inference -------------------------------------------------------------------------
    def _infer(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        names = list(self._outputs)
        try:
            if self._binding is not None:
                return self._infer_bound(feeds, names)
            arrays = {key: to_numpy(value) for key, value in feeds.items()}
            results = self.session.run(names, arrays)
        except RunnerError:
            raise
        except Exception as exc:  # onnxruntime's pybind exceptions (Fail, InvalidArgument, ...)
            shapes = {key: tuple(value.shape) for key, value in feeds.items()}
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RunnerError(f"runner 'onnxruntime' ({self.provider}) failed on inputs {shapes}: {first}") from None
        return dict(zip(names, results))

    def _infer_bound(self, feeds: dict[str, Any], names: list[str]) -> dict[str, np.ndarray]:
        binding = self._bind_device_io(feeds, names)
        self.session.run_with_iobinding(binding)
        return dict(zip(names, binding.copy_outputs_to_cpu()))

    def _bind_device_io(self, feeds: dict[str, Any], names: list[str] | None = None) -> Any:
        """IO binding on CUDA/TensorRT: inputs copied once into reused device buffers (or bound
        in place when they are CUDA tensors), outputs left on the device. Returns the
        ``IOBinding`` (:meth:`_prepare` runs it: what the benchmark times).
        Unverified on hardware: written against onnxruntime's IOBinding API, no GPU here."""
        if self._binding is None:
            raise RunnerError(f"runner 'onnxruntime' ({self.provider}): IO binding needs a CUDA/TensorRT session")
        ort = _import_onnxruntime()
        names = list(self._outputs) if names is None else names
        binding = self._binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for key, value in feeds.items():
            if _is_torch_cuda(value):
                # Zero copy: the tensor already lives on the GPU.
                tensor = value.contiguous()
                binding.bind_input(
                    key, "cuda", tensor.device.index or 0, self._inputs[key].dtype, list(tensor.shape), tensor.data_ptr()
                )
                continue
            array = np.ascontiguousarray(to_numpy(value))
            buffer = self._device_inputs.get(key)
            if buffer is not None and tuple(buffer.shape()) == array.shape:
                buffer.update_inplace(array)
            else:
                buffer = ort.OrtValue.ortvalue_from_numpy(array, "cuda", self.device_id)
                self._device_inputs[key] = buffer
            binding.bind_ortvalue_input(key, buffer)
        for name in names:
            binding.bind_output(name, "cuda", self.device_id)
        return binding

    def _prepare(self, feeds: dict[str, Any]) -> Any:
        """CPU: the session on the numpy feeds. CUDA/TensorRT: inputs bound once to device
        buffers, outputs left on the device (unverified: no GPU here)."""
        if self._binding is None:
            arrays = {key: to_numpy(value) for key, value in feeds.items()}
            names = list(self._outputs)
            return lambda: self.session.run(names, arrays)
        binding = self._bind_device_io(feeds)
        return lambda: self.session.run_with_iobinding(binding)

    def synchronize(self) -> None:
        if self._binding is not None:
            import torch  # onnxruntime's CUDA streams: the whole device (GPU runs only)

            torch.cuda.synchronize(self.device_id)


def _is_torch_cuda(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and getattr(getattr(value, "device", None), "type", "") == "cuda"



# -- targets ----------------------------------------------------------------------------------
def _provider_missing(provider: str) -> Callable[[], str | None]:
    """onnxruntime-gpu lists its CUDA/TensorRT providers even without a GPU: compiled in is
    not usable, so the GPU is checked too."""

    def check() -> str | None:
        ort = _import_onnxruntime()
        name = PROVIDERS[provider]
        if name not in ort.get_available_providers():
            return f"onnxruntime {ort.__version__} has no {name} ({INSTALL_HINTS[provider]})"
        reason = cuda_missing()
        return None if reason is None else f"{name} compiled in, not usable: {reason}"

    return check


def _options(provider: str) -> Callable[[LoadRequest], dict[str, Any]]:
    def build(request: LoadRequest) -> dict[str, Any]:
        options: dict[str, Any] = {"path": request.path, "provider": provider, "allow_fallback": request.allow_fallback}
        if provider == "cpu":
            options["threads"] = request.threads
            options["allow_spinning"] = not request.shared_cores
        else:
            options["trt_fp16"] = request.precision == "fp16"
            options["cache_dir"] = request.cache_dir
        return options

    return build


_ORT = module_missing("onnxruntime", "pip install onnxruntime, or onnxruntime-gpu for CUDA/TensorRT")
register_target(Target(
    "onnxruntime-cpu", "onnxruntime", "cpu", ("onnx",), "ONNX Runtime, CPU execution provider",
    _options("cpu"), _ORT, default_for=("onnx",), bench="onnx-cpu", recipe="onnx",
))
register_target(Target(
    "onnxruntime-cuda", "onnxruntime", "cuda", ("onnx",), "ONNX Runtime, CUDA execution provider",
    _options("cuda"), all_of(_ORT, _provider_missing("cuda")), default_for=("onnx",), bench="onnx-cuda",
    recipe="onnx", verified=False,
))
register_target(Target(
    "onnxruntime-tensorrt", "onnxruntime", "cuda", ("onnx",),
    "ONNX Runtime, TensorRT execution provider (TensorRT-safe graph)",
    _options("tensorrt"), all_of(_ORT, _provider_missing("tensorrt")), aliases=("tensorrt",),
    bench="onnx-tensorrt", recipe="onnx-tensorrt", verified=False,
))
