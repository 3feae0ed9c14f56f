"""Every export recipe, registered: import ``recipes``/``get_recipe`` from here.

:mod:`exporters.recipes` is the registry; the recipe modules register themselves when
imported, and this module imports them all (keep each import-light: the CLI lists the
formats for ``--help``). A new format is one recipe module plus one line here.
"""

from __future__ import annotations

from . import (
    aoti,  # noqa: F401  - AOTInductor .pt2
    coreml,  # noqa: F401  - Core ML .mlpackage
    executorch,  # noqa: F401  - ExecuTorch .pte (XNNPACK)
    litert,  # noqa: F401  - LiteRT .tflite
)
from .recipes import ORIGINAL_RECIPE, Recipe, RecipeConfig, get_recipe, recipes

__all__ = ["ORIGINAL_RECIPE", "Recipe", "RecipeConfig", "get_recipe", "recipes"]
