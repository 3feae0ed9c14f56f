"""TorchScript runner: a ``torch.jit`` file exported by bgm-deploy (or the original release).

Output names and the input dtype come from the embedded ``bgm_deploy.json`` metadata; a
file without it (e.g. the original project's TorchScript release) needs ``model_type`` so
that the tuple it returns can be named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from exporters.metadata import TORCHSCRIPT_EXTRA_FILE, ExportMetadata
from model.errors import ModelFileError, RunnerError, RuntimeUnavailableError, UsageError
from model.spec import INPUT_NAMES, OUTPUT_NAMES

from .base import BaseRunner, TensorMeta, check_threads
from .providers import to_tensor, torch_device
from .registry import register_runner
from .targets import LoadRequest, Target, cuda_missing, register_target


def import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise RuntimeUnavailableError("this runner needs PyTorch: pip install torch") from None
    return torch


@register_runner("torchscript")
class TorchScriptRunner(BaseRunner):
    """Runs a TorchScript file.

    Args:
        path: the TorchScript file (``.pt``/``.torchscript``).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        allow_fallback: with CUDA requested and unavailable, warn and use the CPU.
        model_type: ``"refine"`` or ``"base"``; only needed for files without metadata.
    """

    def __init__(
        self, path: str | Path, device: str = "cpu", allow_fallback: bool = False, model_type: str | None = None,
        threads: int | None = None,
    ) -> None:
        super().__init__()
        check_threads(threads)
        self.threads = threads  # torch's intra-op threads: process-wide (None leaves torch's setting)
        if model_type is not None and model_type not in OUTPUT_NAMES:
            raise UsageError(f"model_type={model_type!r} is not valid; valid: {', '.join(OUTPUT_NAMES)}")
        self.path = Path(path)
        self.device_name = device
        self.allow_fallback = allow_fallback
        self.model_type = model_type
        self.module: Any = None
        self.device: Any = None
        self._output_names: tuple[str, ...] = ()
        self._dtype = np.dtype(np.float32)

    def _activate(self) -> None:
        torch = import_torch()
        self.device = torch_device(self.device_name, self.allow_fallback, self.name)
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        if not self.path.is_file():
            raise ModelFileError(f"TorchScript model {self.path} does not exist")
        extra = {TORCHSCRIPT_EXTRA_FILE: ""}
        try:
            self.module = torch.jit.load(str(self.path), map_location=self.device, _extra_files=extra).eval()
        except (RuntimeError, ValueError) as exc:
            raise ModelFileError(f"{self.path}: not a readable TorchScript file ({str(exc).splitlines()[0]})") from None
        self._output_names, self._dtype = self._read_io(extra[TORCHSCRIPT_EXTRA_FILE])
        self.provider = f"torch.jit:{self.device}"

    def _read_io(self, text: str | bytes) -> tuple[tuple[str, ...], np.dtype]:
        if text:
            metadata = ExportMetadata.from_json(text.decode() if isinstance(text, bytes) else text, str(self.path))
            export = metadata.export
            names = tuple(export.get("outputs") or OUTPUT_NAMES[metadata.model_config.model_type])
            return names, np.dtype(export.get("io_dtype", "float32"))
        if self.model_type is None:
            raise ModelFileError(
                f"{self.path}: has no bgm-deploy metadata ({TORCHSCRIPT_EXTRA_FILE}); pass model_type='refine' or 'base' "
                "to name its outputs"
            )
        return OUTPUT_NAMES[self.model_type], np.dtype(np.float32)

    def _deactivate(self) -> None:
        self.module = None

    def _io_metadata(self) -> tuple[dict[str, TensorMeta], dict[str, TensorMeta]]:
        inputs = {name: TensorMeta(name, self._dtype, ("batch", 3, "height", "width")) for name in INPUT_NAMES}
        outputs = {name: TensorMeta(name, self._dtype, ("batch", None, None, None)) for name in self._output_names}
        return inputs, outputs

    def _prepare(self, feeds: dict[str, Any]) -> Any:
        """The module on tensors already on the device (no conversions timed)."""
        torch = import_torch()
        src, bgr = (to_tensor(feeds[name], self.device) for name in INPUT_NAMES)

        def run() -> Any:
            with torch.inference_mode():
                return self.module(src, bgr)

        return run

    def synchronize(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            import_torch().cuda.synchronize(self.device)

    def _infer(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        torch = import_torch()
        src, bgr = (to_tensor(feeds[name], self.device) for name in INPUT_NAMES)
        try:
            with torch.inference_mode():
                results = self.module(src, bgr)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RunnerError(f"runner 'torchscript' failed on inputs {tuple(src.shape)}: {first}") from None
        if isinstance(results, torch.Tensor):
            results = (results,)
        if len(results) != len(self._output_names):
            raise ModelFileError(
                f"{self.path}: returned {len(results)} outputs, its metadata names {len(self._output_names)} "
                f"({', '.join(self._output_names)})"
            )
        return {name: value.detach().cpu().numpy() for name, value in zip(self._output_names, results)}


def _build(device: str) -> Any:
    def build(request: LoadRequest) -> dict[str, Any]:
        model_type = request.model_config.model_type if request.model_config is not None else None
        return {"path": request.path, "device": device, "allow_fallback": request.allow_fallback, "model_type": model_type,
                "threads": request.threads}

    return build


register_target(Target(
    "torchscript-cpu", "torchscript", "cpu", ("torchscript",), "TorchScript (torch.jit) on the CPU",
    _build("cpu"), default_for=("torchscript",), bench="torchscript", recipe="torchscript",
))
register_target(Target(
    "torchscript-cuda", "torchscript", "cuda", ("torchscript",), "TorchScript (torch.jit) on a CUDA GPU",
    _build("cuda"), cuda_missing, default_for=("torchscript",), bench="torchscript-cuda", recipe="torchscript",
    verified=False,
))
