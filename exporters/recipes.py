"""Registered export recipes: one per file format beyond ONNX and TorchScript.

A :class:`Recipe` turns the eval-mode reference model into a file of one format
(``executorch`` → ``.pte``, ``litert`` → ``.tflite``, ...). It is declared in its own
exporter module (``exporters/<format>.py``) next to the file format it writes
(:func:`exporters.metadata.register_format`); ``bgm-deploy export --format`` offers every
registered recipe (import :mod:`exporters.registered`, which imports every recipe module, to
see them all), and :func:`bgm_deploy.export.export` runs any of them the same way:
settings resolved, model built, recipe called, the file re-checked against PyTorch through
the format's runner when one is usable here, the metadata written next to it.

ONNX and TorchScript keep their own richer configs (:mod:`exporters.config`) and are not
in this table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.errors import UsageError

from .metadata import ExportMetadata

if TYPE_CHECKING:
    from torch import nn

    from model.config import ModelConfig

Progress = Callable[[str], None]
# The original project's own ONNX recipe (exporters.original): bench's baseline row.
ORIGINAL_RECIPE = "onnx-original"


@dataclass(frozen=True)
class RecipeConfig:
    """Settings every registered recipe takes.

    Attributes:
        resolution: ``(width, height)`` the file is made for: its fixed input size when the
            recipe has one (:attr:`Recipe.fixed_size`), else the trace size.
        batch: batch size of the example inputs (fixed for fixed-size formats).
        precision: ``fp32`` or ``fp16`` where the recipe supports it.
        outputs: the outputs to keep (None: every output).
        options: recipe-specific settings.
    """

    resolution: tuple[int, int] = (320, 256)
    batch: int = 1
    precision: str = "fp32"
    outputs: tuple[str, ...] | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExportResult:
    """What a recipe produced."""

    path: Path
    size_bytes: int
    metadata: ExportMetadata
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _always_available() -> str | None:
    return None


@dataclass(frozen=True)
class Recipe:
    """One export format.

    Attributes:
        format: what ``--format`` takes; also the file format's registered name.
        suffix: the output's suffix (``.pte``).
        summary: one line for ``--help`` and the docs.
        export: ``export(model, model_config, config, output, progress)`` → ExportResult;
            writes ``output`` atomically (and may leave nothing on failure).
        patch_methods: crop/replace methods the format uses when a config leaves them unset.
        unavailable: why the recipe cannot run here (a missing package), or None.
        fixed_size: the file takes one input size (the export resolution) only.
        install: how to get what it needs (``pip install "bgm-deploy[executorch]"``).
    """

    format: str
    suffix: str
    summary: str
    export: Callable[[nn.Module, ModelConfig, RecipeConfig, Path, Progress], ExportResult]
    patch_methods: tuple[str, str] = ("gather", "scatter_element")
    unavailable: Callable[[], str | None] = _always_available
    fixed_size: bool = True
    install: str = ""


_RECIPES: dict[str, Recipe] = {}


def register_recipe(recipe: Recipe) -> Recipe:
    if recipe.format in _RECIPES:
        raise UsageError(f"export recipe {recipe.format!r} is already registered")
    _RECIPES[recipe.format] = recipe
    return recipe


def recipes() -> list[Recipe]:
    return list(_RECIPES.values())


def get_recipe(fmt: str) -> Recipe | None:
    return _RECIPES.get(fmt)

