"""What the torch runners share: the torch device of a device name (with the fallback rule),
and feeds as tensors on it. Which runner serves which file format on which device is the
target registry's business (:mod:`runtimes.targets`).

Kept free of heavy imports: torch is imported inside the functions that need it.
"""

from __future__ import annotations

import logging
from typing import Any

from model.errors import RuntimeUnavailableError, UsageError

log = logging.getLogger(__name__)


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
