"""Safe, strict checkpoint loading and model construction from a :class:`ModelConfig`."""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .config import ModelConfig
from .errors import CheckpointError
from .matting import MattingBase, MattingRefine
from .synthetic import init_synthetic_weights

log = logging.getLogger(__name__)

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net", "weights")


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint file holds, read from its keys and shapes."""

    path: str
    sha256: str
    model_type: str  # "refine" or "base"
    backbone: str
    refine_kernel_size: int | None


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _unwrap(obj: object, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, Tensor) for v in inner.values()):
                obj = inner
                break
        if obj and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
            # Checkpoints saved from DataParallel carry a "module." prefix.
            return {k[7:] if k.startswith("module.") else k: v for k, v in obj.items()}
    raise CheckpointError(
        f"{path}: not a BackgroundMattingV2 checkpoint (expected a state_dict of tensors, "
        f"or a dict wrapping one under {'/'.join(WRAPPER_KEYS)}; found {type(obj).__name__})"
    )


def describe_state_dict(state: dict[str, Tensor], path: str = "<state_dict>", sha256: str = "") -> CheckpointInfo:
    """Infers model type, backbone and refiner kernel size from a state_dict's keys."""
    if "backbone.features.0.0.weight" in state:
        backbone = "mobilenetv2"
    elif "backbone.conv1.weight" in state:
        backbone = "resnet101" if "backbone.layer3.22.conv1.weight" in state else "resnet50"
    else:
        raise CheckpointError(
            f"{path}: not a BackgroundMattingV2 checkpoint (no backbone.* keys of a resnet50, resnet101 or "
            f"mobilenetv2 encoder; first keys: {', '.join(list(state)[:3]) or 'none'})"
        )
    kernel = state.get("refiner.conv1.weight")
    model_type = "refine" if kernel is not None else "base"
    return CheckpointInfo(path, sha256, model_type, backbone, None if kernel is None else int(kernel.shape[-1]))


def _refused_detail(message: str) -> str | None:
    """What torch's weights-only unpickler refused, or None if it was another failure."""
    if "Weights only load failed" not in message and "WeightsUnpickler error" not in message:
        return None
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?: was not an allowed| Please|\n|$)", message)
    return match.group(1).strip() if match and match.group(1).strip() else "an object that is not a tensor"


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive: a zip with a ``code/`` folder (a plain ``torch.save`` has none)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], CheckpointInfo]:
    """Reads a checkpoint with ``weights_only=True``; raises :class:`CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (pass the path of a pytorch_<backbone>.pth file)")
    if _is_torchscript(path):
        raise CheckpointError(f"--checkpoint {path} is a TorchScript file (an exported model), not a checkpoint of "
                              f"weights; run it with --model {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol notes would add lines to the one error
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        refused = _refused_detail(str(exc))
        if refused is not None:
            # Never repeat torch's advice to retry with weights_only=False: that runs the file's code.
            raise CheckpointError(
                f"{path}: refused to unpickle: the file contains code or objects that are not plain tensors "
                f"({refused}); bgm-deploy loads checkpoints with weights_only=True for safety. Use a checkpoint "
                "that holds only a state_dict of tensors (the official pytorch_<backbone>.pth files do)"
            ) from None
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot be read as a PyTorch checkpoint (truncated or not a checkpoint?): {reason}") from None
    state = _unwrap(obj, path)
    return state, describe_state_dict(state, str(path), file_sha256(path))


def _new_model(config: ModelConfig) -> MattingBase:
    config = config.resolved()  # unset settings: HD preset, the reference's own patch methods
    if config.model_type == "base":
        return MattingBase(config.backbone)
    return MattingRefine(
        config.backbone,
        config.backbone_scale,
        config.refine_mode,
        config.refine_sample_pixels,
        config.refine_threshold,
        config.refine_kernel_size,
        config.refine_prevent_oversampling,
        config.refine_patch_crop_method,
        config.refine_patch_replace_method,
    )


def load_state(model: MattingBase, state: dict[str, Tensor], path: str, strict: bool = True) -> list[str]:
    """``load_state_dict`` with readable errors; returns warnings (e.g. refiner left at init)."""
    warnings: list[str] = []
    if isinstance(model, MattingRefine) and not any(k.startswith("refiner.") for k in state):
        warnings.append(f"{path}: a MattingBase checkpoint loaded into MattingRefine; the refiner keeps its initial weights")
        state = {**{k: v for k, v in model.state_dict().items() if k.startswith("refiner.")}, **state}
    own = model.state_dict()
    mismatched = [
        f"{k} {tuple(v.shape)} (checkpoint) vs {tuple(own[k].shape)} (model)"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    if mismatched:
        # load_state_dict raises a bare RuntimeError for these even with strict=False.
        raise CheckpointError(
            f"{path}: {len(mismatched)} tensors have other shapes than the model's "
            f"(e.g. {'; '.join(mismatched[:3])}): a checkpoint of another architecture?"
        )
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        detail = (
            f"{len(result.missing_keys)} missing keys (e.g. {', '.join(result.missing_keys[:3]) or '-'}), "
            f"{len(result.unexpected_keys)} unexpected keys (e.g. {', '.join(result.unexpected_keys[:3]) or '-'})"
        )
        if strict:
            raise CheckpointError(f"{path}: does not match the model architecture: {detail}")
        warnings.append(f"{path}: loaded leniently: {detail}")
    return warnings


def build_model(config: ModelConfig, checkpoint: str | Path | None = None, strict: bool = True) -> MattingBase:
    """Builds the PyTorch reference model for ``config`` in eval mode.

    With ``checkpoint``, its architecture must match ``config`` (backbone, model type, kernel
    size) and, if ``config.checkpoint_sha256`` is set, its sha256 too. Without, the weights
    are the synthetic ones for ``config.seed``.

    Raises:
        CheckpointError: the file is missing, unreadable, or for another architecture.
    """
    model = _new_model(config)
    if checkpoint is None:
        if config.checkpoint_sha256 is not None:
            raise CheckpointError(
                f"this model was exported from a checkpoint (sha256 {config.checkpoint_sha256[:12]}…); "
                "pass the same file with --checkpoint"
            )
        assert config.seed is not None  # guaranteed by ModelConfig.__post_init__
        return init_synthetic_weights(model, config.seed)
    state, info = read_checkpoint(checkpoint)
    if config.checkpoint_sha256 is not None and info.sha256 != config.checkpoint_sha256:
        raise CheckpointError(
            f"{checkpoint}: sha256 {info.sha256[:12]}… differs from the one recorded in the model "
            f"({config.checkpoint_sha256[:12]}…); pass the checkpoint the model was exported from"
        )
    expected = f"{config.backbone} Matting{'Refine' if config.model_type == 'refine' else 'Base'}"
    found = f"{info.backbone} Matting{'Refine' if info.model_type == 'refine' else 'Base'}"
    if info.backbone != config.backbone:  # a refine checkpoint holds every base key: fine for "base"
        raise CheckpointError(f"{checkpoint}: expected a {expected} checkpoint, found {found} (use --backbone {info.backbone})")
    if info.refine_kernel_size is not None and config.model_type == "refine" and info.refine_kernel_size != config.refine_kernel_size:
        raise CheckpointError(
            f"{checkpoint}: refiner kernel size is {info.refine_kernel_size}, config asks for "
            f"{config.refine_kernel_size} (use --refine-kernel-size {info.refine_kernel_size})"
        )
    if config.model_type == "base":
        state = {k: v for k, v in state.items() if not k.startswith("refiner.")}
    for message in load_state(model, state, str(checkpoint), strict=strict):
        log.warning(message)
    return model.eval()


def config_for_checkpoint(config: ModelConfig, checkpoint: str | Path) -> ModelConfig:
    """``config`` with the checkpoint's sha256 recorded (and the seed dropped)."""
    if not Path(checkpoint).is_file():
        raise CheckpointError(f"checkpoint {checkpoint} does not exist (pass the path of a pytorch_<backbone>.pth file)")
    return config.replace(checkpoint_sha256=file_sha256(checkpoint), seed=None)
