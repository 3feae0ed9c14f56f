"""``program_from_torch``: the torch.export step of the ExecuTorch, AOTInductor, LiteRT and
Core ML recipes, under the static-shape refiner (:mod:`exporters.static_refiner`).

Imports torch: the recipe modules defer importing it to their export functions (the CLI reads
them for ``--help``); the torch-free rules they share are :mod:`exporters.torch_program`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.export import Dim

from model.config import ModelConfig

from .config import output_names
from .onnx import OutputSelector
from .patcher import ModelPatcher
from .static_rewrites import target_patches
from .torch_program import DYNAMIC_BATCH_MAX, DYNAMIC_QUARTER_RANGE

if TYPE_CHECKING:
    from .recipes import RecipeConfig

__all__ = ["ModelPatcher", "example_inputs", "program_from_torch", "select_outputs", "target_patches"]


def example_inputs(config: RecipeConfig, seed: int = 0, batch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded ``(src, bgr)`` at the export resolution (``batch`` overrides the config's)."""
    width, height = config.resolution
    generator = torch.Generator().manual_seed(seed)
    shape = (batch or config.batch, 3, height, width)
    return torch.rand(shape, generator=generator), torch.rand(shape, generator=generator)


def select_outputs(model: nn.Module, names: tuple[str, ...], model_type: str) -> nn.Module:
    """The module returning the chosen outputs as a flat tuple (what the converters want)."""
    every = output_names(model_type)
    return OutputSelector(model, tuple(every.index(name) for name in names)).eval()


def program_from_torch(model: nn.Module, model_config: ModelConfig, config: RecipeConfig, names: tuple[str, ...],
                       patches: tuple[Any, ...], dynamic: bool = False) -> Any:
    """``torch.export`` of ``model`` (non-strict) under ``patches`` (the static-shape refiner).

    Args:
        model: the eval-mode reference (restored afterwards).
        model_config: what it was built from.
        config: the export resolution and batch.
        names: the outputs to return, in order.
        patches: the export patches (:func:`exporters.static_rewrites.target_patches`).
        dynamic: batch, height and width symbolic (height and width multiples of 4);
            the example batch is then at least 2 (torch.export specialises sizes 0 and 1).

    Returns:
        the ``torch.export.ExportedProgram``.
    """
    module = select_outputs(model, names, model_config.model_type)
    inputs = example_inputs(config, batch=max(config.batch, 2) if dynamic else None)
    shapes = None
    if dynamic:
        batch = Dim("batch", min=1, max=DYNAMIC_BATCH_MAX)
        height_4 = Dim("height_4", min=DYNAMIC_QUARTER_RANGE[0], max=DYNAMIC_QUARTER_RANGE[1])
        width_4 = Dim("width_4", min=DYNAMIC_QUARTER_RANGE[0], max=DYNAMIC_QUARTER_RANGE[1])
        spec = {0: batch, 2: 4 * height_4, 3: 4 * width_4}
        shapes = (spec, spec)
    with ModelPatcher(model, patches), torch.no_grad():
        return torch.export.export(module, inputs, dynamic_shapes=shapes, strict=False)
