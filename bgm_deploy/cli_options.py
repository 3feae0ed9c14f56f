"""Option groups the CLI's commands share, built from the registries and ``model.spec``.

* :func:`target_options` — where a model runs: ``--target`` (the registered targets and the
  device words, from :mod:`runtimes.targets`), ``--allow-fallback``, ``--threads`` and every
  target's own options (``--openvino-precision``); ``--provider``/``--runtime`` remain as
  hidden aliases of ``--target`` for scripts written before it.
* :func:`model_options` — which model: ``--model``, ``--checkpoint``, ``--config``,
  ``--seed`` and the refine settings of a checkpoint (``--backbone-scale``, ...).

:func:`spec_from_options` turns the parsed values into one :class:`ModelSpec`, so every
command that loads a model loads it the same way. Torch-free: the registries are tables.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click
from click.shell_completion import CompletionItem

import runtimes  # noqa: F401 - importing the package registers every runner and its targets
from exporters.config import DEFAULT_EXPORTER, EXPORTERS, PRECISIONS, OnnxConfig
from exporters.config import TARGETS as GRAPH_TARGETS
from model.config import ModelConfig
from model.demo import DEMO_WEIGHTS_PATH, demo_available, demo_fits
from model.errors import UsageError
from model.spec import BACKBONES, CROP_METHODS, KERNEL_SIZES, MODEL_TYPES, REFINE_MODES, REPLACE_METHODS
from runtimes.targets import DEVICE_WORDS, all_options, target_choices

if TYPE_CHECKING:
    from .model_spec import ModelSpec

F = Callable[..., Any]


def _apply(func: F, decorators: list[Callable[[F], F]]) -> F:
    """``func`` under ``decorators``, the first one outermost (as if stacked in that order)."""
    for decorate in reversed(decorators):
        func = decorate(func)
    return func


class TargetChoice(click.ParamType):
    """``--target``: a registered target or a device word, checked against the registry when
    parsed (a target registered after the CLI was built, a plug-in's, is valid too)."""

    name = "target"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if value not in target_choices():
            self.fail(f"{value!r} is not one of {', '.join(target_choices())}", param, ctx)
        return str(value)

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
        return [CompletionItem(name) for name in target_choices() if name.startswith(incomplete)]


def _option_param(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def target_options(func: F) -> F:
    """Adds ``--target`` and what goes with it (see the module docstring)."""
    decorators = [
        click.option("--target", type=TargetChoice(), default=None, metavar="TARGET",
                     help="Where the model runs: " + ", ".join(target_choices())
                     + " (a device word picks the file format's default target there) [cpu]."),
        click.option("--allow-fallback/--no-allow-fallback", default=False, show_default=True,
                     help="Run on the CPU (loud warning) when a GPU target is not usable, instead of failing."),
        click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="Intra-op threads of the runtime [its default]."),
        click.option("--provider", type=click.Choice(DEVICE_WORDS), default=None, hidden=True,
                     help="Alias of --target cpu|cuda|tensorrt."),
        click.option("--runtime", type=click.Choice(["onnxruntime", "openvino"]), default=None, hidden=True,
                     help="Alias: --runtime openvino is --target openvino-cpu."),
    ]
    for option in all_options():
        decorators.append(click.option(option.flag, _option_param(option.flag), default=None,
                                       type=click.Choice(option.choices) if option.choices else str,
                                       help=f"{option.help} [{option.default}]."))
    return _apply(func, decorators)


def model_options(func: F) -> F:
    """Adds ``--model`` / ``--checkpoint`` / ``--config`` / ``--seed`` and the refine settings."""
    return _apply(func, [
        click.option("--model", type=click.Path(), default=None,
                     help="Exported model (.onnx, TorchScript .pt, .engine, ...)."),
        click.option("--checkpoint", type=click.Path(), default=None,
                     help="PyTorch checkpoint (pytorch_<backbone>.pth) instead of --model."),
        click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                     help="The --model's metadata JSON (MODEL.bgm.json from export) when a tool stripped the file's own."),
        click.option("--seed", type=click.IntRange(min=0), default=None,
                     help="Synthetic weights of this seed (a pipeline check, not a matte), without --model/--checkpoint."),
        click.option("--backbone", type=click.Choice(BACKBONES), default=None,
                     help="With --checkpoint: expected backbone [read from the checkpoint]."),
        click.option("--backbone-scale", type=float, default=None,
                     help="With --checkpoint: base network scale, 0.01..0.5 [0.25]."),
        click.option("--refine-mode", type=click.Choice(REFINE_MODES), default=None, help="With --checkpoint [sampling]."),
        click.option("--refine-sample-pixels", type=int, default=None,
                     help="With --checkpoint: pixels refined in sampling mode, 16 or more [80000]."),
        click.option("--refine-threshold", type=float, default=None,
                     help="With --checkpoint: error threshold in thresholding mode, 0..1 [0.1]."),
    ])


def target_from_options(values: dict[str, Any]) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
    """Pops the target group's values: ``(target, target option values, generic settings)``
    where the settings are ``allow_fallback`` and ``threads``."""
    target = values.pop("target", None)
    provider = values.pop("provider", None)
    runtime = values.pop("runtime", None)
    if runtime == "openvino":
        if provider not in (None, "cpu"):
            raise UsageError(f"--runtime openvino runs on the CPU; drop --provider {provider}")
        provider = "openvino-cpu"
    if provider is not None:
        if target is not None and target != provider:
            raise UsageError(f"--target {target} and --provider/--runtime ({provider}) disagree; pass --target only")
        target = provider
    options = {}
    for option in all_options():
        value = values.pop(_option_param(option.flag), None)
        if value is not None:
            options[option.name] = value
    settings = {"allow_fallback": values.pop("allow_fallback", False), "threads": values.pop("threads", None)}
    return target, options, settings


def spec_from_options(values: dict[str, Any], padding: str = "replicate") -> ModelSpec:
    """One :class:`ModelSpec` from the values of :func:`model_options` and
    :func:`target_options` (popped from ``values``, so the rest are the command's own)."""
    # deferred: the spec module reads checkpoints (torch), which --help must not load
    from .model_spec import ModelSpec

    target, options, settings = target_from_options(values)
    model_settings = {name: values.pop(name, None) for name in
                      ("backbone", "backbone_scale", "refine_mode", "refine_sample_pixels", "refine_threshold")}
    return ModelSpec(
        model=values.pop("model", None), checkpoint=values.pop("checkpoint", None),
        config_file=values.pop("config_file", None), seed=values.pop("seed", None), settings=model_settings,
        target=target, options=options, padding=padding, **settings,
    )


# -- export ------------------------------------------------------------------------------------
def weights_options(func: F) -> F:
    """The model an export builds: architecture, weights, refine settings."""
    return _apply(func, [
        click.option("--model-type", type=click.Choice(MODEL_TYPES), default="refine", show_default=True),
        click.option("--backbone", type=click.Choice(BACKBONES), default="mobilenetv2", show_default=True),
        click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
                     help="Weights [the bundled demo weights for a mobilenetv2 refine model, else synthetic seed 0]."),
        click.option("--seed", type=click.IntRange(min=0), default=None,
                     help="Synthetic weights of this seed instead of the demo weights (pipeline checks)."),
        click.option("--backbone-scale", default="auto", show_default=True,
                     help="auto (from --resolution: 0.25 up to HD, 0.125 above) or a float in [0.01, 0.5]."),
        click.option("--refine-mode", type=click.Choice(REFINE_MODES), default="sampling", show_default=True),
        click.option("--refine-sample-pixels", type=click.IntRange(min=16), default=None,
                     help="Pixels refined per image [auto: 80000 HD, 320000 4K]."),
        click.option("--refine-threshold", type=click.FloatRange(0, 1), default=0.1, show_default=True),
        click.option("--refine-kernel-size", type=click.Choice([str(k) for k in KERNEL_SIZES]), default="3",
                     show_default=True),
        click.option("--prevent-oversampling/--no-prevent-oversampling", default=True, show_default=True,
                     help="Sampling mode: skip cells with zero error."),
        click.option("--crop-method", type=click.Choice(CROP_METHODS), default=None,
                     help="Patch crop [onnx: roi_align, torchscript: unfold]."),
        click.option("--replace-method", type=click.Choice(REPLACE_METHODS), default=None,
                     help="Patch replace [onnx: scatter_element, torchscript: scatter_nd]."),
    ])


def model_config_from_options(values: dict[str, Any]) -> tuple[ModelConfig, str | None]:
    """Pops :func:`weights_options`: ``(ModelConfig, checkpoint)``. With neither ``--checkpoint``
    nor ``--seed``, a mobilenetv2 refine model gets the bundled demo weights; other
    architectures get synthetic weights of seed 0."""
    seed_given = values.get("seed")
    scale_text = values.pop("backbone_scale")
    scale: float | None = None  # auto: resolved from the target resolution by the export
    if scale_text != "auto":
        try:
            scale = float(scale_text)
        except ValueError:
            raise UsageError(f"--backbone-scale {scale_text!r} is not valid; use auto or a float in [0.01, 0.5]") from None
    config = ModelConfig(
        model_type=values.pop("model_type"), backbone=values.pop("backbone"), backbone_scale=scale,
        refine_mode=values.pop("refine_mode"), refine_sample_pixels=values.pop("refine_sample_pixels"),
        refine_threshold=values.pop("refine_threshold"), refine_kernel_size=int(values.pop("refine_kernel_size")),
        refine_prevent_oversampling=values.pop("prevent_oversampling"),
        refine_patch_crop_method=values.pop("crop_method"), refine_patch_replace_method=values.pop("replace_method"),
        seed=values.pop("seed") or 0,
    )
    checkpoint = values.pop("checkpoint")
    if checkpoint is None and seed_given is None and demo_fits(config) and demo_available():
        checkpoint = str(DEMO_WEIGHTS_PATH)  # the export announces them when it builds the model
    return config, checkpoint


def onnx_export_options(func: F) -> F:
    """How the ONNX graph (and formats built from it) is made."""
    return _apply(func, [
        click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True),
        click.option("--opset", type=click.IntRange(min=7), default=None, help="ONNX opset [legacy 17, dynamo 18]."),
        click.option("--exporter", type=click.Choice(EXPORTERS), default=None,
                     help="ONNX exporter: dynamo (torch.export-based) or legacy (TorchScript-based) [see docs/export.md]."),
        click.option("--simplify/--no-simplify", default=True, show_default=True, help="Run onnxsim (ONNX)."),
        click.option("--outputs", default=None, help="Comma-separated outputs to keep, e.g. pha,fgr [all]."),
        click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Trace batch size (ONNX)."),
        click.option("--target", "graph_target", type=click.Choice(GRAPH_TARGETS), default="generic", show_default=True,
                     help="ONNX: tensorrt applies the TensorRT-safe rewrites."),
    ])


def onnx_config_from_options(values: dict[str, Any]) -> tuple[OnnxConfig, tuple[str, ...] | None]:
    """Pops :func:`onnx_export_options`: ``(OnnxConfig, outputs)``."""
    outputs = values.pop("outputs")
    names = tuple(name.strip() for name in outputs.split(",") if name.strip()) if outputs else None
    config = OnnxConfig(opset=values.pop("opset"), exporter=values.pop("exporter") or DEFAULT_EXPORTER,
                        precision=values.pop("precision"), simplify=values.pop("simplify"), outputs=names,
                        trace_batch=values.pop("batch"), target=values.pop("graph_target"))
    return config, names


def engine_options(func: F) -> F:
    """``--format tensorrt``: the engine build."""
    return _apply(func, [
        click.option("--from-onnx", type=click.Path(dir_okay=False), default=None,
                     help="--format tensorrt: build the engine from this bgm-deploy ONNX file instead of exporting one."),
        click.option("--engine-preset", type=click.Choice(["hd", "4k"]), default=None,
                     help="--format tensorrt: optimisation profile preset [from the backbone scale]."),
        click.option("--workspace-mib", type=click.IntRange(min=16), default=4096, show_default=True,
                     help="--format tensorrt: builder workspace limit."),
        click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
                     help="--format tensorrt: timing cache file (read and updated)."),
    ])


def triton_options(func: F) -> F:
    """``--format triton``: the model repository."""
    return _apply(func, [
        click.option("--triton-backend", type=click.Choice(["onnxruntime", "python"]), default="onnxruntime",
                     show_default=True,
                     help="--format triton: Triton's onnxruntime backend, or the Python backend running the predictor."),
        click.option("--triton-name", default="bgm", show_default=True, help="--format triton: model name (its folder)."),
        click.option("--max-batch-size", type=click.IntRange(1, 64), default=4, show_default=True, help="--format triton."),
        click.option("--queue-delay-us", type=click.IntRange(min=0), default=2000, show_default=True,
                     help="--format triton: dynamic batching queue delay."),
        click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True, help="--format triton."),
        click.option("--triton-device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
                     help="--format triton: instance kind."),
        click.option("--trt-accelerator/--no-trt-accelerator", default=False, show_default=True,
                     help="--format triton (onnxruntime, gpu): onnxruntime's TensorRT accelerator on the TensorRT-safe graph."),
        click.option("--trt-fp16/--no-trt-fp16", default=True, show_default=True, help="With --trt-accelerator: FP16 engines."),
        click.option("--k8s", "k8s_dir", type=click.Path(file_okay=False), default=None,
                     help="--format triton: also write Kubernetes manifests (Deployment, Service, HPA, KServe "
                          "InferenceService) into this folder; needs --model-uri (docs/scale.md)."),
        click.option("--model-uri", default=None,
                     help="With --k8s: where the repository will live: pvc://CLAIM/PATH, s3://BUCKET/PATH or gs://..."),
        click.option("--triton-image", default="nvcr.io/nvidia/tritonserver", show_default=True, help="With --k8s."),
        click.option("--triton-version", default="24.10-py3", show_default=True, help="With --k8s: the image tag."),
        click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True,
                     help="With --k8s: pods at least (the autoscaler's minimum)."),
        click.option("--max-replicas", type=click.IntRange(min=1), default=4, show_default=True,
                     help="With --k8s: the autoscaler's maximum."),
        click.option("--k8s-cpu", default="2", show_default=True, help="With --k8s: CPU request per pod."),
        click.option("--k8s-memory", default="4Gi", show_default=True, help="With --k8s: memory request per pod."),
    ])


def kubernetes_from_options(values: dict[str, Any], name: str) -> tuple[Any, str | None]:
    """Pops the ``--k8s`` options of :func:`triton_options`: ``(KubernetesOptions or None, folder)``.

    Raises:
        UsageError: --model-uri without --k8s, or --k8s without --model-uri (the other --k8s
            options have defaults, so they cannot be told from unset ones).
    """
    # deferred: the serve package loads torch (the predictor), which --help must not load
    from .serve.kubernetes import KubernetesOptions

    folder, uri = values.pop("k8s_dir", None), values.pop("model_uri", None)
    settings = {"image": values.pop("triton_image"), "version": values.pop("triton_version"),
                "replicas": values.pop("replicas"), "max_replicas": values.pop("max_replicas"),
                "cpu": values.pop("k8s_cpu"), "memory": values.pop("k8s_memory")}
    if folder is None:
        if uri is not None:
            raise UsageError("--model-uri applies with --k8s DIR (the manifests); add --k8s or drop it")
        return None, None
    if uri is None:
        raise UsageError("--k8s needs --model-uri: where the cluster reads the repository (pvc://CLAIM/PATH, "
                         "s3://BUCKET/PATH or gs://BUCKET/PATH)")
    return KubernetesOptions(uri, name=name.lower().replace("_", "-").replace(".", "-"), **settings), folder
