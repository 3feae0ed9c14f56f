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
from typing import Any

import click

import runtimes  # noqa: F401 - importing the package registers every runner and its targets
from model.errors import UsageError
from model.spec import BACKBONES, REFINE_MODES
from runtimes.targets import DEVICE_WORDS, all_options, target_choices

from .model_spec import ModelSpec

F = Callable[..., Any]
# Parameters the groups add, popped by spec_from_options / target_from_options.
TARGET_PARAMS = ("target", "allow_fallback", "threads", "provider", "runtime")
MODEL_PARAMS = ("model", "checkpoint", "config_file", "seed", "backbone", "backbone_scale", "refine_mode",
                "refine_sample_pixels", "refine_threshold")


def _option_param(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def target_options(func: F) -> F:
    """Adds ``--target`` and what goes with it (see the module docstring)."""
    decorators = [
        click.option("--target", type=click.Choice(target_choices()), default=None, metavar="TARGET",
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
    for decorate in reversed(decorators):
        func = decorate(func)
    return func


def model_options(func: F) -> F:
    """Adds ``--model`` / ``--checkpoint`` / ``--config`` / ``--seed`` and the refine settings."""
    decorators = [
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
    ]
    for decorate in reversed(decorators):
        func = decorate(func)
    return func


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
    target, options, settings = target_from_options(values)
    model_settings = {name: values.pop(name, None) for name in
                      ("backbone", "backbone_scale", "refine_mode", "refine_sample_pixels", "refine_threshold")}
    return ModelSpec(
        model=values.pop("model", None), checkpoint=values.pop("checkpoint", None),
        config_file=values.pop("config_file", None), seed=values.pop("seed", None), settings=model_settings,
        target=target, options=options, padding=padding, **settings,
    )
