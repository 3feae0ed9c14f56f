"""What the runners of torch.export-based files share (ExecuTorch, AOTInductor, LiteRT, Core ML).

Their files carry the bgm-deploy metadata (embedded or in the sidecar), which names the
inputs and outputs and records the input shape fixed at export. :class:`StaticShapeRunner`
refuses an input of another size with a message naming the fix
(:func:`exporters.metadata.size_refusal`) before the runtime sees it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from exporters.metadata import fixed_input_shape, read_metadata, size_refusal
from model.errors import ModelFileError, RunnerError
from model.spec import INPUT_NAMES

from .base import BaseRunner
from .base import to_numpy as base_to_numpy


def to_numpy(value: Any) -> np.ndarray:
    """A contiguous numpy array of a numpy array, a torch tensor (any device) or an array-like."""
    return np.ascontiguousarray(base_to_numpy(value))


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (runtimes raise multi-line C++ traces)."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


def file_io(path: Path, outputs: tuple[str, ...] | None) -> tuple[tuple[str, ...], tuple[str, ...], dict[str, Any]]:
    """Input names, output names and export metadata of a bgm-deploy file (embedded or
    sidecar); ``outputs`` names the outputs of a file without metadata."""
    try:
        export = read_metadata(path).export
    except ModelFileError:
        if outputs is None:
            raise
        return INPUT_NAMES, outputs, {}
    return tuple(export.get("inputs") or INPUT_NAMES), tuple(outputs or export["outputs"]), export


class StaticShapeRunner(BaseRunner):
    """A runner whose file may take one input shape only (recorded at export).

    Subclasses set ``self.path``, ``self.format_label`` and, in ``_activate``,
    ``self.fixed_shape`` (from :func:`file_io`'s metadata).
    """

    format_label = "model"

    def __init__(self) -> None:
        super().__init__()
        self.path = Path()
        self.fixed_shape: tuple[int, int, int, int] | None = None

    def _read_io(self, outputs: tuple[str, ...] | None) -> tuple[tuple[str, ...], tuple[str, ...], dict[str, Any]]:
        inputs, names, export = file_io(self.path, outputs)
        self.fixed_shape = fixed_input_shape(export)
        return inputs, names, export

    def _check_feeds(self, feeds: dict[str, Any]) -> None:
        if self.fixed_shape is not None:
            for key, value in feeds.items():
                shape = tuple(getattr(value, "shape", ()))
                if key in self._inputs and shape != self.fixed_shape:
                    raise RunnerError(size_refusal(self.path, self.format_label, self.fixed_shape, shape))
        super()._check_feeds(feeds)
