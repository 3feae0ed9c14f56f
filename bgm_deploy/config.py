"""The model configuration shared by export, verify, bench and the predictor."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from model import BACKBONES, CROP_METHODS, KERNEL_SIZES, REFINE_MODES, REPLACE_METHODS

from .errors import UsageError

MODEL_TYPES = ("refine", "base")
CONFIG_SCHEMA_VERSION = 1

# Recommended settings of the original project: HD → 0.25 + 80k pixels, 4K → 0.125 + 320k.
HD_PRESET = (0.25, 80_000)
UHD_PRESET = (0.125, 320_000)
HD_PIXELS = 1920 * 1080
# Largest image side any command accepts: 8192x8192 float32 inputs are already ~1.6 GB per
# batch item through the network; a typo (20000x20000) must fail at once, not allocate.
MAX_SIDE = 8192
# Smallest backbone scale: below 1% the base network sees a handful of pixels (and below
# 2 px on the smaller side the model cannot run at all; see check_backbone_scale_for).
MIN_BACKBONE_SCALE = 0.01
MAX_BACKBONE_SCALE = 0.5


def check_resolution(width: int, height: int, label: str = "--resolution", multiple: int = 4) -> tuple[int, int]:
    """``(width, height)`` must be positive, at most :data:`MAX_SIDE` and divisible by ``multiple``."""
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE) or width % multiple or height % multiple:
        raise UsageError(
            f"{label} {width}x{height} is not valid; width and height must be in 1..{MAX_SIDE}"
            + (f" and divisible by {multiple}" if multiple > 1 else "")
        )
    return width, height


def check_backbone_scale_for(scale: float, width: int, height: int, label: str = "--backbone-scale") -> None:
    """The base network's input, ``floor(side * scale)``, must be at least 2 px on each side."""
    if int(min(width, height) * scale) < 2:
        raise UsageError(
            f"{label} {scale} is too small for {width}x{height}: the base network would see "
            f"{int(width * scale)}x{int(height * scale)} px; use at least {2 / min(width, height):.4g}"
        )


def sample_pixels_note(sample_pixels: int, width: int, height: int) -> str | None:
    """A warning when ``sample_pixels`` is at least the image's pixel count, else None."""
    pixels = width * height
    if sample_pixels < pixels:
        return None
    return (
        f"--refine-sample-pixels {sample_pixels} > {width}x{height} = {pixels} px: every 4x4 patch of the "
        "image is refined (the same as --refine-mode full, and as slow); use a smaller value for a real sampling run"
    )


def auto_backbone_scale(width: int, height: int) -> tuple[float, int]:
    """Picks ``(backbone_scale, refine_sample_pixels)`` for an image size.

    Up to HD (1920x1080 = 2,073,600 pixels) → ``(0.25, 80_000)``; larger (4K and between)
    → ``(0.125, 320_000)``, the original project's recommended settings.
    """
    if width <= 0 or height <= 0:
        raise UsageError(f"resolution {width}x{height} is not valid; width and height must be positive")
    return HD_PRESET if width * height <= HD_PIXELS else UHD_PRESET


def _check_choice(name: str, value: Any, valid: tuple[Any, ...]) -> None:
    if value not in valid:
        raise UsageError(f"{name}={value!r} is not valid; valid: {', '.join(map(str, valid))}")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the PyTorch reference of an exported model.

    ``seed`` names the synthetic weights (see :mod:`bgm_deploy.synthetic`) when
    ``checkpoint_sha256`` is None; with a checkpoint the seed is ignored.
    """

    model_type: str = "refine"
    backbone: str = "mobilenetv2"
    backbone_scale: float = 0.25
    refine_mode: str = "sampling"
    refine_sample_pixels: int = 80_000
    refine_threshold: float = 0.1
    refine_kernel_size: int = 3
    refine_prevent_oversampling: bool = True
    refine_patch_crop_method: str = "unfold"
    refine_patch_replace_method: str = "scatter_nd"
    seed: int | None = 0
    checkpoint_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        _check_choice("model_type", self.model_type, MODEL_TYPES)
        _check_choice("backbone", self.backbone, BACKBONES)
        _check_choice("refine_mode", self.refine_mode, REFINE_MODES)
        _check_choice("refine_kernel_size", self.refine_kernel_size, KERNEL_SIZES)
        _check_choice("refine_patch_crop_method", self.refine_patch_crop_method, CROP_METHODS)
        _check_choice("refine_patch_replace_method", self.refine_patch_replace_method, REPLACE_METHODS)
        # Messages use the CLI option names (the field names with dashes), so they read the same there.
        if not MIN_BACKBONE_SCALE <= self.backbone_scale <= MAX_BACKBONE_SCALE:
            raise UsageError(f"--backbone-scale {self.backbone_scale!r} is not valid; it must be in "
                             f"[{MIN_BACKBONE_SCALE}, {MAX_BACKBONE_SCALE}]")
        if not 16 <= self.refine_sample_pixels <= MAX_SIDE * MAX_SIDE:
            raise UsageError(f"--refine-sample-pixels {self.refine_sample_pixels!r} is not valid; it must be in "
                             f"16..{MAX_SIDE * MAX_SIDE}")
        if not 0 <= self.refine_threshold <= 1:
            raise UsageError(f"--refine-threshold {self.refine_threshold!r} is not valid; it must be in [0, 1]")
        if self.seed is None and self.checkpoint_sha256 is None:
            raise UsageError("a model needs either a checkpoint or a synthetic-weights seed; got neither")

    @property
    def is_synthetic(self) -> bool:
        return self.checkpoint_sha256 is None

    @property
    def weights_label(self) -> str:
        """Human-readable origin of the weights."""
        if self.checkpoint_sha256 is None:
            return f"synthetic (seed {self.seed})"
        return f"checkpoint sha256 {self.checkpoint_sha256[:12]}…"

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["schema_version"] = CONFIG_SCHEMA_VERSION
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        version = data.get("schema_version", CONFIG_SCHEMA_VERSION)
        if version > CONFIG_SCHEMA_VERSION:
            raise UsageError(
                f"model config schema_version {version} is newer than this bgm-deploy understands "
                f"({CONFIG_SCHEMA_VERSION}); upgrade bgm-deploy"
            )
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"model config is not valid JSON: {exc}") from None
        return cls.from_dict(data)
