"""``pte_from_torch``: an ExecuTorch program (``.pte``) with the XNNPACK delegate.

The reference model under the static-shape refiner (:mod:`exporters.static_refiner`) is
captured by ``torch.export``, lowered with ``to_edge_transform_and_lower`` and the XNNPACK
partitioner (convolutions, resizes and elementwise ops run in XNNPACK; top-k, gather and
scatter stay on ExecuTorch's portable kernels) and serialised. The input size is fixed at
export: ExecuTorch plans every buffer's memory ahead of time.

The bgm-deploy metadata is embedded as a constant method ``bgm_deploy_json`` (a uint8
tensor of the JSON text), read back with ExecuTorch's runtime; the sidecar
``<file>.bgm.json`` holds the same.

Needs ``pip install "bgm-deploy[executorch]"`` (executorch 1.5.1, tested with torch 2.15.0).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.config import ModelConfig
from model.errors import ExportError, ModelFileError

from .atomic import atomic_write_bytes
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

FORMAT = "executorch"
SUFFIX = ".pte"
METADATA_METHOD = "bgm_deploy_json"
INSTALL = 'pip install "bgm-deploy[executorch]"'
# The ported speed rewrites (exporters/static_rewrites.py) by default: measured faster here (benchmarks/results/targets_speed.json).
REWRITES = True
# int64 top-k indices: an int32 build lowered but failed at run time (error 0x12).
OPTIONS = StaticOptions(index_dtype="int64")


def executorch_missing() -> str | None:
    """Why ExecuTorch cannot be used here, or None."""
    import importlib.util

    if importlib.util.find_spec("executorch") is None:
        return f"executorch is not installed ({INSTALL})"
    return None


def pte_from_torch(model: nn.Module, model_config: ModelConfig, config: RecipeConfig, output: Path,
                   progress: Progress) -> ExportResult:
    """Exports ``model`` to an ExecuTorch ``.pte`` file lowered to XNNPACK.

    Args:
        model: the eval-mode reference (restored afterwards).
        model_config: what it was built from (embedded as metadata).
        config: the fixed input size (``resolution``, ``batch``) and outputs.
        output: the ``.pte`` file, written atomically.
        progress: called with one line per stage.

    Raises:
        UsageError: a setting this target cannot export (thresholding, fp16, ...).
        ExportError: torch.export or the lowering failed.
    """
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from . import static_export  # deferred: torch; this module is read by --help for --format

    names = check_recipe_request(FORMAT, model_config, config)
    patches = static_export.target_patches(model, OPTIONS, rewrites_on(config, REWRITES))
    width, height = config.resolution
    metadata = recipe_metadata(model_config, FORMAT, config, names, OPTIONS, dynamic=False, extra={"rewrites": rewrites_on(config, REWRITES), 
        "executorch_version": package_version("executorch"), "delegate": "xnnpack"})
    seconds: dict[str, float] = {}
    with stage(progress, "export", f"torch.export at {width}x{height}, batch {config.batch} (static-K refiner)") as timing:
        try:
            program = static_export.program_from_torch(model, model_config, config, names, patches)
        except Exception as exc:  # noqa: BLE001 - torch.export raises many unrelated types; re-raised as one
            raise ExportError(f"torch.export failed for --format {FORMAT}: {type(exc).__name__}: {error_line(exc)}") from exc
    seconds["export"] = timing["seconds"]
    text = metadata.to_json()
    with stage(progress, "lower", "to_edge_transform_and_lower with the XNNPACK partitioner (30-120 s)") as timing:
        try:
            constant = {METADATA_METHOD: torch.tensor(list(text.encode()), dtype=torch.uint8)}
            lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()], constant_methods=constant)
            buffer = lowered.to_executorch().buffer
        except Exception as exc:  # noqa: BLE001 - the lowering raises many unrelated types; re-raised as one
            raise ExportError(f"ExecuTorch lowering failed: {type(exc).__name__}: {error_line(exc)}") from exc
    seconds["lower"] = timing["seconds"]
    start = time.perf_counter()
    atomic_write_bytes(output, buffer)
    seconds["write"] = time.perf_counter() - start
    progress(f"wrote {output} ({len(buffer) / 1e6:.1f} MB)")
    return ExportResult(path=output, size_bytes=len(buffer), metadata=metadata, seconds=seconds)


def read_pte_metadata(path: Path) -> ExportMetadata:
    """The metadata embedded in a ``.pte`` (its ``bgm_deploy_json`` method), read with
    ExecuTorch's runtime; without executorch installed, the sidecar is read instead."""
    if executorch_missing() is not None:
        raise ModelFileError(f"{path}: no bgm-deploy metadata readable without executorch ({INSTALL}) and no sidecar "
                             f"{sidecar_config_path(path).name}")
    from executorch.runtime import Runtime

    try:
        program = Runtime.get().load_program(str(path))
    except (RuntimeError, ValueError) as exc:
        raise ModelFileError(f"{path}: not a readable ExecuTorch program ({error_line(exc)})") from None
    if METADATA_METHOD not in program.method_names:
        raise ModelFileError(f"{path}: has no bgm-deploy metadata (no {METADATA_METHOD} method) and no sidecar "
                             f"{sidecar_config_path(path).name}; re-export it with bgm-deploy export --format {FORMAT}")
    method = program.load_method(METADATA_METHOD)
    data: Any = method.execute([])[0]
    return ExportMetadata.from_json(bytes(data.numpy().tolist()).decode(), str(path))


register_format(FileFormat(FORMAT, (SUFFIX,), read_pte_metadata))
register_recipe(Recipe(
    FORMAT, SUFFIX, "ExecuTorch program with the XNNPACK delegate (phones, edge boxes); fixed input size",
    pte_from_torch, patch_methods=("gather", "scatter_element"), unavailable=executorch_missing, fixed_size=True,
    install=INSTALL,
))
