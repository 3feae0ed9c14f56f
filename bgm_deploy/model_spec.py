"""The model spec: which model runs on which target with which options, as one frozen value.

Every job (photo and video matting, serving, the Triton model, verify, bench, a Ray worker)
takes a :class:`ModelSpec` or a :class:`~bgm_deploy.predictor.Predictor` loaded from one,
never its own loose loader arguments; the CLI builds the spec with one shared option group
(``bgm_deploy.cli_options``). A spec is checked before any work (:meth:`ModelSpec.check`:
files exist, the target runs the file's format and is usable here, options apply), and its
target's runner is built by :meth:`ModelSpec.create_runner`, behind the one loader
:meth:`~bgm_deploy.predictor.Predictor.from_spec`. It serialises to JSON, so a Triton model
instance or a cluster worker in another process loads exactly the same thing.

The model is one of:

* ``model``: an exported file (``.onnx``, TorchScript ``.pt``, ``.engine``, and the formats
  other exporters register), its settings read from the file's metadata (or ``config_file``);
* ``checkpoint``: PyTorch weights (``pytorch_mobilenetv2.pth``) run by the reference model,
  architecture read from the keys, ``settings`` overriding the refine settings;
* neither: synthetic weights from ``seed`` (a pipeline check, not a matte).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from exporters.metadata import detect_format, read_metadata
from exporters.paths import check_input_file, looks_like_checkpoint
from model.config import ModelConfig
from model.errors import ModelFileError, UsageError
from runtimes import BaseRunner, create_runner
from runtimes.targets import LoadRequest, Target, resolve_target

SPEC_SCHEMA_VERSION = 1
# ModelConfig fields a spec may override for a checkpoint or synthetic weights.
SETTINGS = ("model_type", "backbone", "backbone_scale", "refine_mode", "refine_sample_pixels", "refine_threshold",
            "refine_kernel_size", "refine_prevent_oversampling", "refine_patch_crop_method",
            "refine_patch_replace_method")
PADDING_MODES = ("replicate", "reflect")


@dataclass(frozen=True)
class ModelSpec:
    """What to load and where to run it.

    Attributes:
        model: an exported model file (or folder, for formats stored as one).
        checkpoint: PyTorch weights instead of ``model``.
        config_file: with ``model``: its metadata JSON (``<file>.bgm.json``), for a file a
            graph tool stripped.
        settings: ModelConfig overrides (``backbone_scale``, ``refine_*``, ...) for a
            checkpoint or synthetic weights; an exported file carries its own.
        seed: synthetic weights' seed, without ``model`` and ``checkpoint``.
        target: a registered target (``onnxruntime-cpu``) or a device word (``cpu``,
            ``cuda``, ``tensorrt``); None: the format's default on the CPU.
        threads: intra-op threads (None: the runtime's default).
        allow_fallback: with a GPU target and no GPU: run on the CPU, loudly.
        options: the target's own options (``{"precision": "f32"}`` for OpenVINO).
        padding: ``replicate`` or ``reflect``, to reach the model's size multiple.
    """

    model: str | None = None
    checkpoint: str | None = None
    config_file: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    target: str | None = None
    threads: int | None = None
    allow_fallback: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    padding: str = "replicate"

    def __post_init__(self) -> None:
        # Paths as strings: the spec crosses process boundaries as JSON.
        for name in ("model", "checkpoint", "config_file"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                object.__setattr__(self, name, str(value))
        object.__setattr__(self, "settings", {k: v for k, v in dict(self.settings).items() if v is not None})
        object.__setattr__(self, "options", {k: v for k, v in dict(self.options).items() if v is not None})
        if self.model is not None and self.checkpoint is not None:
            raise UsageError("--model and --checkpoint are alternatives: an exported file, or PyTorch weights; pass one")
        unknown = sorted(set(self.settings) - set(SETTINGS))
        if unknown:
            raise UsageError(f"model settings {unknown} are not valid; valid: {', '.join(SETTINGS)}")
        if self.settings and self.model is not None:
            flags = ", ".join(f"--{name.replace('_', '-')}" for name in self.settings)
            raise UsageError(f"--model carries its own settings; {flags} apply only with --checkpoint (or synthetic "
                             "weights); export again with the settings you want")
        if self.config_file is not None and self.model is None:
            raise UsageError("--config is the metadata of an exported --model file; pass --model FILE with it")
        if self.seed is not None and (self.model is not None or self.checkpoint is not None):
            raise UsageError("--seed picks synthetic weights; drop it when passing --model or --checkpoint")
        if self.padding not in PADDING_MODES:
            raise UsageError(f"--padding {self.padding!r} is not valid; valid: {', '.join(PADDING_MODES)}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads {self.threads} is not valid; it must be >= 1")

    # -- what it is -------------------------------------------------------------------------
    @property
    def is_empty(self) -> bool:
        """No model chosen: no file, no checkpoint, no seed, no settings."""
        return self.model is None and self.checkpoint is None and self.seed is None and not self.settings

    @property
    def format(self) -> str:
        """The file format (``onnx``, ``torchscript``, ...) or ``pytorch`` for weights."""
        if self.model is None:
            return "pytorch"
        return detect_format(self.model)

    @property
    def source(self) -> str:
        """How reports name the model."""
        if self.model is not None:
            return self.model
        if self.checkpoint is not None:
            return self.checkpoint
        return f"synthetic weights (seed {self.seed or 0})"

    def resolve_target(self) -> Target:
        """The registered target this spec runs on (format checked)."""
        return resolve_target(self.target, self.format)

    def check(self) -> Target:
        """Everything that can be checked without loading the model, before any work.

        Returns:
            The resolved target.

        Raises:
            UsageError: missing files, a checkpoint passed as --model, a target that cannot
                run the format or options it does not have. RuntimeUnavailableError: the
                target cannot run here (and no fallback applies).
        """
        if self.model is not None:
            path = Path(self.model)
            if not path.exists():
                raise UsageError(f"--model {path} does not exist (give an exported model file)")
            if path.is_file() and looks_like_checkpoint(path):
                raise UsageError(f"--model {path} is a PyTorch checkpoint (weights), not an exported model; pass it "
                                 f"with --checkpoint {path}, or export it first: bgm-deploy export --checkpoint {path} ...")
        if self.checkpoint is not None:
            check_input_file(self.checkpoint, "--checkpoint", "give a pytorch_<backbone>.pth state_dict")
        if self.config_file is not None:
            check_input_file(self.config_file, "--config", "pass the <model>.bgm.json file export wrote")
        try:
            target = self.resolve_target()
        except ModelFileError as exc:
            raise UsageError(str(exc)) from None
        target.option_values(self.options)
        target.require_usable(self.allow_fallback)
        return target

    def model_config(self) -> ModelConfig:
        """The model's config: from the file's metadata, the checkpoint's keys plus the
        settings, or synthetic weights with the settings.

        Raises:
            ModelFileError, CheckpointError, UsageError.
        """
        if self.model is not None:
            return read_metadata(self.model, self.config_file).model_config
        if self.checkpoint is not None:
            from model.checkpoint import config_for_checkpoint, read_checkpoint  # deferred: torch, only for checkpoints

            _, info = read_checkpoint(self.checkpoint)
            base = {"model_type": info.model_type, "backbone": info.backbone,
                    "refine_kernel_size": info.refine_kernel_size or 3}
            return config_for_checkpoint(ModelConfig(**{**base, **self.settings}), self.checkpoint)
        return ModelConfig(**{**self.settings, "seed": self.seed or 0})

    def create_runner(self, config: ModelConfig | None = None, shared_cores: bool = False, precision: str = "fp32",
                      cache_dir: str | Path | None = None) -> tuple[BaseRunner, Target, ModelConfig]:
        """The runner of this spec's target (not yet active), the target and the model config.

        Args:
            config: the model config when already read (saves reading the file twice).
            shared_cores: other threads of this process need the cores (video decoding and
                encoding): runtimes that spin-wait for work are told not to.
            precision: ``fp32`` or ``fp16`` where the target takes it (eager PyTorch).
            cache_dir: engine cache of GPU runtimes.
        """
        target = self.check()
        config = config or self.model_config()
        request = LoadRequest(
            fmt=self.format, path=Path(self.model) if self.model is not None else None, model_config=config,
            checkpoint=Path(self.checkpoint) if self.checkpoint is not None else None, threads=self.threads,
            allow_fallback=self.allow_fallback, precision=precision, options=target.option_values(self.options),
            shared_cores=shared_cores, cache_dir=Path(cache_dir) if cache_dir is not None else None,
        )
        try:
            runner = create_runner(target.runner, **target.build(request))
        except TypeError as exc:  # a target declaration that passes an option its runner lacks
            raise UsageError(f"target {target.name}: runner {target.runner!r} does not take these options: {exc}") from None
        return runner, target, config

    # -- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SPEC_SCHEMA_VERSION, **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        data = dict(data)
        version = data.pop("schema_version", SPEC_SCHEMA_VERSION)
        if version > SPEC_SCHEMA_VERSION:
            raise UsageError(f"model spec schema_version {version} is newer than this bgm-deploy understands; upgrade it")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        return cls.from_dict(json.loads(text))

    def with_paths_resolved(self) -> ModelSpec:
        """The same spec with absolute paths (for another process with another working folder)."""
        def absolute(value: str | None) -> str | None:
            return None if value is None else str(Path(value).resolve())

        return ModelSpec(**{**asdict(self), "model": absolute(self.model), "checkpoint": absolute(self.checkpoint),
                            "config_file": absolute(self.config_file)})


def spec_for_config(config: ModelConfig | None, checkpoint: str | Path | None = None, **fields: Any) -> ModelSpec:
    """A spec for the PyTorch reference described by ``config`` (synthetic weights from its
    seed, or ``checkpoint``); ``fields`` are the other spec fields (``target``, ...)."""
    settings = {}
    if config is not None:
        settings = {name: getattr(config, name) for name in SETTINGS}
    seed = None
    if checkpoint is None:
        seed = config.seed if config is not None and config.seed is not None else 0
    return ModelSpec(checkpoint=str(checkpoint) if checkpoint is not None else None, settings=settings, seed=seed,
                     **fields)
