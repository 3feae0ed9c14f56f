"""The model configuration, re-exported for API users (defined in :mod:`model.config`)."""

from __future__ import annotations

from model.config import (
    HD_PRESET,
    UHD_PRESET,
    ModelConfig,
    auto_backbone_scale,
    check_backbone_scale_for,
    check_resolution,
    sample_pixels_note,
)

__all__ = [
    "HD_PRESET",
    "UHD_PRESET",
    "ModelConfig",
    "auto_backbone_scale",
    "check_backbone_scale_for",
    "check_resolution",
    "sample_pixels_note",
]
