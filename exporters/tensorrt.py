"""TensorRT engines from exported ONNX files: ``engine_from_onnx`` and engine compatibility.

UNVERIFIED: written against the documented TensorRT 10 Python API (``Builder``,
``OnnxParser.parse_from_file``, ``IBuilderConfig.set_memory_pool_limit``, optimisation
profiles, timing caches, ``build_serialized_network``); no machine this project was
developed on had a GPU or TensorRT. ``benchmarks/gpu_validate.py`` is the script that
proves it on a GPU box. What *is* tested without TensorRT: configs, default profiles, the
sidecar format and :func:`check_engine_compatible` against fake environments.

Every engine gets a sidecar ``<engine>.json`` (the :class:`~exporters.metadata.ExportMetadata`
of the source ONNX, format ``"tensorrt"``) whose ``export`` section records the TensorRT
version, GPU name and compute capability the engine was built for, the optimisation
profile, precision and the sha256 of the source ONNX. TensorRT engines only load on the
TensorRT version and GPU architecture they were built with; :func:`check_engine_compatible`
refuses a mismatch with a message instead of letting deserialisation crash.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from exporters.atomic import atomic_write_bytes
from exporters.metadata import ExportMetadata, read_metadata
from exporters.preflight import preflight_onnx
from model.checkpoint import file_sha256
from model.config import ModelConfig
from model.errors import ExportError, ModelFileError, RuntimeUnavailableError, UsageError
from model.spec import INPUT_NAMES

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16")
PRESETS = ("hd", "4k")
Shape3 = tuple[int, int, int]  # (batch, height, width)

# Default optimisation profiles, (batch, height, width): the HD preset (backbone_scale 0.25,
# 80k pixels) is tuned for 1920x1080, the 4K preset (0.125, 320k) for 3840x2160. The
# minimum keeps the coarse map large enough for the output-stride-16 backbone.
DEFAULT_PROFILES: dict[str, tuple[Shape3, Shape3, Shape3]] = {
    "hd": ((1, 256, 256), (1, 1080, 1920), (4, 1080, 1920)),
    "4k": ((1, 512, 512), (1, 2160, 3840), (2, 2160, 3840)),
}


ProgressFn = Callable[[str], None]


@dataclass(frozen=True)
class EngineConfig:
    """How to build a TensorRT engine.

    Attributes:
        precision: ``"fp32"`` or ``"fp16"`` (TensorRT 10 weakly-typed fp16 kernels).
        preset: ``"hd"`` or ``"4k"``: default optimisation profile; None picks it from the
            model's ``backbone_scale`` (0.25 → hd, smaller → 4k).
        min_shape / opt_shape / max_shape: ``(batch, height, width)`` of the profile;
            None takes the preset's. Heights and widths must be divisible by 4.
        workspace_mib: builder workspace memory-pool limit in MiB.
        timing_cache: file to read and update with kernel timings (rebuilds take seconds
            instead of minutes); None disables it.
        fp32_index_math: in fp16 builds, keep every layer that touches integer/bool tensors
            (the patch selection, index arithmetic, scatters) and the float layers fed by
            them in fp32: the TopK-free selection counts cells and compares exact float32
            thresholds, which fp16 cannot represent.
        device_id: CUDA device to build on.
    """

    precision: str = "fp32"
    preset: str | None = None
    min_shape: Shape3 | None = None
    opt_shape: Shape3 | None = None
    max_shape: Shape3 | None = None
    workspace_mib: int = 4096
    timing_cache: str | None = None
    fp32_index_math: bool = True
    device_id: int = 0

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UsageError(f"precision={self.precision!r} is not valid; valid: {', '.join(PRECISIONS)}")
        if self.preset is not None and self.preset not in PRESETS:
            raise UsageError(f"preset={self.preset!r} is not valid; valid: {', '.join(PRESETS)}")
        if self.workspace_mib < 16:
            raise UsageError(f"workspace_mib={self.workspace_mib} is not valid; it must be >= 16")
        for name in ("min_shape", "opt_shape", "max_shape"):
            shape = getattr(self, name)
            if shape is None:
                continue
            if len(shape) != 3 or any(int(v) < 1 for v in shape) or shape[1] % 4 or shape[2] % 4:
                raise UsageError(
                    f"{name}={shape!r} is not valid; give (batch, height, width) with positive values and "
                    "height and width divisible by 4"
                )

    def profile(self, model_config: ModelConfig | None = None) -> tuple[Shape3, Shape3, Shape3]:
        """``(min, opt, max)`` shapes, explicit ones overriding the preset's.

        Raises:
            UsageError: the shapes are not ordered ``min <= opt <= max`` in every dimension.
        """
        preset = self.preset
        if preset is None:
            scale = model_config.resolved().backbone_scale if model_config is not None else 0.25
            preset = "hd" if scale >= 0.25 else "4k"
        defaults = DEFAULT_PROFILES[preset]
        shapes = tuple(
            tuple(int(v) for v in (given if given is not None else default))
            for given, default in zip((self.min_shape, self.opt_shape, self.max_shape), defaults)
        )
        low, opt, high = shapes
        if not all(a <= b <= c for a, b, c in zip(low, opt, high)):
            raise UsageError(
                f"optimisation profile min={low} opt={opt} max={high} is not valid; "
                "each of batch, height, width must satisfy min <= opt <= max"
            )
        return low, opt, high  # type: ignore[return-value]


@dataclass(frozen=True)
class EngineEnvironment:
    """What an engine is tied to: TensorRT version and GPU architecture."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.6"

    def describe(self) -> str:
        return f"TensorRT {self.tensorrt_version} on {self.gpu_name} (compute capability {self.compute_capability})"


@dataclass
class EngineInfo:
    """What :func:`engine_from_onnx` built; ``sidecar`` is the ``export`` section written."""

    engine_path: Path
    sidecar_path: Path
    sidecar: dict[str, Any] = field(default_factory=dict)


def import_tensorrt() -> Any:
    """``import tensorrt`` or a :class:`RuntimeUnavailableError` saying how to get it."""
    try:
        import tensorrt
    except (ImportError, OSError) as exc:  # OSError: bindings present, libnvinfer missing
        raise RuntimeUnavailableError(
            f"TensorRT is not usable here ({type(exc).__name__}: {exc}); install it on a machine with an "
            "NVIDIA GPU: pip install 'bgm-deploy[tensorrt]' (TensorRT 10)"
        ) from None
    return tensorrt


def require_gpu(device_id: int = 0, what: str = "building a TensorRT engine") -> Any:
    """The ``torch`` module once CUDA device ``device_id`` is known to exist."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeUnavailableError(f"{what} needs an NVIDIA GPU with CUDA; this machine has none")
    if device_id >= torch.cuda.device_count():
        raise RuntimeUnavailableError(
            f"device_id={device_id} is not valid; this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return torch


def current_environment(device_id: int = 0) -> EngineEnvironment:
    """TensorRT version and GPU of this machine.

    Raises:
        RuntimeUnavailableError: no TensorRT or no GPU.
    """
    trt = import_tensorrt()
    torch = require_gpu(device_id, "loading a TensorRT engine")
    major, minor = torch.cuda.get_device_capability(device_id)
    return EngineEnvironment(str(trt.__version__), torch.cuda.get_device_name(device_id), f"{major}.{minor}")


def sidecar_path(engine_path: str | Path) -> Path:
    """``model.engine`` → ``model.engine.json`` (where :func:`read_metadata` looks)."""
    engine_path = Path(engine_path)
    return engine_path.with_suffix(engine_path.suffix + ".json")



def engine_environment_of(metadata: ExportMetadata, source: str) -> EngineEnvironment:
    """The environment recorded in an engine's sidecar."""
    export = metadata.export
    try:
        return EngineEnvironment(
            str(export["tensorrt_version"]), str(export["gpu_name"]), str(export["compute_capability"])
        )
    except KeyError as exc:
        raise ModelFileError(f"{source}: engine metadata lacks {exc}; rebuild the engine with bgm-deploy") from None


def check_engine_compatible(engine_path: str | Path, current: EngineEnvironment | None = None) -> ExportMetadata:
    """Refuses an engine built for another TensorRT version or GPU architecture.

    Args:
        engine_path: the ``.engine`` file (its ``.engine.json`` sidecar is read).
        current: this machine's environment; None queries TensorRT and CUDA.

    Returns:
        The engine's metadata.

    Raises:
        ModelFileError: missing/unreadable sidecar, or an engine built with another
            TensorRT version or for another compute capability (TensorRT cannot load it).
            A different GPU name with the same compute capability only logs a warning.
        RuntimeUnavailableError: ``current`` is None and TensorRT or a GPU is missing.
    """
    metadata = read_metadata(engine_path)
    if metadata.format != "tensorrt":
        raise ModelFileError(f"{engine_path}: metadata says format {metadata.format!r}, not a TensorRT engine")
    built = engine_environment_of(metadata, str(sidecar_path(engine_path)))
    here = current if current is not None else current_environment()
    rebuild = f"rebuild it here: bgm-deploy export --format tensorrt <model.onnx> -o {engine_path}"
    if built.tensorrt_version != here.tensorrt_version:
        raise ModelFileError(
            f"{engine_path} was built with TensorRT {built.tensorrt_version} but this machine has TensorRT "
            f"{here.tensorrt_version}; engines only load on the TensorRT version that built them; {rebuild}"
        )
    if built.compute_capability != here.compute_capability:
        raise ModelFileError(
            f"{engine_path} was built for {built.gpu_name} (compute capability {built.compute_capability}) but "
            f"this GPU is {here.gpu_name} (compute capability {here.compute_capability}); {rebuild}"
        )
    if built.gpu_name != here.gpu_name:
        log.warning(
            "%s was built on %s, this GPU is %s (same compute capability %s): it loads, but its kernels were "
            "tuned for the other GPU",
            engine_path, built.gpu_name, here.gpu_name, here.compute_capability,
        )  # fmt: skip
    return metadata


def _pin_index_math_fp32(trt: Any, network: Any) -> int:
    """Marks integer/bool-touching layers, and float layers fed by them, as fp32.

    Convolutions and matrix multiplies stay free (fp16); shape layers are skipped (they
    read no data). Returns how many layers were pinned.
    """
    integer_types = {trt.int32, trt.bool, trt.int8}
    if hasattr(trt, "int64"):
        integer_types.add(trt.int64)
    float_types = {trt.float32, trt.float16}
    free = {trt.LayerType.CONVOLUTION, trt.LayerType.DECONVOLUTION, trt.LayerType.MATRIX_MULTIPLY, trt.LayerType.SHAPE}
    pinned_tensors: set[str] = set()
    pinned = 0
    # The parser adds layers in the ONNX graph's topological order, so one forward pass
    # propagates "fed by index math" along the data flow.
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type in free:
            continue
        inputs = [layer.get_input(i) for i in range(layer.num_inputs)]
        inputs = [t for t in inputs if t is not None]
        outputs = [layer.get_output(i) for i in range(layer.num_outputs)]
        touches_integers = any(t.dtype in integer_types for t in inputs + outputs)
        fed_by_pinned = any(t.name in pinned_tensors for t in inputs)
        if not (touches_integers or fed_by_pinned):
            continue
        if any(t.dtype in float_types for t in inputs):
            layer.precision = trt.float32
        for i, tensor in enumerate(outputs):
            if tensor.dtype in float_types:
                layer.set_output_type(i, trt.float32)
                pinned_tensors.add(tensor.name)
        pinned += 1
    return pinned


def engine_from_onnx(
    onnx_path: str | Path, config: EngineConfig, output: str | Path, progress: ProgressFn | None = None
) -> EngineInfo:
    """Builds a TensorRT engine from a bgm-deploy ONNX export (UNVERIFIED on hardware).

    Args:
        onnx_path: ``.onnx`` file exported by bgm-deploy (its metadata is carried over).
        config: precision, optimisation profile, workspace, timing cache.
        output: the ``.engine`` file to write; ``<output>.json`` gets the sidecar.
        progress: called with one-line status messages.

    Returns:
        Paths and the sidecar's ``export`` section.

    Raises:
        ModelFileError: the ONNX file is missing or has no bgm-deploy metadata.
        UsageError: ``output`` does not end in .engine/.plan/.trt, or a bad profile.
        ExportError: the preflight finds blocking constructs, parsing or building fails.
        RuntimeUnavailableError: no TensorRT, no GPU, or fp16 requested on a TensorRT
            without weakly-typed fp16 (11+).
    """

    say = progress or (lambda message: None)
    onnx_path, output = Path(onnx_path), Path(output)
    if output.suffix.lower() not in (".engine", ".plan", ".trt"):
        raise UsageError(f"output={str(output)!r} is not valid; a TensorRT engine file ends in .engine, .plan or .trt")
    source = read_metadata(onnx_path)
    low, opt, high = config.profile(source.model_config)
    report = preflight_onnx(onnx_path)
    if not report.ok:
        first = report.blocking[0]
        raise ExportError(
            f"{onnx_path} cannot become a TensorRT engine: {len(report.blocking)} blocking preflight finding(s); "
            f"first: {first.message} Fix: {first.fix} (details: bgm-deploy check {onnx_path} --target tensorrt)"
        )
    trt = import_tensorrt()
    torch = require_gpu(config.device_id)
    torch.cuda.set_device(config.device_id)
    here = current_environment(config.device_id)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 10 networks are always explicit-batch; 8.x needs the flag.
    major = int(str(trt.__version__).split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    say(f"parsing {onnx_path} with TensorRT {here.tensorrt_version}")
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path}: {errors or 'no details'}")

    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_mib << 20)
    pinned = 0
    if config.precision == "fp16":
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise RuntimeUnavailableError(
                f"precision='fp16' needs TensorRT 10's weakly-typed fp16 builds; TensorRT {here.tensorrt_version} "
                "has none: export an fp16 ONNX (--precision fp16) and build it with precision='fp32'"
            )
        builder_config.set_flag(trt.BuilderFlag.FP16)
        if config.fp32_index_math:
            pinned = _pin_index_math_fp32(trt, network)
            builder_config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        channels = int(tensor.shape[1]) if len(tensor.shape) > 1 and tensor.shape[1] > 0 else 3
        profile.set_shape(tensor.name, *[(b, channels, h, w) for b, h, w in (low, opt, high)])
    builder_config.add_optimization_profile(profile)

    cache_path = Path(config.timing_cache) if config.timing_cache else None
    if cache_path is not None:
        cache = builder_config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
        builder_config.set_timing_cache(cache, ignore_mismatch=False)

    say(f"building {config.precision} engine, profile min={low} opt={opt} max={high} (minutes on first build)")
    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path}; rerun with -vv for the builder log")
    atomic_write_bytes(output, bytes(serialized))
    if cache_path is not None:
        atomic_write_bytes(cache_path, bytes(builder_config.get_timing_cache().serialize()))

    export = {
        **asdict(here),
        "precision": config.precision,
        "profile": {"min": list(low), "opt": list(opt), "max": list(high), "inputs": list(INPUT_NAMES)},
        "workspace_mib": config.workspace_mib,
        "fp32_index_math_layers": pinned,
        "source_onnx": onnx_path.name,
        "source_onnx_sha256": file_sha256(onnx_path),
        "source_export": source.export,
    }
    metadata = ExportMetadata(source.model_config, "tensorrt", export)
    side = sidecar_path(output)
    atomic_write_bytes(side, (metadata.to_json() + "\n").encode())
    say(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB) and {side.name}")
    return EngineInfo(output, side, export)
