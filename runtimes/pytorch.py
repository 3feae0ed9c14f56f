"""Eager PyTorch runner: the reference model itself behind the runner contract.

Built from a :class:`ModelConfig` (plus an optional checkpoint; synthetic weights from the
config's seed otherwise) or from an ``nn.Module`` already in hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model.errors import RunnerError, UsageError
from model.spec import INPUT_NAMES, OUTPUT_NAMES

from .base import BaseRunner, TensorMeta, check_threads
from .providers import to_tensor, torch_device
from .registry import register_runner
from .targets import LoadRequest, Target, cuda_missing, register_target
from .torchscript import import_torch

if TYPE_CHECKING:
    from torch import nn

    from model.config import ModelConfig

DTYPES = ("float32", "float16")


@register_runner("pytorch")
class PyTorchRunner(BaseRunner):
    """Runs MattingRefine/MattingBase eagerly.

    Args:
        model_config: what to build (with ``checkpoint``, or synthetic weights from its seed).
        checkpoint: a ``pytorch_<backbone>.pth`` state_dict matching ``model_config``.
        module: an already built model instead of ``model_config`` (not copied: moved to
            ``device``/``dtype`` in place).
        model_type: ``"refine"`` or ``"base"``; required with ``module``.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        allow_fallback: with CUDA requested and unavailable, warn and use the CPU.
        dtype: ``"float32"`` or ``"float16"`` (fp16 needs CUDA in practice).
        outputs: the subset of output names to return, in model order (default: all).
    """

    def __init__(
        self,
        model_config: ModelConfig | None = None,
        checkpoint: str | Path | None = None,
        module: nn.Module | None = None,
        model_type: str | None = None,
        device: str = "cpu",
        allow_fallback: bool = False,
        dtype: str = "float32",
        outputs: tuple[str, ...] | list[str] | None = None,
        threads: int | None = None,
    ) -> None:
        super().__init__()
        check_threads(threads)
        if (model_config is None) == (module is None):
            raise UsageError("the pytorch runner needs exactly one of model_config= or module= (got "
                             f"{'both' if module is not None else 'neither'})")
        if module is not None:
            if model_type not in OUTPUT_NAMES:
                raise UsageError(f"model_type={model_type!r} is not valid with module=; valid: {', '.join(OUTPUT_NAMES)}")
            if checkpoint is not None:
                raise UsageError("checkpoint= only applies with model_config=; load it into the module yourself")
        elif model_config is not None:
            model_type = model_config.model_type
        if dtype not in DTYPES:
            raise UsageError(f"dtype={dtype!r} is not valid; valid: {', '.join(DTYPES)}")
        all_names = OUTPUT_NAMES[model_type]
        chosen = tuple(all_names if outputs is None else outputs)
        unknown = [name for name in chosen if name not in all_names]
        if unknown or not chosen:
            raise UsageError(f"outputs={list(chosen)!r} is not valid for a {model_type} model; valid: {', '.join(all_names)}")
        self.model_config = model_config
        self.checkpoint = checkpoint
        self.model_type = model_type
        self.device_name = device
        self.allow_fallback = allow_fallback
        self.dtype_name = dtype
        self.output_names = tuple(name for name in all_names if name in chosen)
        self.threads = threads  # torch's intra-op threads: process-wide (None leaves torch's setting)
        self._given_module = module
        self.module: Any = None
        self.device: Any = None

    def _activate(self) -> None:
        torch = import_torch()
        self.device = torch_device(self.device_name, self.allow_fallback, self.name)
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        if self._given_module is not None:
            module = self._given_module
        else:
            # deferred: torch only when a runner starts (the CLI's --help reads this module's targets)
            from model.checkpoint import build_model


            module = build_model(self.model_config, self.checkpoint)
        self.module = module.eval().to(self.device, getattr(torch, self.dtype_name))
        self.provider = f"torch:{self.device}"

    def _deactivate(self) -> None:
        self.module = None

    def _io_metadata(self) -> tuple[dict[str, TensorMeta], dict[str, TensorMeta]]:
        dtype = np.dtype(self.dtype_name)
        inputs = {name: TensorMeta(name, dtype, ("batch", 3, "height", "width")) for name in INPUT_NAMES}
        outputs = {name: TensorMeta(name, dtype, ("batch", None, None, None)) for name in self.output_names}
        return inputs, outputs

    def _prepare(self, feeds: dict[str, Any]) -> Any:
        """The module on tensors already on the device in its dtype (no conversions timed)."""
        torch = import_torch()
        dtype = getattr(torch, self.dtype_name)
        src, bgr = (to_tensor(feeds[name], self.device).to(dtype) for name in INPUT_NAMES)

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
        except ValueError as exc:  # the reference model's validate(): e.g. size not divisible by 4
            raise RunnerError(f"runner 'pytorch': {exc}") from None
        named = dict(zip(OUTPUT_NAMES[self.model_type], results))
        return {name: named[name].detach().cpu().numpy() for name in self.output_names}


def _build(device: str) -> Any:
    def build(request: LoadRequest) -> dict[str, Any]:
        return {"model_config": request.model_config, "checkpoint": request.checkpoint, "device": device,
                "allow_fallback": request.allow_fallback,
                "dtype": "float16" if request.precision == "fp16" else "float32", "threads": request.threads}

    return build


register_target(Target(
    "pytorch-cpu", "pytorch", "cpu", ("pytorch",), "the PyTorch reference model, eager, on the CPU",
    _build("cpu"), default_for=("pytorch",), bench="eager",
))
register_target(Target(
    "pytorch-cuda", "pytorch", "cuda", ("pytorch",), "the PyTorch reference model, eager, on a CUDA GPU",
    _build("cuda"), cuda_missing, default_for=("pytorch",), bench="eager-cuda", verified=False,
))
