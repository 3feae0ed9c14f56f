"""The rules the torch.export-based recipes (ExecuTorch, AOTInductor, LiteRT, Core ML) share:
what they can export (refusals), the static refiner's per-target options, the input size and
metadata of their files. Torch-free, so the recipe modules that import it stay light (the CLI
reads them for ``--help``); the torch.export step itself is :mod:`exporters.static_export`.

Every one of these targets starts from a ``torch.export`` program of the reference model
under the static-shape refiner (:mod:`exporters.static_refiner`): the data-dependent
``nonzero`` of the reference refiner is what each of them rejects. The input size is fixed
at export (``--resolution``, batch ``RecipeConfig.batch``) unless the recipe asks for
dynamic batch/height/width (AOTInductor). The size is recorded in the metadata
(``export["input_shape"]``), and a runner given another size refuses it with
:func:`exporters.metadata.size_refusal`, which names the fix.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from model.config import ModelConfig, check_resolution
from model.errors import UsageError
from model.spec import INPUT_NAMES

from .config import output_names
from .metadata import BGM_DEPLOY_VERSION, ExportMetadata

if TYPE_CHECKING:
    import torch

    from .recipes import RecipeConfig

STATIC_REFINER = "static-k"
# Symbolic sizes of a dynamic export: H and W are multiples of 4 (the refiner's grid).
DYNAMIC_BATCH_MAX = 64
DYNAMIC_QUARTER_RANGE = (16, 1080)  # H/4 and W/4: 64 .. 4320 pixels
MIN_SIDE = 64


INDEX_DTYPES = ("int64", "int32")
STATIC_MODES = ("sampling", "full")
THRESHOLDING_REFUSAL = (
    "refine mode 'thresholding' selects a data-dependent number of patches, which static-shape targets "
    "cannot represent (budgeting every cell would cost ~9x full mode); export with --refine-mode sampling "
    "(a fixed --refine-sample-pixels budget) or --refine-mode full"
)


@dataclass(frozen=True)
class StaticOptions:
    """How the static refiner writes its index arithmetic for one target.

    Attributes:
        index_dtype: ``int64`` (ExecuTorch, AOTInductor) or ``int32`` (LiteRT, Core ML).
    """

    index_dtype: str = "int64"

    def __post_init__(self) -> None:
        if self.index_dtype not in INDEX_DTYPES:
            raise UsageError(f"index_dtype={self.index_dtype!r} is not valid; valid: {', '.join(INDEX_DTYPES)}")

    @property
    def torch_index_dtype(self) -> torch.dtype:
        import torch

        return torch.int32 if self.index_dtype == "int32" else torch.int64


def check_static_mode(mode: str) -> None:
    """Raises :class:`UsageError` when ``mode`` cannot be exported with static shapes."""
    if mode == "thresholding":
        raise UsageError(THRESHOLDING_REFUSAL)
    if mode not in STATIC_MODES:
        raise UsageError(f"refine mode {mode!r} is not valid for a static-shape export; valid: {', '.join(STATIC_MODES)}")


def check_recipe_request(fmt: str, model_config: ModelConfig, config: RecipeConfig) -> tuple[str, ...]:
    """Checks what a torch.export-based recipe can export before the model is built.

    Returns:
        the output names the file will have.

    Raises:
        UsageError: thresholding (see :data:`THRESHOLDING_REFUSAL`),
            fp16, a resolution not divisible by 4, a bad batch or unknown outputs.
    """
    if model_config.model_type == "refine":
        check_static_mode(model_config.refine_mode)
    if config.precision != "fp32":
        raise UsageError(f"--precision {config.precision} is not supported for --format {fmt}; use fp32 (the default)")
    width, height = config.resolution
    check_resolution(width, height, "--resolution")
    if min(width, height) < MIN_SIDE:
        raise UsageError(f"--resolution {width}x{height} is too small for --format {fmt}; each side must be >= {MIN_SIDE}")
    if config.batch < 1:
        raise UsageError(f"batch={config.batch} is not valid; it must be >= 1")
    every = output_names(model_config.model_type)
    names = config.outputs or every
    unknown = [name for name in names if name not in every]
    if unknown:
        raise UsageError(f"outputs={','.join(names)} is not valid: unknown {', '.join(unknown)}; valid: {', '.join(every)}")
    return tuple(names)


def recipe_metadata(model_config: ModelConfig, fmt: str, config: RecipeConfig, names: tuple[str, ...],
                    options: StaticOptions, dynamic: bool, extra: dict[str, Any]) -> ExportMetadata:
    """The metadata of a torch.export-based file: the I/O, the input size (fixed or
    dynamic), the static refiner's settings and the versions that made it."""
    import torch

    width, height = config.resolution
    if dynamic:
        shape: list[Any] = ["batch", 3, "height", "width"]
    else:
        shape = [config.batch, 3, height, width]
    export = {
        "precision": "fp32",
        "io_dtype": "float32",
        "inputs": list(INPUT_NAMES),
        "outputs": list(names),
        "input_shape": shape,
        "export_resolution": [width, height],
        "refiner": STATIC_REFINER if model_config.model_type == "refine" else None,
        "index_dtype": options.index_dtype,
        "torch_version": torch.__version__,
        "bgm_deploy_version": BGM_DEPLOY_VERSION,
        **extra,
    }
    return ExportMetadata(model_config, fmt, export)


def rewrites_on(config: RecipeConfig, default: bool) -> bool:
    """Whether an export applies the ported speed rewrites (``options["rewrites"]``, else the
    recipe's ``default``: on where they were measured faster, benchmarks/results/targets_speed.json)."""
    return bool(config.options.get("rewrites", default))


def error_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (converters raise multi-line traces)."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


def package_version(name: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
