"""Runners: one per backend behind :class:`runtimes.base.BaseRunner`; see ``create_runner``."""

from __future__ import annotations

from .base import BaseRunner, TensorMeta
from .registry import create_runner, register_runner, runner_class, runner_names

__all__ = ["BaseRunner", "TensorMeta", "create_runner", "register_runner", "runner_class", "runner_names"]
