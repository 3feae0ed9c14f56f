"""Native TensorRT runner: a serialized engine → inference with reused device buffers.

UNVERIFIED on hardware: written against the TensorRT 10 Python API (name-based I/O:
``num_io_tensors``, ``get_tensor_name/mode/dtype``, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``) and run by ``benchmarks/gpu_validate.py``
on a GPU box; this project's machines have no GPU. Device memory comes from torch's CUDA
allocator (torch is a dependency anyway), so no pycuda/cuda-python is needed. Buffers are
kept per tensor and reused while they are large enough, so steady-state calls allocate
nothing. ``tensorrt`` is imported in :meth:`_activate` only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from model.errors import ModelFileError, RunnerError

from .base import BaseRunner, Dim, TensorMeta
from .registry import register_runner
from .targets import LoadRequest, Target, all_of, cuda_missing, module_missing, register_target


@register_runner("tensorrt")
class TensorRTRunner(BaseRunner):
    """Runs a ``.engine`` file built by ``engine_from_onnx``.

    Args:
        path: the engine file (its ``.engine.json`` sidecar must be beside it).
        device_id: CUDA device.
        check_compatibility: refuse an engine built for another TensorRT version or GPU
            architecture (see :func:`exporters.tensorrt.check_engine_compatible`).
    """

    def __init__(self, path: str | Path, device_id: int = 0, check_compatibility: bool = True) -> None:
        super().__init__()
        self.path = Path(path)
        self.device_id = device_id
        self.check_compatibility = check_compatibility
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._torch: Any = None
        self._buffers: dict[str, Any] = {}

    def _activate(self) -> None:
        if not self.path.is_file():
            raise ModelFileError(f"engine file {self.path} does not exist")
        # deferred: torch and TensorRT only when a runner starts (the CLI's --help reads the targets)
        from exporters.tensorrt import check_engine_compatible, import_tensorrt, require_gpu

        trt = import_tensorrt()
        torch = require_gpu(self.device_id, "the tensorrt runner")
        if self.check_compatibility:
            check_engine_compatible(self.path)
        torch.cuda.set_device(self.device_id)
        self._trt, self._torch = trt, torch
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise ModelFileError(f"{self.path}: TensorRT could not deserialize the engine (corrupt or incompatible)")
        self._context = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream(device=self.device_id)
        self.provider = f"TensorRT {trt.__version__}"

    def _deactivate(self) -> None:
        self._buffers.clear()
        self._context = None
        self._engine = None
        self._stream = None

    def _io_metadata(self) -> tuple[dict[str, TensorMeta], dict[str, TensorMeta]]:
        trt = self._trt
        inputs: dict[str, TensorMeta] = {}
        outputs: dict[str, TensorMeta] = {}
        for index in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(index)
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            shape: tuple[Dim, ...] = tuple(None if d < 0 else int(d) for d in self._engine.get_tensor_shape(name))
            meta = TensorMeta(name, dtype, shape)
            if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                inputs[name] = meta
            else:
                outputs[name] = meta
        return inputs, outputs

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> Any:
        """A device tensor of ``shape``, reusing the last allocation when it is big enough."""
        torch = self._torch
        numel = int(np.prod(shape)) if shape else 1
        torch_dtype = torch.from_numpy(np.empty(0, dtype=dtype)).dtype
        storage = self._buffers.get(name)
        if storage is None or storage.numel() < numel or storage.dtype != torch_dtype:
            storage = torch.empty(max(numel, 1), dtype=torch_dtype, device=f"cuda:{self.device_id}")
            self._buffers[name] = storage
        return storage[:numel].view(shape)

    def _prepare(self, feeds: dict[str, Any]) -> Any:
        """Inputs given to TensorRT as CUDA tensors (no host→device copy); outputs are still
        copied to the host by :meth:`_infer`, so these timings include that copy."""
        torch = self._torch
        on_device = {name: torch.as_tensor(value).to(f"cuda:{self.device_id}") for name, value in feeds.items()}
        return lambda: self._infer(on_device)

    def synchronize(self) -> None:
        self._torch.cuda.synchronize(self.device_id)

    def _infer(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        torch = self._torch
        context = self._context
        with torch.cuda.stream(self._stream):
            for name, meta in self._inputs.items():
                value = feeds[name]
                tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
                shape = tuple(int(d) for d in tensor.shape)
                if not context.set_input_shape(name, shape):
                    raise RunnerError(
                        f"runner 'tensorrt': input {name!r} shape {shape} is outside the engine's optimisation "
                        f"profile {self._profile_text(name)}; rebuild with a wider --min-shape/--max-shape"
                    )
                buffer = self._buffer(name, shape, meta.dtype)
                buffer.copy_(tensor, non_blocking=True)
                context.set_tensor_address(name, buffer.data_ptr())
            results = {}
            for name, meta in self._outputs.items():
                shape = tuple(int(d) for d in context.get_tensor_shape(name))
                buffer = self._buffer(name, shape, meta.dtype)
                context.set_tensor_address(name, buffer.data_ptr())
                results[name] = buffer
            if not context.execute_async_v3(self._stream.cuda_stream):
                raise RunnerError(f"runner 'tensorrt': TensorRT failed to execute {self.path} (see the TensorRT log)")
            outputs = {name: buffer.cpu().numpy() for name, buffer in results.items()}
        self._stream.synchronize()
        return outputs

    def _profile_text(self, name: str) -> str:
        low, opt, high = self._engine.get_tensor_profile_shape(name, 0)
        return f"min {tuple(low)} opt {tuple(opt)} max {tuple(high)}"


def _build(request: LoadRequest) -> dict[str, Any]:
    return {"path": request.path}


register_target(Target(
    "tensorrt-cuda", "tensorrt", "cuda", ("tensorrt",), "a native TensorRT engine (.engine) on a CUDA GPU",
    _build, all_of(module_missing("tensorrt", 'pip install "bgm-deploy[tensorrt]"'), cuda_missing),
    default_for=("tensorrt",), aliases=("tensorrt",), bench="tensorrt", recipe="tensorrt", verified=False,
))
