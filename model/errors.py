"""The one exception hierarchy of bgm-deploy.

Every error a user can cause derives from :class:`BgmDeployError`; the CLI turns
these into one readable line and an exit code (``exit_code`` attribute), never a
traceback. Messages name the argument, the value received and what is valid.
"""

from __future__ import annotations


class BgmDeployError(Exception):
    """Root of all bgm-deploy errors. ``exit_code`` is what the CLI exits with."""

    exit_code: int = 1


class UsageError(BgmDeployError, ValueError):
    """An argument or option has a value that cannot work (exit code 2)."""

    exit_code = 2


class CheckpointError(BgmDeployError):
    """A checkpoint file is missing, unreadable, or for another architecture."""

    exit_code = 2


class ExportError(BgmDeployError):
    """Exporting a model failed."""


class RuntimeUnavailableError(BgmDeployError):
    """A requested backend, provider or device is not usable on this machine (exit 2)."""

    exit_code = 2


class RunnerError(BgmDeployError):
    """A runner was used wrongly (bad input names, dtypes, shapes, or not activated)."""

    exit_code = 2


class ModelFileError(BgmDeployError):
    """A model file (ONNX, TorchScript, engine) is missing, corrupt, or lacks metadata."""

    exit_code = 2


class ImageError(BgmDeployError):
    """An image could not be read, decoded or written."""


class ServeError(BgmDeployError):
    """A Triton server or model repository could not be set up, started or reached."""


class MissingExtraError(BgmDeployError):
    """An optional dependency is not installed (exit code 2); the message names the install command."""

    exit_code = 2


class VideoError(BgmDeployError):
    """A video or image sequence could not be opened, decoded or written (exit code 1)."""
