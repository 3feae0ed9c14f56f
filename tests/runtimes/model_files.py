"""Small exported model files for runner, predictor and matte tests.

Made with the project's exporter (``bgm_deploy.export.export``), so the tests exercise the
files users get: embedded bgm-deploy metadata, dynamic batch/height/width.
"""

from __future__ import annotations

from pathlib import Path

from bgm_deploy.export import export
from model.config import ModelConfig

# A small, fast model whose refiner selects some but not all cells at test resolutions.
TEST_CONFIG = ModelConfig(
    backbone="mobilenetv2",
    backbone_scale=0.25,
    refine_mode="sampling",
    refine_sample_pixels=4096,
    refine_patch_crop_method="roi_align",
    refine_patch_replace_method="scatter_element",
    seed=0,
)
BASE_CONFIG = ModelConfig(model_type="base", backbone="mobilenetv2", seed=0)

_KINDS = {
    "onnx": (TEST_CONFIG, "onnx", ".onnx"),
    "torchscript": (TEST_CONFIG, "torchscript", ".pt"),
    "onnx_base": (BASE_CONFIG, "onnx", ".onnx"),
}
_CACHE: dict[str, Path] = {}


def model_file(kind: str, root: Path) -> Path:
    """``onnx``, ``torchscript`` or ``onnx_base`` test model, exported once per test session
    (test modules in different directories share this cache) under pytest's ``root``."""
    if kind not in _CACHE:
        config, fmt, suffix = _KINDS[kind]
        root.mkdir(parents=True, exist_ok=True)
        path = root / f"test_{kind}{suffix}"
        export(config, path, format=fmt, overwrite=True)  # a file of an earlier session is made again
        _CACHE[kind] = path
    return _CACHE[kind]
