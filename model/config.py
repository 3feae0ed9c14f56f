"""The model configuration shared by export, verify, bench and the predictor."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .demo import DEMO_SHA256
from .errors import UsageError
from .spec import BACKBONES, DEFAULT_CROP_METHOD, DEFAULT_REPLACE_METHOD, MAX_SIDE, MODEL_TYPES, refine_settings_error

CONFIG_SCHEMA_VERSION = 1

# Recommended settings of the original project: HD → 0.25 + 80k pixels, 4K → 0.125 + 320k.
HD_PRESET = (0.25, 80_000)
UHD_PRESET = (0.125, 320_000)
HD_PIXELS = 1920 * 1080


def auto_backbone_scale(width: int, height: int) -> tuple[float, int]:
    """Picks ``(backbone_scale, refine_sample_pixels)`` for an image size.

    Up to HD (1920x1080 = 2,073,600 pixels) → ``(0.25, 80_000)``; larger (4K and between)
    → ``(0.125, 320_000)``, the original project's recommended settings.
    """
    if width <= 0 or height <= 0:
        raise UsageError(f"resolution {width}x{height} is not valid; width and height must be positive")
    return HD_PRESET if width * height <= HD_PIXELS else UHD_PRESET


def check_resolution(width: int, height: int, label: str = "--resolution", multiple: int = 4) -> tuple[int, int]:
    """``(width, height)`` must be positive, at most :data:`MAX_SIDE` and divisible by ``multiple``."""
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE) or width % multiple or height % multiple:
        raise UsageError(
            f"{label} {width}x{height} is not valid; width and height must be in 1..{MAX_SIDE}"
            + (f" and divisible by {multiple}" if multiple > 1 else "")
        )
    return width, height


NAMED_SIZES = {"hd": (1920, 1080), "4k": (3840, 2160)}


def parse_size(text: str, label: str = "--resolution", multiple: int = 4, minimum: int = 1) -> tuple[int, int]:
    """``"1920x1080"`` (or ``"hd"``, ``"4k"``) → ``(width, height)``, checked by :func:`check_resolution`
    and at least ``minimum`` on each side: the one size parser of every command."""
    key = text.strip().lower()
    if key in NAMED_SIZES:
        return NAMED_SIZES[key]
    width, sep, height = key.partition("x")
    if not sep or not width.isascii() or not height.isascii() or not width.isdigit() or not height.isdigit():
        raise UsageError(f"{label} {text!r} is not valid; use WIDTHxHEIGHT (e.g. 1920x1080), hd or 4k")
    size = check_resolution(int(width), int(height), label, multiple)
    if min(size) < minimum:
        raise UsageError(f"{label} {text!r} is not valid; width and height must be at least {minimum}")
    return size


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


def preset_for(resolution: tuple[int, int] | None) -> tuple[float, int]:
    """``(backbone_scale, refine_sample_pixels)`` for a target ``(width, height)``; HD when unknown."""
    return auto_backbone_scale(*(resolution or (1920, 1080)))


def _check_choice(name: str, value: Any, valid: tuple[Any, ...]) -> None:
    if value not in valid:
        raise UsageError(f"{name}={value!r} is not valid; valid: {', '.join(map(str, valid))}")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the PyTorch reference of an exported model.

    ``seed`` names the synthetic weights (see :mod:`model.synthetic`) when
    ``checkpoint_sha256`` is None; with a checkpoint the seed is ignored.

    Four settings may be left None, decided where the information exists (:meth:`resolved`):
    ``backbone_scale`` and ``refine_sample_pixels`` from the target resolution (the
    original's presets: up to HD 0.25 / 80,000, above 0.125 / 320,000; HD when no
    resolution is known), the crop/replace methods from the export format (ONNX
    roi_align + scatter_element, TorchScript and eager unfold + scatter_nd; see
    ``exporters.config.PATCH_METHODS``). Exported files always record resolved values.
    """

    model_type: str = "refine"
    backbone: str = "mobilenetv2"
    backbone_scale: float | None = None
    refine_mode: str = "sampling"
    refine_sample_pixels: int | None = None
    refine_threshold: float = 0.1
    refine_kernel_size: int = 3
    refine_prevent_oversampling: bool = True
    refine_patch_crop_method: str | None = None
    refine_patch_replace_method: str | None = None
    seed: int | None = 0
    checkpoint_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        _check_choice("model_type", self.model_type, MODEL_TYPES)
        _check_choice("backbone", self.backbone, BACKBONES)
        # Unset (auto) settings are checked as the values they resolve to by default.
        scale, pixels = preset_for(None)
        problem = refine_settings_error(
            scale if self.backbone_scale is None else self.backbone_scale,
            self.refine_mode,
            pixels if self.refine_sample_pixels is None else self.refine_sample_pixels,
            self.refine_threshold,
            self.refine_kernel_size,
            self.refine_patch_crop_method or DEFAULT_CROP_METHOD,
            self.refine_patch_replace_method or DEFAULT_REPLACE_METHOD,
        )
        if problem:
            raise UsageError(problem)
        if self.seed is None and self.checkpoint_sha256 is None:
            raise UsageError("a model needs either a checkpoint or a synthetic-weights seed; got neither")

    @property
    def is_synthetic(self) -> bool:
        return self.checkpoint_sha256 is None

    @property
    def is_resolved(self) -> bool:
        """True when no setting is left to :meth:`resolved`."""
        return None not in (self.backbone_scale, self.refine_sample_pixels, self.refine_patch_crop_method,
                            self.refine_patch_replace_method)

    def resolved(
        self,
        resolution: tuple[int, int] | None = None,
        patch_methods: tuple[str, str] = (DEFAULT_CROP_METHOD, DEFAULT_REPLACE_METHOD),
    ) -> ModelConfig:
        """This config with every unset setting decided: scale and sample pixels from the
        target ``(width, height)`` (HD when None), crop/replace from ``patch_methods``
        (default: the reference model's own, unfold + scatter_nd). Set values are kept."""
        scale, pixels = preset_for(resolution)
        crop, replace = patch_methods
        return self.replace(
            backbone_scale=scale if self.backbone_scale is None else self.backbone_scale,
            refine_sample_pixels=pixels if self.refine_sample_pixels is None else self.refine_sample_pixels,
            refine_patch_crop_method=self.refine_patch_crop_method or crop,
            refine_patch_replace_method=self.refine_patch_replace_method or replace,
        )

    def resolved_from(self, module: Any) -> ModelConfig:
        """This config with unset settings read from a built model (its attributes: what it
        really runs), so a file's metadata describes the model it was made from."""
        scale, pixels = preset_for(None)
        return self.replace(
            backbone_scale=self.backbone_scale if self.backbone_scale is not None else getattr(module, "backbone_scale", scale),
            refine_sample_pixels=self.refine_sample_pixels if self.refine_sample_pixels is not None
            else getattr(module, "refine_sample_pixels", pixels),
            refine_patch_crop_method=self.refine_patch_crop_method
            or getattr(module, "refine_patch_crop_method", DEFAULT_CROP_METHOD),
            refine_patch_replace_method=self.refine_patch_replace_method
            or getattr(module, "refine_patch_replace_method", DEFAULT_REPLACE_METHOD),
        )

    @property
    def weights_label(self) -> str:
        """Human-readable origin of the weights."""
        if self.checkpoint_sha256 is None:
            return f"synthetic (seed {self.seed})"
        if self.checkpoint_sha256 == DEMO_SHA256:
            return "demo weights (trained on synthetic composites, not the official weights)"
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
