"""A runtime-agnostic predictor: load any exported model (or a checkpoint) and matte images.

``Predictor.load(path)`` picks the runner from the file format, reads the embedded model
config, and ``predict(src, bgr)`` takes numpy arrays (HWC uint8/float, NCHW), PIL images or
torch tensors of any size: it pads to the model's required multiple, converts to the
model's input dtype, runs, crops back and upsamples the coarse outputs to the input size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.config import ModelConfig
from model.errors import ModelFileError, UsageError
from runtimes import BaseRunner

from .images import pil_to_rgb, to_uint8
from .model_spec import ModelSpec, spec_for_config

log = logging.getLogger(__name__)

OUTPUT_CHOICES = ("pha", "fgr", "rgba", "err", "ref")
PADDING_MODES = {"replicate": "edge", "reflect": "reflect"}
# Model outputs each predictor output needs, per model type.
_NEEDS = {
    "refine": {"pha": ("pha",), "fgr": ("fgr",), "rgba": ("pha", "fgr"), "err": ("err_sm",), "ref": ("ref_sm",)},
    "base": {"pha": ("pha",), "fgr": ("fgr",), "rgba": ("pha", "fgr"), "err": ("err",)},
}
# Height/width multiple the model requires: MattingRefine works on 4x4 patches.
_MULTIPLE = {"refine": 4, "base": 1}


@dataclass
class Prediction:
    """Outputs at the input's size; a leading batch axis when the input was batched (NCHW).

    Attributes:
        pha: alpha, ``(H, W)`` float32 in 0..1.
        fgr: foreground, ``(H, W, 3)`` float32 RGB in 0..1 (if requested).
        rgba: foreground with alpha, ``(H, W, 4)`` uint8 RGBA, colour zeroed where alpha is 0
            (if requested).
        err: error map upsampled bilinearly, ``(H, W)`` float32 in 0..1 (if requested).
        ref: refined regions upsampled (nearest), ``(H, W)`` float32 in {0, 1} (if requested).
        seconds: time spent in the runner's ``infer``.
    """

    pha: np.ndarray | None = None
    fgr: np.ndarray | None = None
    rgba: np.ndarray | None = None
    err: np.ndarray | None = None
    ref: np.ndarray | None = None
    seconds: float = 0.0


class Predictor:
    """Mattes (src, bgr) pairs with any runner. Prefer :meth:`load`; use as a context manager
    or call :meth:`close` to release the runner."""

    def __init__(
        self,
        runner: Any,
        model_type: str,
        model_config: ModelConfig | None = None,
        source: str = "<runner>",
        padding: str = "replicate",
        target: str | None = None,
    ) -> None:
        if model_type not in _NEEDS:
            raise UsageError(f"model_type={model_type!r} is not valid; valid: {', '.join(_NEEDS)}")
        if padding not in PADDING_MODES:
            raise UsageError(f"padding={padding!r} is not valid; valid: {', '.join(PADDING_MODES)}")
        self.runner = runner
        self.model_type = model_type
        self.model_config = model_config
        self.source = source
        self.padding = padding
        self.target = target or runner.name
        self.spec: ModelSpec | None = None  # what from_spec loaded (reports show it)
        self._owns_activation = not runner.is_active
        if self._owns_activation:
            runner.activate()
        self._outputs = set(runner.output_metadata())
        self._dtype = np.dtype(runner.input_metadata()["src"].dtype)

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        *,
        checkpoint: str | Path | None = None,
        model_config: ModelConfig | None = None,
        target: str | None = None,
        threads: int | None = None,
        allow_fallback: bool = False,
        padding: str = "replicate",
        config_file: str | Path | None = None,
        options: dict[str, Any] | None = None,
        shared_cores: bool = False,
    ) -> Predictor:
        """Loads a model and activates its runner (a :class:`~bgm_deploy.model_spec.ModelSpec`
        built from the arguments, loaded by :meth:`from_spec`).

        Args:
            path: an exported model (``.onnx``, TorchScript ``.pt``, TensorRT ``.engine``, ...)
                with bgm-deploy metadata. None: run the PyTorch reference (``checkpoint``
                and/or ``model_config``; synthetic weights from ``model_config.seed``).
            checkpoint: a ``pytorch_<backbone>.pth`` file; only without ``path``.
            model_config: the model to build (without ``path``); with ``path``, only used when
                the file carries no metadata (e.g. the original release's TorchScript files).
            target: a registered target (``onnxruntime-cpu``, ``openvino-cpu``, ...) or a
                device word (``cpu``, ``cuda``, ``tensorrt``); None: the format's CPU default.
            threads: intra-op threads (None: the runtime's default).
            allow_fallback: when the target's device is not usable, warn loudly and run on the
                CPU instead of raising ``RuntimeUnavailableError``.
            padding: ``"replicate"`` or ``"reflect"``, for sizes not divisible by 4.
            config_file: with ``path``: its metadata JSON (the ``<file>.bgm.json`` export wrote).
            options: the target's own options (e.g. ``{"precision": "f32"}`` for OpenVINO).
            shared_cores: other threads of this process need the cores (see :meth:`from_spec`).

        Raises:
            UsageError, ModelFileError, CheckpointError, RuntimeUnavailableError.
        """
        if path is not None:
            spec = ModelSpec(model=str(path), checkpoint=checkpoint, config_file=config_file, target=target, threads=threads,
                             allow_fallback=allow_fallback, options=options or {}, padding=padding)
            try:
                config = spec.model_config()
            except ModelFileError:
                if model_config is None:
                    raise
                config = model_config  # a file without metadata, described by the caller
            return cls.from_spec(spec, model_config=config, shared_cores=shared_cores)
        if checkpoint is None and model_config is None:
            raise UsageError(
                "nothing to load: pass a model file (path=/--model), a checkpoint (checkpoint=/--checkpoint), "
                "or a model_config for synthetic weights"
            )
        spec = spec_for_config(model_config, checkpoint, target=target, threads=threads,
                               allow_fallback=allow_fallback, options=options or {}, padding=padding)
        config = None
        if model_config is not None and checkpoint is not None:
            from model.checkpoint import config_for_checkpoint  # deferred: torch, only for checkpoints

            config = config_for_checkpoint(model_config, checkpoint)
        elif model_config is not None:
            config = model_config
        return cls.from_spec(spec, model_config=config, shared_cores=shared_cores)

    @classmethod
    def from_spec(cls, spec: ModelSpec, shared_cores: bool = False, precision: str = "fp32",
                  cache_dir: str | Path | None = None, model_config: ModelConfig | None = None) -> Predictor:
        """The one loader: ``spec`` checked, its target's runner built and activated.

        Args:
            spec: what to load and where to run it.
            shared_cores: other threads of this process need the cores (video decoding and
                encoding): runtimes that spin-wait for work are told not to.
            precision: ``fp32`` or ``fp16`` where the target takes it (eager PyTorch).
            cache_dir: engine cache of GPU runtimes.
            model_config: the config when already read (saves reading the file twice).

        Raises:
            UsageError, ModelFileError, CheckpointError, RuntimeUnavailableError.
        """
        runner, target, config = spec.create_runner(model_config, shared_cores, precision, cache_dir)
        log.info("loading %s on target %s", spec.source, target.name)
        predictor = cls(runner, config.model_type, config, source=spec.source, padding=spec.padding, target=target.name)
        predictor.spec = spec
        return predictor

    @classmethod
    def from_runner(cls, runner: BaseRunner, model_config: ModelConfig | None = None,
                    padding: str = "replicate") -> Predictor:
        """A predictor around a runner you created yourself (active or not)."""
        model_type = model_config.model_type if model_config is not None else None
        if model_type is None:
            was_active = runner.is_active
            if not was_active:
                runner.activate()
            names = set(runner.output_metadata())
            # Only a base model has err/hid; with just pha/fgr, assume refine (its padding
            # to a multiple of 4 also suits a base model).
            model_type = "base" if names & {"err", "hid"} else "refine"
            if not was_active:
                runner.deactivate()
        return cls(runner, model_type, model_config, source=f"<{runner.name} runner>", padding=padding)

    def close(self) -> None:
        """Deactivates the runner if this predictor activated it."""
        if self._owns_activation and self.runner.is_active:
            self.runner.deactivate()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def provider(self) -> str:
        """What actually runs the model (e.g. ``CPUExecutionProvider``, ``torch:cpu``)."""
        return str(self.runner.provider)

    @property
    def available_outputs(self) -> tuple[str, ...]:
        """The predictor outputs this model file can produce."""
        return tuple(key for key, needs in _NEEDS[self.model_type].items() if set(needs) <= self._outputs)

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable description for reports."""
        return {
            "source": self.source,
            "runner": self.runner.name,
            "target": self.target,
            "provider": self.provider,
            "model_type": self.model_type,
            "io_dtype": self._dtype.name,
            "model_config": self.model_config.to_dict() if self.model_config is not None else None,
            "weights": self.model_config.weights_label if self.model_config is not None else "unknown",
            "padding": self.padding,
            "spec": self.spec.to_dict() if self.spec is not None else None,
        }

    # -- inference -------------------------------------------------------------------------
    def predict(self, src: Any, bgr: Any, outputs: tuple[str, ...] | list[str] = ("pha", "fgr")) -> Prediction:
        """Mattes one image (or one NCHW batch).

        Args:
            src: the image with the subject: numpy ``(H, W, 3)`` uint8/float or ``(N, 3, H, W)``,
                a PIL image, or a torch tensor ``(3, H, W)`` / ``(N, 3, H, W)``. Floats must be in
                0..1; grayscale and alpha channels are converted.
            bgr: the background without the subject, same size as ``src``.
            outputs: any of ``pha``, ``fgr``, ``rgba``, ``err``, ``ref``.

        Raises:
            UsageError: unknown outputs, an output the model file lacks, bad image arrays, or
                src/bgr of different sizes.
        """
        wanted = _check_outputs(outputs, self.available_outputs, self.source)
        src_array, batched = _as_nchw(src, "src")
        bgr_array, _ = _as_nchw(bgr, "bgr")
        if src_array.shape != bgr_array.shape:
            raise UsageError(
                f"src and bgr must have the same size, got src {_size(src_array)} and bgr {_size(bgr_array)}; "
                "resize the background (matte --resize WxH) or align it (--align)"
            )
        height, width = src_array.shape[2:]
        multiple = _MULTIPLE[self.model_type]
        pad_h, pad_w = -height % multiple, -width % multiple
        feeds = {
            "src": _pad(src_array, pad_h, pad_w, self.padding).astype(self._dtype, copy=False),
            "bgr": _pad(bgr_array, pad_h, pad_w, self.padding).astype(self._dtype, copy=False),
        }
        needed = {name for key in wanted for name in _NEEDS[self.model_type][key]}
        raw = self.runner.infer(feeds)
        result = Prediction(seconds=float(self.runner.last_inference_time or 0.0))
        padded = (height + pad_h, width + pad_w)
        maps = {name: np.asarray(raw[name], dtype=np.float32) for name in needed}
        pha = maps["pha"][:, 0, :height, :width] if "pha" in maps else None
        fgr = maps["fgr"][:, :, :height, :width].transpose(0, 2, 3, 1) if "fgr" in maps else None
        if "pha" in wanted:
            result.pha = pha
        if "fgr" in wanted:
            result.fgr = fgr
        if "rgba" in wanted and pha is not None and fgr is not None:
            rgb = to_uint8(fgr * (pha[..., None] > 0))
            result.rgba = np.concatenate([rgb, to_uint8(pha)[..., None]], axis=-1)
        if "err" in wanted:
            err = maps["err_sm" if self.model_type == "refine" else "err"]
            result.err = _resize_bilinear(err, padded)[:, 0, :height, :width]
        if "ref" in wanted:
            ref = maps["ref_sm"]
            # Each quarter-resolution cell is one 4x4 block at full resolution.
            full = np.repeat(np.repeat(ref, padded[0] // ref.shape[2], axis=2), padded[1] // ref.shape[3], axis=3)
            result.ref = full[:, 0, :height, :width]
        if not batched:
            for key in OUTPUT_CHOICES:
                value = getattr(result, key)
                if value is not None:
                    setattr(result, key, value[0])
        return result


def _check_outputs(outputs: Any, available: tuple[str, ...], source: str) -> tuple[str, ...]:
    wanted = (outputs,) if isinstance(outputs, str) else tuple(outputs)
    unknown = [name for name in wanted if name not in OUTPUT_CHOICES]
    if unknown or not wanted:
        raise UsageError(f"outputs={list(wanted)!r} is not valid; choose from {', '.join(OUTPUT_CHOICES)}")
    missing = [name for name in wanted if name not in available]
    if missing:
        raise UsageError(
            f"output(s) {', '.join(missing)} not available from {source}; it provides {', '.join(available) or 'none'} "
            "(export with the outputs you need, e.g. err/ref need err_sm/ref_sm)"
        )
    return wanted


def _size(array: np.ndarray) -> str:
    return f"{array.shape[3]}x{array.shape[2]}"


def _as_nchw(image: Any, name: str) -> tuple[np.ndarray, bool]:
    """Any supported image as float32 ``(N, 3, H, W)`` in 0..1, and whether it was batched."""
    if hasattr(image, "mode") and hasattr(image, "getbands"):  # PIL.Image
        array = np.asarray(pil_to_rgb(image))
        layout = "hwc"
    elif type(image).__module__.startswith("torch"):
        array = image.detach().cpu().numpy()
        layout = {2: "hw", 3: "chw", 4: "nchw"}.get(array.ndim, "?")
    elif isinstance(image, np.ndarray):
        array = image
        if array.ndim == 4:
            layout = "nchw" if array.shape[1] in (1, 3, 4) else "nhwc"
        else:
            layout = {2: "hw", 3: "hwc"}.get(array.ndim, "?")
    else:
        raise UsageError(f"{name} must be a numpy array, a PIL image or a torch tensor, got {type(image).__name__}")
    if layout == "?":
        raise UsageError(f"{name} has shape {array.shape}; expected (H, W, 3), (N, 3, H, W) or a torch (3, H, W)")
    if layout == "hw":
        array = array[None, None]
    elif layout == "hwc":
        array = array.transpose(2, 0, 1)[None]
    elif layout == "chw":
        array = array[None]
    elif layout == "nhwc":
        array = array.transpose(0, 3, 1, 2)
    channels = array.shape[1]
    if channels == 1:
        array = np.repeat(array, 3, axis=1)
    elif channels == 4:
        array = array[:, :3]  # alpha of an RGBA input is not part of the scene
    elif channels != 3:
        raise UsageError(f"{name} has {channels} channels (shape {array.shape}); expected 1, 3 or 4")
    return _to_unit_float(array, name), layout in ("nchw", "nhwc")


def _to_unit_float(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array.astype(np.float32) / np.float32(255)
    if array.dtype == np.uint16:
        return array.astype(np.float32) / np.float32(65535)
    if not np.issubdtype(array.dtype, np.floating):
        raise UsageError(f"{name} has dtype {array.dtype}; expected uint8, uint16 or float in 0..1")
    array = array.astype(np.float32, copy=False)
    low, high = float(array.min(initial=0.0)), float(array.max(initial=0.0))
    if low < -1e-3 or high > 1 + 1e-3:
        raise UsageError(
            f"{name} is float with values in [{low:.3g}, {high:.3g}]; expected 0..1 (divide 8-bit values by 255)"
        )
    return np.clip(array, 0.0, 1.0)


def _pad(array: np.ndarray, pad_h: int, pad_w: int, mode: str) -> np.ndarray:
    """Pads bottom/right so the model sees a multiple of 4; cropped off again afterwards."""
    if pad_h == 0 and pad_w == 0:
        return np.ascontiguousarray(array)
    if mode == "reflect" and (array.shape[2] <= pad_h or array.shape[3] <= pad_w):
        mode = "replicate"  # reflect needs more pixels than it pads
    return np.pad(array, ((0, 0), (0, 0), (0, pad_h), (0, pad_w)), mode=PADDING_MODES[mode])


def _resize_bilinear(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear (align_corners=False) resize of ``(N, C, h, w)``, as the original project does."""
    if tuple(array.shape[2:]) == tuple(size):
        return array
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False).numpy()
