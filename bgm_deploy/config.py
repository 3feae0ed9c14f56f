"""The model configuration, re-exported for API users (defined in :mod:`model.config`)."""

from __future__ import annotations

from model.config import HD_PRESET, UHD_PRESET, ModelConfig, auto_backbone_scale

__all__ = ["HD_PRESET", "UHD_PRESET", "ModelConfig", "auto_backbone_scale"]
