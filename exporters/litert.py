"""``tflite_from_torch``: a LiteRT flatbuffer (``.tflite``), run with the XNNPACK delegate.

The reference model under the static-shape refiner (:mod:`exporters.static_refiner`, with
int32 top-k indices: LiteRT's converter rejects the int64 ones in a ``stablehlo.concatenate``)
is converted by ``litert_torch.convert`` (torch.export → StableHLO → TFLite). The input
size is fixed at export. LiteRT files carry no bgm-deploy metadata of their own here: the
sidecar ``<file>.bgm.json`` holds it (keep it next to the file).

Converting needs litert-torch 0.10.0, installed without its declared dependencies (it
declares ``torch<2.15`` but converts this model with torch 2.15.0; see
requirements-litert.txt and README "LiteRT"); running needs only ``ai-edge-litert``
(``pip install "bgm-deploy[litert]"``, torch-free).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from model.config import ModelConfig
from model.errors import ExportError, ModelFileError

from .atomic import new_temp_file
from .metadata import ExportMetadata, FileFormat, register_format, sidecar_config_path
from .progress import stage
from .recipes import ExportResult, Progress, Recipe, RecipeConfig, register_recipe
from .torch_program import (
    StaticOptions,
    check_recipe_request,
    error_line,
    package_version,
    recipe_metadata,
    rewrites_on,
)

if TYPE_CHECKING:
    from torch import nn

FORMAT = "litert"
SUFFIX = ".tflite"
INSTALL = "pip install --no-deps -r requirements-litert.txt (litert-torch; README \"LiteRT\")"
# The ported speed rewrites (exporters/static_rewrites.py) by default: measured faster here (benchmarks/results/targets_speed.json).
REWRITES = True
OPTIONS = StaticOptions(index_dtype="int32")


def converter_missing() -> str | None:
    """Why litert-torch cannot convert here, or None."""
    import importlib.util

    if importlib.util.find_spec("litert_torch") is None:
        return f"litert-torch is not installed ({INSTALL})"
    return None


def tflite_from_torch(model: nn.Module, model_config: ModelConfig, config: RecipeConfig, output: Path,
                      progress: Progress) -> ExportResult:
    """Converts ``model`` to a LiteRT ``.tflite`` file of a fixed input size.

    Args:
        model: the eval-mode reference (restored afterwards).
        model_config: what it was built from (written to the sidecar by the caller).
        config: the fixed input size (``resolution``, ``batch``) and outputs.
        output: the ``.tflite`` file, written atomically.
        progress: called with one line per stage.

    Raises:
        UsageError: a setting this target cannot export (thresholding, fp16, ...).
        ExportError: the conversion failed.
    """
    import os

    import litert_torch
    import torch

    from . import static_export  # deferred: torch; this module is read by --help for --format

    names = check_recipe_request(FORMAT, model_config, config)
    width, height = config.resolution
    metadata = recipe_metadata(model_config, FORMAT, config, names, OPTIONS, dynamic=False, extra={"rewrites": rewrites_on(config, REWRITES), 
        "litert_torch_version": package_version("litert-torch"), "delegate": "xnnpack"})
    seconds: dict[str, float] = {}
    module = static_export.select_outputs(model, names, model_config.model_type)
    temp = new_temp_file(output, SUFFIX)
    try:
        with stage(progress, "convert", f"litert_torch.convert at {width}x{height}, batch {config.batch} "
                                        "(static-K refiner, int32 indices; 30-120 s)") as timing:
            try:
                with static_export.ModelPatcher(model, static_export.target_patches(model, OPTIONS, rewrites_on(config, REWRITES))), torch.no_grad():
                    converted = litert_torch.convert(module, static_export.example_inputs(config))
                converted.export(str(temp))
            except Exception as exc:  # noqa: BLE001 - the converter raises many unrelated types; re-raised as one
                raise ExportError(f"LiteRT conversion failed: {type(exc).__name__}: {error_line(exc)}") from exc
        seconds["convert"] = timing["seconds"]
        start = time.perf_counter()
        os.replace(temp, output)
        seconds["write"] = time.perf_counter() - start
    finally:
        if temp.exists():
            temp.unlink()
    size = output.stat().st_size
    progress(f"wrote {output} ({size / 1e6:.1f} MB)")
    return ExportResult(path=output, size_bytes=size, metadata=metadata, seconds=seconds)


def read_tflite_metadata(path: Path) -> ExportMetadata:
    """LiteRT files keep their bgm-deploy metadata in the sidecar only: always falls back to it."""
    raise ModelFileError(f"{path}: has no bgm-deploy metadata inside (LiteRT files keep it in the sidecar) and no "
                         f"sidecar {sidecar_config_path(path).name}; copy it next to the file or pass --config FILE")


register_format(FileFormat(FORMAT, (SUFFIX,), read_tflite_metadata))
register_recipe(Recipe(
    FORMAT, SUFFIX, "LiteRT (TFLite) flatbuffer run with XNNPACK (Android, embedded Linux); fixed input size",
    tflite_from_torch, patch_methods=("gather", "scatter_element"), unavailable=converter_missing, fixed_size=True,
    install=INSTALL,
))
