"""The exception hierarchy of bgm-deploy, re-exported for API users (defined in
:mod:`model.errors`, the lowest layer, so every layer raises the same classes)."""

from __future__ import annotations

from model.errors import (
    BgmDeployError,
    CheckpointError,
    ExportError,
    ImageError,
    MissingExtraError,
    ModelFileError,
    RunnerError,
    RuntimeUnavailableError,
    ServeError,
    UsageError,
    VideoError,
)

__all__ = [
    "BgmDeployError",
    "CheckpointError",
    "ExportError",
    "ImageError",
    "MissingExtraError",
    "ModelFileError",
    "RunnerError",
    "RuntimeUnavailableError",
    "ServeError",
    "UsageError",
    "VideoError",
]
