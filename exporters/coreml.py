"""``mlpackage_from_torch``: a Core ML ML Program (``.mlpackage``) for iOS and macOS.

The reference model under the static-shape refiner (:mod:`exporters.static_refiner`) is
captured by ``torch.export``, decomposed to core ATen ops and converted by coremltools
(``convert_to="mlprogram"``, float32 compute precision: reduced precision ruins the
refined patches' selection). Inputs and outputs get bgm-deploy's names; the input size is
fixed at export. The bgm-deploy metadata is embedded in the package's
``user_defined_metadata`` (key ``bgm_deploy``).

What is checked here, on Linux: the conversion, and the saved package's spec (its inputs
and outputs: names, float32 multi-arrays, the shapes the metadata records;
:func:`check_mlpackage_spec`). Predictions need macOS (coremltools' Linux wheel has no
``libcoremlpython``): they are **unverified** until ``bgm-deploy verify model.mlpackage`` is
run on a Mac.

Needs ``pip install "bgm-deploy[coreml]"`` (coremltools 9.0, tested with torch 2.15.0; it
warns that the newest torch it was tested with is older).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.config import ModelConfig
from model.errors import ExportError, ModelFileError

from .atomic import replace_folder
from .config import CHANNELS
from .metadata import METADATA_KEY, ExportMetadata, FileFormat, register_format, sidecar_config_path
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

FORMAT = "coreml"
SUFFIX = ".mlpackage"
INSTALL = 'pip install "bgm-deploy[coreml]"'
# The ported speed rewrites (exporters/static_rewrites.py) by default: not measured for this target.
REWRITES = False
OPTIONS = StaticOptions(index_dtype="int32")
# ML Programs with float32 compute need macOS 12 / iOS 15; top-k and scatter along one axis
# are in that opset. The newest target coremltools 9.0 offers is not required.
DEPLOYMENT_TARGET = "iOS16"


def coremltools_missing() -> str | None:
    """Why coremltools cannot convert here, or None."""
    import importlib.util

    if importlib.util.find_spec("coremltools") is None:
        return f"coremltools is not installed ({INSTALL})"
    return None


def mlpackage_from_torch(model: nn.Module, model_config: ModelConfig, config: RecipeConfig, output: Path,
                         progress: Progress) -> ExportResult:
    """Converts ``model`` to a Core ML ``.mlpackage`` of a fixed input size and checks its spec.

    Args:
        model: the eval-mode reference (restored afterwards).
        model_config: what it was built from (embedded as metadata).
        config: the fixed input size (``resolution``, ``batch``) and outputs.
        output: the ``.mlpackage`` folder; replaced only once the new one is complete.
        progress: called with one line per stage.

    Raises:
        UsageError: a setting this target cannot export (thresholding, fp16, ...).
        ExportError: torch.export or the conversion failed, or the saved spec is not as expected.
    """
    import coremltools as ct

    from . import static_export  # deferred: torch; this module is read by --help for --format

    names = check_recipe_request(FORMAT, model_config, config)
    patches = static_export.target_patches(model, OPTIONS, rewrites_on(config, REWRITES))
    width, height = config.resolution
    metadata = recipe_metadata(model_config, FORMAT, config, names, OPTIONS, dynamic=False, extra={"rewrites": rewrites_on(config, REWRITES), 
        "coremltools_version": package_version("coremltools"), "compute_precision": "float32",
        "minimum_deployment_target": DEPLOYMENT_TARGET, "predictions_verified": False})
    seconds: dict[str, float] = {}
    with stage(progress, "export", f"torch.export at {width}x{height}, batch {config.batch} (static-K refiner)") as timing:
        try:
            program = static_export.program_from_torch(model, model_config, config, names, patches).run_decompositions({})
        except Exception as exc:  # noqa: BLE001 - torch.export raises many unrelated types; re-raised as one
            raise ExportError(f"torch.export failed for --format {FORMAT}: {type(exc).__name__}: {error_line(exc)}") from exc
    seconds["export"] = timing["seconds"]
    with stage(progress, "convert", "coremltools.convert to an ML Program, float32 (10-60 s)") as timing:
        try:
            converted = ct.convert(
                program, convert_to="mlprogram", compute_precision=ct.precision.FLOAT32,
                minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET),
                outputs=[ct.TensorType(name=name) for name in names],
            )
        except Exception as exc:  # noqa: BLE001 - the converter raises many unrelated types; re-raised as one
            raise ExportError(f"Core ML conversion failed: {type(exc).__name__}: {error_line(exc)}") from exc
    seconds["convert"] = timing["seconds"]
    converted.user_defined_metadata[METADATA_KEY] = metadata.to_json()
    with tempfile.TemporaryDirectory(prefix=".bgm-coreml-", dir=output.parent) as folder:
        staged = Path(folder) / output.name
        converted.save(str(staged))
        problems = check_mlpackage_spec(staged, metadata)
        if problems:
            raise ExportError(f"the saved Core ML package is not as expected: {'; '.join(problems)}")
        replace_folder(staged, output)  # the old package is kept until the new one is in place
    size = sum(f.stat().st_size for f in output.rglob("*") if f.is_file())
    progress(f"wrote {output} ({size / 1e6:.1f} MB); spec checked; predictions need macOS (unverified here)")
    return ExportResult(path=output, size_bytes=size, metadata=metadata, seconds=seconds,
                        warnings=["Core ML predictions are unverified here (they need macOS): run "
                                  f"'bgm-deploy verify {output.name}' on a Mac"])


def _spec(path: Path) -> Any:
    import coremltools as ct

    try:
        return ct.utils.load_spec(str(path))
    except Exception as exc:  # noqa: BLE001 - coremltools raises bare Exception/protobuf errors for bad packages
        raise ModelFileError(f"{path}: not a readable Core ML package ({error_line(exc)})") from None


def check_mlpackage_spec(path: Path, metadata: ExportMetadata) -> list[str]:
    """What in a package's spec differs from what its metadata promises (empty: all as expected).

    Checks the model kind (ML Program), each input and output: name, order, float32
    multi-array, and the shape (inputs: ``export["input_shape"]``; outputs: the batch and
    the channel count of :data:`exporters.config.CHANNELS`).
    """
    spec = _spec(path)
    problems = []
    if spec.WhichOneof("Type") != "mlProgram":
        problems.append(f"model type is {spec.WhichOneof('Type')}, not mlProgram")
    export = metadata.export
    float32 = 65568  # ArrayFeatureType.FLOAT32
    expected_inputs = [(name, list(export["input_shape"])) for name in export["inputs"]]
    batch = export["input_shape"][0]
    for kind, features, expected in (("input", spec.description.input, expected_inputs),
                                     ("output", spec.description.output,
                                      [(name, [batch, CHANNELS[name]]) for name in export["outputs"]])):
        got = [feature.name for feature in features]
        if got != [name for name, _ in expected]:
            problems.append(f"{kind}s are {got}, expected {[name for name, _ in expected]}")
            continue
        for feature, (name, shape) in zip(features, expected):
            array = feature.type.multiArrayType
            if feature.type.WhichOneof("Type") != "multiArrayType" or array.dataType != float32:
                problems.append(f"{kind} {name} is not a float32 multi-array")
            elif list(array.shape)[: len(shape)] != shape:
                problems.append(f"{kind} {name} has shape {list(array.shape)}, expected {shape} first")
    return problems


def read_mlpackage_metadata(path: Path) -> ExportMetadata:
    """The metadata in a package's ``user_defined_metadata`` (needs coremltools, not macOS)."""
    if coremltools_missing() is not None:
        raise ModelFileError(f"{path}: no bgm-deploy metadata readable without coremltools ({INSTALL}) and no sidecar "
                             f"{sidecar_config_path(path).name}")
    stored = dict(_spec(path).description.metadata.userDefined)
    if METADATA_KEY not in stored:
        raise ModelFileError(f"{path}: has no bgm-deploy metadata (user_defined_metadata {METADATA_KEY!r}) and no "
                             f"sidecar {sidecar_config_path(path).name}; re-export it with bgm-deploy export --format {FORMAT}")
    return ExportMetadata.from_json(stored[METADATA_KEY], str(path))


register_format(FileFormat(FORMAT, (SUFFIX,), read_mlpackage_metadata, directory=True))
register_recipe(Recipe(
    FORMAT, SUFFIX, "Core ML ML Program (iOS/macOS), float32; fixed input size; predictions need macOS",
    mlpackage_from_torch, patch_methods=("gather", "scatter_element"), unavailable=coremltools_missing, fixed_size=True,
    install=INSTALL,
))
