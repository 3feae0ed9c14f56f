"""Small files of the torch.export-based targets (ExecuTorch, AOTInductor, LiteRT, Core ML),
made once per test session with ``bgm_deploy.export.export`` (so the tests exercise the files
users get: metadata embedded or in the sidecar, the export re-check run).

The contract test feeds batch 2 at 128x96; the files take that shape (AOTInductor: fixed
too, which compiles ~3x faster than its dynamic default; a dynamic export is a slow test).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from bgm_deploy.export import export  # registers every recipe (it imports them all)
from exporters.recipes import RecipeConfig, get_recipe
from model.config import ModelConfig

RESOLUTION = (128, 96)
BATCH = 2
# Sampling, with prevent-oversampling, a budget below the 24x32 grid; gather + scatter_element
# (the recipes' default patch methods).
TARGET_CONFIG = ModelConfig(backbone="mobilenetv2", backbone_scale=0.25, refine_mode="sampling",
                            refine_sample_pixels=4096, seed=0)
# What a format needs to be exported here, and why a test skips without it.
NEEDS = {
    "executorch": ("executorch", 'pip install "bgm-deploy[executorch]"'),
    "aoti": ("torch", "torch"),
    "litert": ("litert_torch", "pip install --no-deps -r requirements-litert.txt"),
    "coreml": ("coremltools", 'pip install "bgm-deploy[coreml]"'),
}
_CACHE: dict[str, Path] = {}


def target_file(fmt: str, root: Path) -> Path:
    """The ``fmt`` test file under ``root`` (exported on first use; skips when the format's
    package is not installed)."""
    module, install = NEEDS[fmt]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"--format {fmt} needs {module} ({install})")
    if fmt not in _CACHE:
        root.mkdir(parents=True, exist_ok=True)
        recipe = get_recipe(fmt)
        assert recipe is not None, fmt
        path = root / f"test_target{recipe.suffix}"
        config = RecipeConfig(resolution=RESOLUTION, batch=BATCH, options={"dynamic": False})
        export(TARGET_CONFIG, path, fmt, resolution=RESOLUTION, recipe_config=config, overwrite=True)
        _CACHE[fmt] = path
    return _CACHE[fmt]
