"""What the runners share: output names per model type, torch devices, and which runner
serves which (file format, provider) pair.

Kept free of heavy imports: torch is imported inside the functions that need it.
"""

from __future__ import annotations

import logging
from typing import Any

from model.errors import RuntimeUnavailableError, UsageError

log = logging.getLogger(__name__)

PROVIDER_CHOICES = ("cpu", "cuda", "tensorrt")

# (file format, provider) -> registered runner name. The native TensorRT runner serves
# engine files; ONNX files go through onnxruntime with the matching execution provider.
RUNNER_FOR_FORMAT = {
    ("onnx", "cpu"): "onnxruntime",
    ("onnx", "cuda"): "onnxruntime",
    ("onnx", "tensorrt"): "onnxruntime",
    ("torchscript", "cpu"): "torchscript",
    ("torchscript", "cuda"): "torchscript",
    ("tensorrt", "tensorrt"): "tensorrt",
    ("tensorrt", "cuda"): "tensorrt",
    ("pytorch", "cpu"): "pytorch",
    ("pytorch", "cuda"): "pytorch",
}


# Runtimes that can be chosen instead of the format's default runner (verify/matte
# --runtime, Predictor.load(runner=...)): file format -> runner names.
RUNTIMES_FOR_FORMAT = {"onnx": ("onnxruntime", "openvino")}


def runner_options(
    fmt: str, provider: str, allow_fallback: bool = False, runtime: str | None = None
) -> tuple[str, dict[str, Any]]:
    """The runner name and provider/device options for a model format and a provider.

    Args:
        runtime: a runner to use instead of the format's default (``"openvino"`` for ONNX,
            CPU only); None: the default (:data:`RUNNER_FOR_FORMAT`).

    Raises:
        UsageError: ``provider`` is unknown or cannot run this format (e.g. TorchScript on
            TensorRT), or ``runtime`` cannot run it.
    """
    if provider not in PROVIDER_CHOICES:
        raise UsageError(f"provider={provider!r} is not valid; valid: {', '.join(PROVIDER_CHOICES)}")
    if runtime == "openvino":
        if fmt not in RUNTIMES_FOR_FORMAT or runtime not in RUNTIMES_FOR_FORMAT[fmt]:
            raise UsageError(f"runtime 'openvino' cannot run a {fmt} model; it runs ONNX files")
        if provider != "cpu":
            raise UsageError(f"runtime 'openvino' runs on the CPU; drop provider={provider!r} (use provider 'cpu')")
        return runtime, {}
    name = RUNNER_FOR_FORMAT.get((fmt, provider))
    if name is None:
        valid = sorted(p for f, p in RUNNER_FOR_FORMAT if f == fmt)
        raise UsageError(f"provider={provider!r} cannot run a {fmt} model; valid for {fmt}: {', '.join(valid)}")
    if runtime is not None and runtime != name:
        raise UsageError(
            f"runtime={runtime!r} cannot run a {fmt} model on provider {provider!r}; valid: {name}"
            + (", openvino (provider cpu)" if fmt == "onnx" else "")
        )
    if name == "onnxruntime":
        return name, {"provider": provider, "allow_fallback": allow_fallback}
    if name in ("torchscript", "pytorch"):
        return name, {"device": provider, "allow_fallback": allow_fallback}
    return name, {}


def torch_device(device: str, allow_fallback: bool, runner: str) -> Any:
    """``torch.device`` for ``"cpu"``/``"cuda"``/``"cuda:N"``; CUDA without a GPU raises or, with
    ``allow_fallback``, warns loudly and gives CPU."""
    import torch

    kind = device.split(":", 1)[0]
    if kind not in ("cpu", "cuda"):
        raise UsageError(f"device={device!r} is not valid for the {runner} runner; valid: cpu, cuda, cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        message = (
            f"{runner} runner: device {device!r} requested but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); install a CUDA build of torch "
            "(https://pytorch.org/get-started/locally/) on a machine with an NVIDIA GPU"
        )
        if not allow_fallback:
            raise RuntimeUnavailableError(message + ", or pass allow_fallback=True / --allow-fallback to run on CPU")
        log.warning("!!! %s; FALLING BACK to CPU (allow_fallback=True)", message)
        return torch.device("cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise UsageError(f"device={device!r} is not valid: {exc}") from None


def to_tensor(value: Any, device: Any) -> Any:
    """A feed (numpy array or torch tensor) as a contiguous tensor on ``device``."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(device)
    return torch.from_numpy(value).to(device)
