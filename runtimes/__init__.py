"""Runners: one per backend behind :class:`runtimes.base.BaseRunner`; see ``create_runner``."""

from __future__ import annotations

from .base import BaseRunner, TensorMeta
from .registry import create_runner, register_runner, runner_class, runner_names

# Importing a runner module registers it; each imports its heavy library lazily.
from . import onnxruntime, pytorch, torchscript  # noqa: E402,F401  (isort: skip)
from . import tensorrt  # noqa: E402,F401  (isort: skip) - imports tensorrt only when activated
from . import openvino  # noqa: E402,F401  (isort: skip) - imports openvino only when activated
from . import executorch  # noqa: E402,F401  (isort: skip) - imports executorch only when activated
from . import aoti  # noqa: E402,F401  (isort: skip) - imports torch only when activated
from . import litert  # noqa: E402,F401  (isort: skip) - imports ai_edge_litert only when activated
from . import coreml  # noqa: E402,F401  (isort: skip) - imports coremltools only when activated (macOS)

__all__ = ["BaseRunner", "TensorMeta", "create_runner", "register_runner", "runner_class", "runner_names"]
