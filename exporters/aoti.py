"""``pt2_from_torch``: an AOTInductor package (``.pt2``) for C++ servers and Python alike.

The reference model under the static-shape refiner (:mod:`exporters.static_refiner`) is
captured by ``torch.export`` and compiled ahead of time by ``torch._inductor``'s
``aoti_compile_and_package`` into a shared library plus its weights, packed in one zip
(``.pt2``). It runs without Python through libtorch's ``AOTIModelPackageLoader`` (C++) or
``torch._inductor.aoti_load_package`` (Python), on the CPU it was compiled on or one with
the same instruction sets (the package records them: ``AOTI_CPU_ISA``).

Batch, height and width are dynamic by default (height and width multiples of 4, 64 to
4320 px; batch 1 to 64); ``RecipeConfig.options["dynamic"] = False`` fixes them at the
export resolution (compiles ~3x faster). The bgm-deploy metadata is embedded through
Inductor's ``aot_inductor.metadata`` (the package's ``*wrapper_metadata.json``, key
``bgm_deploy``), readable without torch.

Needs torch only (2.15.0 tested) and a C++ compiler at export time (``g++``).
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
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
    recipe_metadata,
    rewrites_on,
)

if TYPE_CHECKING:
    from torch import nn

FORMAT = "aoti"
SUFFIX = ".pt2"
METADATA_KEY = "bgm_deploy"
# The ported speed rewrites (exporters/static_rewrites.py) by default: not measured for this target.
REWRITES = False
OPTIONS = StaticOptions(index_dtype="int64")


def compiler_missing() -> str | None:
    """AOTInductor compiles C++ at export time: why it cannot here, or None."""
    compiler = os.environ.get("CXX") or "g++"
    if shutil.which(compiler) is None:
        return f"AOTInductor needs a C++ compiler at export time and {compiler!r} is not on PATH (apt-get install g++)"
    return None


def pt2_from_torch(model: nn.Module, model_config: ModelConfig, config: RecipeConfig, output: Path,
                   progress: Progress) -> ExportResult:
    """Compiles ``model`` into an AOTInductor package.

    Args:
        model: the eval-mode reference (restored afterwards).
        model_config: what it was built from (embedded as metadata).
        config: the export resolution (the example size; the fixed size with
            ``options["dynamic"] = False``), batch and outputs.
        output: the ``.pt2`` file, written atomically.
        progress: called with one line per stage.

    Raises:
        UsageError: a setting this target cannot export (thresholding, fp16, ...).
        ExportError: torch.export or the compilation failed.
    """
    import torch

    from . import static_export  # deferred: torch; this module is read by --help for --format

    names = check_recipe_request(FORMAT, model_config, config)
    patches = static_export.target_patches(model, OPTIONS, rewrites_on(config, REWRITES))
    dynamic = bool(config.options.get("dynamic", True))
    width, height = config.resolution
    metadata = recipe_metadata(model_config, FORMAT, config, names, OPTIONS, dynamic, extra={"rewrites": rewrites_on(config, REWRITES), "compiled_for": "cpu"})
    seconds: dict[str, float] = {}
    sizes = "dynamic batch/height/width" if dynamic else f"fixed {width}x{height}, batch {config.batch}"
    with stage(progress, "export", f"torch.export, {sizes} (static-K refiner)") as timing:
        try:
            program = static_export.program_from_torch(model, model_config, config, names, patches, dynamic)
        except Exception as exc:  # noqa: BLE001 - torch.export raises many unrelated types; re-raised as one
            raise ExportError(f"torch.export failed for --format {FORMAT}: {type(exc).__name__}: {error_line(exc)}") from exc
    seconds["export"] = timing["seconds"]
    temp = new_temp_file(output, SUFFIX)
    try:
        with stage(progress, "compile", "aoti_compile_and_package (C++ build; 1-4 min)") as timing:
            try:
                torch._inductor.aoti_compile_and_package(
                    program, package_path=str(temp),
                    inductor_configs={"aot_inductor.metadata": {METADATA_KEY: metadata.to_json()}})
            except Exception as exc:  # noqa: BLE001 - Inductor raises many unrelated types; re-raised as one
                raise ExportError(f"AOTInductor compilation failed: {type(exc).__name__}: {error_line(exc)}") from exc
        seconds["compile"] = timing["seconds"]
        os.replace(temp, output)
    finally:
        if temp.exists():
            temp.unlink()
    size = output.stat().st_size
    progress(f"wrote {output} ({size / 1e6:.1f} MB)")
    return ExportResult(path=output, size_bytes=size, metadata=metadata, seconds=seconds)


def read_pt2_metadata(path: Path) -> ExportMetadata:
    """The metadata in an AOTInductor package (read from the zip; no torch needed)."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = [name for name in archive.namelist() if name.endswith("wrapper_metadata.json")]
            stored = json.loads(archive.read(entries[0])) if entries else {}
    except (zipfile.BadZipFile, OSError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: not a readable AOTInductor package ({exc})") from None
    if METADATA_KEY not in stored:
        raise ModelFileError(f"{path}: has no bgm-deploy metadata (not exported by bgm-deploy) and no sidecar "
                             f"{sidecar_config_path(path).name}; re-export it with bgm-deploy export --format {FORMAT}")
    return ExportMetadata.from_json(stored[METADATA_KEY], str(path))


register_format(FileFormat(FORMAT, (SUFFIX,), read_pt2_metadata))
register_recipe(Recipe(
    FORMAT, SUFFIX, "AOTInductor package (.pt2: compiled C++ for libtorch servers); dynamic batch and size",
    pt2_from_torch, patch_methods=("gather", "scatter_element"), unavailable=compiler_missing, fixed_size=False,
    install="apt-get install g++ (torch compiles the model at export time)",
))
