"""``export``: build the reference model from a :class:`ModelConfig`, export it, re-check it.

Every rule of an export is decided here, so that Python and CLI users get the same file:
the settings a :class:`ModelConfig` leaves unset (backbone scale and sample pixels from the
target resolution, crop/replace methods per format), the trace size, the parity re-checks
(after simplify and after export, through the runners and verify's comparison), the
TensorRT preflight of a ``target="tensorrt"`` export, verification on request, and the JSON
report. ``bgm-deploy export`` only turns options into these arguments.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx as onnx_lib
import torch

from exporters.atomic import atomic_write_text
from exporters.config import DEFAULT_TRACE_RESOLUTION, PATCH_METHODS, OnnxConfig, TorchScriptConfig
from exporters.metadata import file_formats, sidecar_config_path
from exporters.onnx import SimplifyCheck, example_inputs, onnx_from_torch
from exporters.paths import check_input_file, check_output_file
from exporters.preflight import PreflightReport, preflight_onnx
from exporters.registered import Recipe, RecipeConfig, get_recipe, recipes
from exporters.static_export import example_inputs as recipe_inputs
from exporters.tensorrt import EngineConfig, EngineInfo, engine_from_onnx, import_tensorrt, require_gpu
from exporters.torch_program import check_recipe_request
from exporters.torchscript import torchscript_from_torch
from model.checkpoint import build_model, config_for_checkpoint
from model.config import ModelConfig, check_backbone_scale_for, sample_pixels_note
from model.errors import ExportError, MissingExtraError, UsageError
from runtimes import create_runner
from runtimes.targets import LoadRequest, targets_for

from .verify import CaseResult, VerifyConfig, VerifyReport, compare_case, verify

FORMATS = ("onnx", "torchscript")
REPORT_SCHEMA_VERSION = 2
# Re-check at the trace size against eager PyTorch (fp32 only; onnxruntime's CPU fp16
# kernels are not accurate enough for a parity check, see docs/export.md). Looser than the
# test tolerance: this catches a broken graph, `bgm-deploy verify` does the parity claim.
RECHECK_TOLERANCE = 1e-3
# Simplified and unsimplified graphs run the same kernels; a larger gap means onnxsim
# changed the computation.
SIMPLIFY_TOLERANCE = 1e-4

Progress = Callable[[str], None]


@dataclass
class ExportReport:
    """What :func:`export` did, serialisable to JSON (``to_dict``)."""

    path: str
    format: str
    size_bytes: int
    model_config: dict[str, Any]
    export: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    recheck_max_abs_diff: dict[str, float] | None = None
    preflight: PreflightReport | None = None  # target="tensorrt" exports
    verification: VerifyReport | None = None  # when asked for
    sidecar: str | None = None  # <file>.bgm.json: the metadata again, for tools that strip it
    schema_version: int = REPORT_SCHEMA_VERSION

    @property
    def ok(self) -> bool:
        """False when the TensorRT preflight blocks the file or the verification failed."""
        return (self.preflight is None or self.preflight.ok) and (self.verification is None or self.verification.passed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "path": self.path,
            "format": self.format,
            "size_bytes": self.size_bytes,
            "model_config": self.model_config,
            "export": self.export,
            "seconds": self.seconds,
            "warnings": self.warnings,
            "recheck_max_abs_diff": self.recheck_max_abs_diff,
            "preflight": None if self.preflight is None else self.preflight.to_dict(),
            "verification": None if self.verification is None else self.verification.to_dict(),
            "sidecar": self.sidecar,
            "ok": self.ok,
        }


def resolve_export(
    model_config: ModelConfig,
    format: str,  # noqa: A002 - the CLI option's name
    onnx: OnnxConfig | None = None,
    resolution: tuple[int, int] | None = None,
) -> tuple[ModelConfig, OnnxConfig | None]:
    """The model and ONNX settings an export will use: unset model settings from the target
    ``resolution`` (HD when None) and the format's patch methods, the ONNX trace size from
    the config, else the resolution, else ``DEFAULT_TRACE_RESOLUTION``."""
    if format not in FORMATS:
        raise UsageError(f"format={format!r} is not valid; valid: {', '.join(FORMATS)}")
    resolved = model_config.resolved(resolution, PATCH_METHODS[format])
    if format != "onnx":
        return resolved, None
    onnx_config = onnx or OnnxConfig()
    if onnx_config.trace_resolution is None:
        onnx_config = dataclasses.replace(onnx_config, trace_resolution=resolution or DEFAULT_TRACE_RESOLUTION)
    return resolved, onnx_config


def _compare_runners(reference: Any, runner: Any, model_config: ModelConfig, inputs: list[tuple[Any, Any]], name: str,
                     atol: float) -> list[CaseResult]:
    """Each ``(src, bgr)`` of ``inputs`` through both runners (each activated once) and
    verify's comparison."""
    tolerance = VerifyConfig(default_atol=atol)
    cases = []
    with reference, runner:
        for src, bgr in inputs:
            expected = reference.infer({"src": src, "bgr": bgr})
            got = runner.infer({"src": src, "bgr": bgr})
            cases.append(compare_case(name, list(src.shape), expected, got, model_config, "float32", tolerance))
    return cases


def _recheck_onnx(path: Path, model: torch.nn.Module, model_config: ModelConfig, config: OnnxConfig) -> CaseResult:
    """The exported file against the eager model at the trace size (a patch selected
    differently only at a tie is explained, not a failure)."""
    src, bgr = (t.numpy() for t in example_inputs(config, torch.float32, seed=3))
    reference = create_runner("pytorch", module=model, model_type=model_config.model_type)
    runner = create_runner("onnxruntime", path=path, provider="cpu")
    return _compare_runners(reference, runner, model_config, [(src, bgr)], "re-check at the trace size",
                            RECHECK_TOLERANCE)[0]


def _simplify_check(model_config: ModelConfig, config: OnnxConfig) -> SimplifyCheck | None:
    """The simplified graph against the exported one, at the trace size and at a second size
    and batch (shapes stay dynamic), through the runners and verify's comparison."""
    if config.precision != "fp32":
        return None  # onnxruntime's CPU fp16 kernels are too inexact for a parity check
    width, height = config.trace_resolution or DEFAULT_TRACE_RESOLUTION
    sizes = (dataclasses.replace(config, trace_resolution=(width, height)),
             dataclasses.replace(config, trace_batch=2, trace_resolution=(width + 64, height + 32)))
    inputs = [tuple(t.numpy() for t in example_inputs(size, torch.float32, seed)) for seed, size in enumerate(sizes, 1)]

    def check(exported: Any, simplified: Any) -> str | None:
        with tempfile.TemporaryDirectory(prefix="bgm-simplify-") as folder:
            before, after = Path(folder) / "exported.onnx", Path(folder) / "simplified.onnx"
            onnx_lib.save(exported, str(before))
            onnx_lib.save(simplified, str(after))
            try:
                cases = _compare_runners(create_runner("onnxruntime", path=before, provider="cpu"),
                                         create_runner("onnxruntime", path=after, provider="cpu"),
                                         model_config, inputs, "simplify", SIMPLIFY_TOLERANCE)
            except Exception as exc:  # noqa: BLE001 - any failure to run the simplified graph keeps the original
                return f"the simplified model does not run in onnxruntime ({type(exc).__name__})"
        for case in cases:
            if case.verdict == "fail":
                worst = max(o.max_abs for o in case.outputs)
                return f"the simplified model differs by {worst:.3g} from the exported one ({'; '.join(case.notes)})"
        return None

    return check


def export(
    model_config: ModelConfig | None = None,
    output: str | Path = "bgm.onnx",
    format: str = "onnx",  # noqa: A002 - the CLI option's name
    onnx: OnnxConfig | None = None,
    torchscript: TorchScriptConfig | None = None,
    checkpoint: str | Path | None = None,
    progress: Progress | None = None,
    *,
    resolution: tuple[int, int] | None = None,
    verify_after: VerifyConfig | bool = False,
    json_path: str | Path | None = None,
    overwrite: bool = False,
    recipe_config: RecipeConfig | None = None,
) -> ExportReport:
    """Builds the model, exports it to ``output``, re-checks the file and, for a TensorRT
    target, runs the preflight. ``bgm-deploy export`` is this function.

    Args:
        model_config: the model (default ``ModelConfig()``); settings left None are decided
            by :func:`resolve_export`. With ``checkpoint`` its sha256 is recorded.
        output: destination file, written atomically.
        format: ``"onnx"``, ``"torchscript"`` or a registered recipe (``executorch``, ``aoti``,
            ``litert``, ``coreml``: see :func:`_export_with_recipe`).
        onnx: ONNX settings (default :class:`OnnxConfig`).
        torchscript: TorchScript settings (default :class:`TorchScriptConfig`).
        checkpoint: official/compatible checkpoint; None uses synthetic weights from
            ``model_config.seed``.
        progress: called with one line per stage.
        resolution: the target ``(width, height)``: picks unset backbone scale / sample
            pixels (up to HD 0.25 / 80,000, above 0.125 / 320,000) and is the ONNX trace
            size unless ``onnx.trace_resolution`` is set.
        verify_after: run :func:`bgm_deploy.verify.verify` on the file (True: default cases).
        json_path: also write the report there as JSON (atomically).
        overwrite: replace an existing ``output`` (default: refuse, nothing is lost).
        recipe_config: settings of a registered recipe (default: ``resolution``, and the
            precision and outputs of ``torchscript`` if given).

    Returns:
        :class:`ExportReport`; ``report.ok`` is False when the preflight blocks the file or
        the verification failed (the file is kept: it is what was asked for).

    Raises:
        UsageError, CheckpointError, ExportError: see the message.
    """
    say = progress or (lambda _message: None)
    recipe = get_recipe(format)
    if recipe is not None:
        if onnx is not None:
            raise UsageError(f"onnx= applies to format='onnx'; --format {format} takes recipe_config=")
        if recipe_config is not None and resolution is not None \
                and tuple(resolution) != tuple(recipe_config.resolution):  # the model would be set up for another size
            raise UsageError(f"resolution={tuple(resolution)} and recipe_config.resolution="
                             f"{tuple(recipe_config.resolution)} differ; pass the same size")
        settings = recipe_config or RecipeConfig(
            resolution=resolution or DEFAULT_TRACE_RESOLUTION,
            precision=torchscript.precision if torchscript is not None else "fp32",
            outputs=torchscript.outputs if torchscript is not None else None,
        )
        return _export_with_recipe(recipe, model_config or ModelConfig(), Path(output), settings, checkpoint, say,
                                   resolution=resolution, verify_after=verify_after, json_path=json_path,
                                   overwrite=overwrite)
    if format not in FORMATS:
        valid = [*FORMATS, *(r.format for r in recipes())]
        raise UsageError(f"format={format!r} is not valid; valid: {', '.join(valid)}")
    model_config, onnx_config = resolve_export(model_config or ModelConfig(), format, onnx, resolution)
    output = Path(output)
    # Paths first: the output may never be the checkpoint, nor an existing file unasked, and
    # a report that cannot be written must fail before the work, not after it.
    inputs = [("--checkpoint", checkpoint)]
    check_output_file(output, "-o/--output", inputs=inputs, overwrite=overwrite)
    if json_path is not None:
        check_output_file(json_path, "--json", inputs=[*inputs, ("-o/--output", output)])
    if checkpoint is not None:
        model_config = config_for_checkpoint(model_config, checkpoint)
    # Check the export settings before the (slow) model build.
    script_config = torchscript or TorchScriptConfig()
    if onnx_config is not None:
        onnx_config.check_for(model_config.model_type, model_config.refine_patch_crop_method)
        check_backbone_scale_for(model_config.backbone_scale, *onnx_config.trace_resolution)
        if model_config.model_type == "refine" and model_config.refine_mode == "sampling":
            note = sample_pixels_note(model_config.refine_sample_pixels, *onnx_config.trace_resolution)
            if note:
                say(f"warning: {note} (at the trace size --resolution)")
    else:
        script_config.output_names(model_config.model_type)
    if checkpoint is None:
        say(f"WARNING: no checkpoint: exporting SYNTHETIC weights (seed {model_config.seed}); mattes will be "
            "meaningless. Pass --checkpoint pytorch_<backbone>.pth for a real model.")

    start = time.perf_counter()
    say(f"build: {model_config.backbone} {model_config.model_type} from {model_config.weights_label} ...")
    model = build_model(model_config, checkpoint)
    build_seconds = time.perf_counter() - start
    say(f"build: {model_config.backbone} {model_config.model_type}, weights {model_config.weights_label} ({build_seconds:.1f} s)")

    recheck: dict[str, float] | None = None
    if onnx_config is not None:
        result = onnx_from_torch(model, model_config, onnx_config, output, progress, _simplify_check(model_config, onnx_config))
        if onnx_config.precision == "fp32":
            say("re-check: running the file in onnxruntime and the model in PyTorch at the trace size ...")
            case = _recheck_onnx(result.path, model, model_config, onnx_config)
            recheck = {out.name: out.max_abs for out in case.outputs}
            worst = max((out.max_abs for out in case.outputs if out.name != "ref_sm"), default=0.0)
            say(f"re-check: onnxruntime vs PyTorch at the trace size, max abs diff {worst:.2g} ({case.verdict})")
            if case.verdict == "warn":
                result.warnings.append(f"re-check: {case.notes[-1]}")
            elif case.verdict == "fail":
                result.path.unlink()
                raise ExportError(
                    f"the exported model differs from PyTorch at the trace size (max abs diff {worst:.3g}, tolerance "
                    f"{RECHECK_TOLERANCE}; {'; '.join(case.notes) or 'see bgm-deploy verify'}); file removed; "
                    "re-run with --debug and report it"
                )
        else:
            result.warnings.append("fp16 model: parity re-check skipped on CPU (run `bgm-deploy verify` on a GPU)")
    else:
        result = torchscript_from_torch(model, model_config, script_config, output, progress)
    assert result.metadata is not None  # set by both exporters on success
    # The metadata again next to the file: graph tools that rewrite ONNX drop metadata_props
    # (polygraphy surgeon sanitize), and readers fall back to this (exporters.metadata).
    sidecar = sidecar_config_path(result.path)
    atomic_write_text(sidecar, result.metadata.to_json())
    say(f"wrote {sidecar} (the config again, for tools that strip the file's metadata)")
    report = ExportReport(
        path=str(result.path),
        format=format,
        size_bytes=result.size_bytes,
        model_config=model_config.to_dict(),
        export=result.metadata.export,
        seconds={"build": build_seconds, **result.seconds},
        warnings=list(result.warnings),
        recheck_max_abs_diff=recheck,
        sidecar=str(sidecar),
    )
    if onnx_config is not None and onnx_config.target == "tensorrt":
        say("preflight: checking the graph for TensorRT ...")
        report.preflight = preflight_onnx(result.path, target="tensorrt")
    if verify_after:
        say("verify: comparing the file with PyTorch on the default cases ...")
        config = verify_after if isinstance(verify_after, VerifyConfig) else VerifyConfig(checkpoint=checkpoint)
        report.verification = verify(result.path, config, progress=progress)
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(report.to_dict(), indent=2, default=str))
    return report


def _export_with_recipe(
    recipe: Recipe,
    model_config: ModelConfig,
    output: Path,
    config: RecipeConfig,
    checkpoint: str | Path | None,
    say: Progress,
    *,
    resolution: tuple[int, int] | None,
    verify_after: VerifyConfig | bool,
    json_path: str | Path | None,
    overwrite: bool,
) -> ExportReport:
    """:func:`export` for a registered recipe (:mod:`exporters.recipes`): settings resolved,
    paths checked, the model built, the recipe run, the sidecar written, the file re-checked
    against eager PyTorch through the format's first usable target, then verify on request.

    Raises:
        MissingExtraError: the recipe's package is not installed (the message names the extra).
        UsageError: a fixed-size format without ``resolution``, or a path that cannot be written.
        ExportError: the recipe failed, or the file differs from PyTorch (file removed).
    """
    reason = recipe.unavailable()
    if reason is not None:
        raise MissingExtraError(f"--format {recipe.format} cannot export here: {reason}")
    if recipe.fixed_size and resolution is None:
        raise UsageError(f"--format {recipe.format} fixes the input size at export: pass --resolution WxH (the size "
                         "of the images it will run on, e.g. 1920x1080)")
    model_config = model_config.resolved(resolution, recipe.patch_methods)
    inputs = [("--checkpoint", checkpoint)]
    if _is_directory_format(recipe.format):  # a Core ML .mlpackage is a folder
        if output.exists() and not overwrite:
            raise UsageError(f"-o/--output {output} already exists; pass --overwrite to replace it, or choose another path")
        if not output.parent.is_dir():
            raise UsageError(f"-o/--output {output}: directory {output.parent} does not exist; create it first")
    else:
        check_output_file(output, "-o/--output", inputs=inputs, overwrite=overwrite)
    if output.suffix.lower() != recipe.suffix:
        raise UsageError(f"-o/--output {output}: --format {recipe.format} writes {recipe.suffix} files; "
                         f"name it e.g. {output.with_suffix(recipe.suffix).name}")
    if json_path is not None:
        check_output_file(json_path, "--json", inputs=[*inputs, ("-o/--output", output)])
    if checkpoint is not None:
        model_config = config_for_checkpoint(model_config, checkpoint)
    check_backbone_scale_for(model_config.backbone_scale, *config.resolution)
    # Every registered recipe is torch.export-based: its refusals (thresholding, fp16, outputs)
    # are checked here, before the (slow) model build, and again by the recipe itself.
    check_recipe_request(recipe.format, model_config, config)
    if checkpoint is None:
        say(f"WARNING: no checkpoint: exporting SYNTHETIC weights (seed {model_config.seed}); mattes will be "
            "meaningless. Pass --checkpoint pytorch_<backbone>.pth for a real model.")
    start = time.perf_counter()
    model = build_model(model_config, checkpoint)
    build_seconds = time.perf_counter() - start
    say(f"build: {model_config.backbone} {model_config.model_type}, weights {model_config.weights_label} ({build_seconds:.1f} s)")
    result = recipe.export(model, model_config, config, output, say)
    sidecar = sidecar_config_path(result.path)
    atomic_write_text(sidecar, result.metadata.to_json())
    say(f"wrote {sidecar} (the config again, for tools that cannot read the file's own)")
    warnings = list(result.warnings)
    recheck = _recheck_recipe(recipe, result.path, model, model_config, config, say, warnings)
    report = ExportReport(
        path=str(result.path),
        format=recipe.format,
        size_bytes=result.size_bytes,
        model_config=model_config.to_dict(),
        export=result.metadata.export,
        seconds={"build": build_seconds, **result.seconds},
        warnings=warnings,
        recheck_max_abs_diff=recheck,
        sidecar=str(sidecar),
    )
    if verify_after:
        say("verify: comparing the file with PyTorch on the default cases ...")
        verify_config = verify_after if isinstance(verify_after, VerifyConfig) else VerifyConfig(checkpoint=checkpoint)
        report.verification = verify(result.path, verify_config, progress=say)
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(report.to_dict(), indent=2, default=str))
    return report


def _is_directory_format(fmt: str) -> bool:
    return any(f.name == fmt and f.directory for f in file_formats())


def _recheck_recipe(recipe: Recipe, path: Path, model: torch.nn.Module, model_config: ModelConfig, config: RecipeConfig,
                    say: Progress, warnings: list[str]) -> dict[str, float] | None:
    """The file against eager PyTorch at the export size through the first usable target of
    its format; None (and a warning) when no target can run it here (Core ML off macOS)."""
    able = targets_for(recipe.format)
    usable = [t for t in able if t.device == "cpu" and t.why_unusable() is None]
    if not usable:
        reasons = "; ".join(f"{t.name}: {t.why_unusable()}" for t in able) or "no registered target runs it"
        warnings.append(f"re-check skipped: no runner for {recipe.format} files is usable here ({reasons}); "
                        "the file's outputs are unverified")
        say(f"warning: {warnings[-1]}")
        return None
    target = usable[0]
    src, bgr = (t.numpy() for t in recipe_inputs(config, seed=3))
    reference = create_runner("pytorch", module=model, model_type=model_config.model_type)
    runner = create_runner(target.runner, **target.build(LoadRequest(recipe.format, path=path, model_config=model_config)))
    say(f"re-check: running the file on {target.name} and the model in PyTorch at {src.shape[3]}x{src.shape[2]} ...")
    case = _compare_runners(reference, runner, model_config, [(src, bgr)], "re-check at the export size",
                            RECHECK_TOLERANCE)[0]
    worst = max((out.max_abs for out in case.outputs if out.name != "ref_sm"), default=0.0)
    say(f"re-check: {target.name} vs PyTorch, max abs diff {worst:.2g} ({case.verdict})")
    if case.verdict == "warn":
        warnings.append(f"re-check: {case.notes[-1]}")
    elif case.verdict == "fail":
        _remove(path)
        sidecar_config_path(path).unlink(missing_ok=True)  # written before the re-check (runners read it)
        raise ExportError(
            f"the exported {recipe.format} file differs from PyTorch at the export size (max abs diff {worst:.3g}, "
            f"tolerance {RECHECK_TOLERANCE}; {'; '.join(case.notes) or 'see bgm-deploy verify'}); file and sidecar "
            "removed; re-run with --debug and report it"
        )
    return {out.name: out.max_abs for out in case.outputs}


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def export_engine(
    output: str | Path,
    engine: EngineConfig | None = None,
    model_config: ModelConfig | None = None,
    onnx: OnnxConfig | None = None,
    checkpoint: str | Path | None = None,
    from_onnx: str | Path | None = None,
    progress: Progress | None = None,
    *,
    resolution: tuple[int, int] | None = None,
    overwrite: bool = False,
) -> EngineInfo:
    """Builds a TensorRT engine (UNVERIFIED on hardware: no GPU was available in development).

    Either from an existing bgm-deploy ONNX file (``from_onnx``), or by first exporting
    ``model_config`` to a TensorRT-safe ONNX (``target="tensorrt"``) in a temporary folder
    with :func:`export` (the same file ``bgm-deploy export --target tensorrt`` writes).
    TensorRT and a GPU are checked first, so a machine without them fails at once.

    Raises:
        RuntimeUnavailableError: no TensorRT or no GPU here.
    """
    engine = engine or EngineConfig()
    if from_onnx is not None:
        check_input_file(from_onnx, "--from-onnx")
    inputs = [("--checkpoint", checkpoint), ("--from-onnx", from_onnx), ("--timing-cache", engine.timing_cache)]
    check_output_file(output, "-o/--output", inputs=inputs, overwrite=overwrite)
    import_tensorrt()
    require_gpu(engine.device_id)
    if from_onnx is not None:
        return engine_from_onnx(from_onnx, engine, output, progress)
    onnx_config = dataclasses.replace(onnx or OnnxConfig(), target="tensorrt", precision="fp32")
    with tempfile.TemporaryDirectory(prefix="bgm-engine-") as folder:
        source = Path(folder) / "model.onnx"
        export(model_config, source, "onnx", onnx=onnx_config, checkpoint=checkpoint, progress=progress,
               resolution=resolution, overwrite=True)
        return engine_from_onnx(source, engine, output, progress)
