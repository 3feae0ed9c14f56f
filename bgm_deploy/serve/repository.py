"""Triton model repositories: ``<repo>/<name>/config.pbtxt`` + ``<repo>/<name>/1/<model files>``.

Two flavours:

* ``python`` — Triton's Python backend runs :mod:`bgm_deploy.serve.triton_model` (our
  :class:`~bgm_deploy.predictor.Predictor` around an exported model). uint8 NHWC images in,
  pha/fgr/rgba out, validation of every request. ``bgm-deploy serve`` serves this flavour
  with the ``tritonserver`` binary bundled in PyTriton, and the test suite loads it there.
* ``onnxruntime`` — ``model.onnx`` for Triton's onnxruntime backend (the production Triton
  container): raw NCHW float tensors, dynamic batching, instance groups and optionally
  onnxruntime's TensorRT accelerator (FP16, engine cache) on the TensorRT-safe graph. The
  bundled binary has no onnxruntime backend, so this flavour is checked against Triton's
  ``ModelConfig`` schema only; it is UNVERIFIED until loaded in the Triton container.

Every ``config.pbtxt`` is validated by parsing it into Triton's own ``ModelConfig`` protobuf
(``tritonclient.grpc.model_config_pb2``) before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from exporters.atomic import atomic_write_text, replace_folder
from exporters.config import CHANNELS, OnnxConfig
from exporters.metadata import SIDECAR_SUFFIX, sidecar_config_path
from exporters.paths import check_output_file
from model.config import ModelConfig
from model.errors import MissingExtraError, ServeError, UsageError

from ..export import export
from ..model_spec import ModelSpec
from ..predictor import Predictor
from .client import SERVE_EXTRA_HINT
from .kubernetes import KubernetesOptions, check_manifest_dir, write_manifests

FLAVOURS = ("python", "onnxruntime")
KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
IO_DTYPES = {"uint8": "TYPE_UINT8", "float32": "TYPE_FP32"}
SERVED_OUTPUTS = ("pha", "fgr", "rgba")
# Channels of the python flavour's NHWC outputs (pha is (H, W)).
_SERVED_CHANNELS = {"pha": None, "fgr": 3, "rgba": 4}
# 4K: a larger image is refused with a clear error instead of exhausting the server's memory.
DEFAULT_MAX_PIXELS = 3840 * 2160
MODEL_PY = "model.py"
REPORT_SCHEMA_VERSION = 1

Progress = Callable[[str], None]


def import_model_config_pb2() -> tuple[Any, Any]:
    """``(model_config_pb2, text_format)`` from tritonclient; a clear error without the extra."""
    try:  # tritonclient is an optional extra, imported only when a config is validated
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise MissingExtraError(f"Triton support needs tritonclient ({exc.name} is missing): {SERVE_EXTRA_HINT}") from None
    return model_config_pb2, text_format


@dataclass(frozen=True)
class TritonModelOptions:
    """How Triton runs one model (both flavours).

    Attributes:
        name: the model's name in the repository and in request URLs.
        max_batch_size: largest batch Triton forms (1..64); each request may carry a batch too.
        dynamic_batching: let Triton merge concurrent requests of the same size into a batch.
        max_queue_delay_us: how long the batcher may hold a request to fill a batch.
        instances: model instances (the Python backend runs each in its own process).
        kind: ``"cpu"`` or ``"gpu"`` instances; None: the python flavour's instances follow its
            target's device, the onnxruntime flavour's are ``"cpu"``. A kind named explicitly
            that contradicts the python flavour's target is refused.
        outputs: python flavour: any of pha, fgr, rgba; onnxruntime flavour: model outputs.
        io_dtype: python flavour: ``"uint8"`` (default: an HD float32 src+bgr pair is ~50 MB
            per request, uint8 ~12 MB) or ``"float32"`` images in 0..1.
        max_pixels: python flavour: larger images (H*W) are refused; 0 disables the limit.
        pad: python flavour: pad sizes that are not a multiple of 4 (like the predictor) instead
            of refusing them.
        tensorrt: onnxruntime flavour: enable onnxruntime's TensorRT accelerator (GPU).
        tensorrt_fp16: with ``tensorrt``: build FP16 engines.
        tensorrt_cache: with ``tensorrt``: engine cache directory inside the container.
    """

    name: str = "bgm"
    max_batch_size: int = 4
    dynamic_batching: bool = True
    max_queue_delay_us: int = 2000
    instances: int = 1
    kind: str | None = None
    outputs: tuple[str, ...] = ("pha", "fgr")
    io_dtype: str = "uint8"
    max_pixels: int = DEFAULT_MAX_PIXELS
    pad: bool = False
    tensorrt: bool = False
    tensorrt_fp16: bool = True
    tensorrt_cache: str = "/tmp/bgm_trt_cache"

    def __post_init__(self) -> None:
        if not self.name or not all(char.isalnum() or char in "-_." for char in self.name) or self.name.startswith("."):
            raise UsageError(f"name={self.name!r} is not valid; use letters, digits, '-', '_' or '.'")
        if not 1 <= self.max_batch_size <= 64:
            raise UsageError(f"max_batch_size={self.max_batch_size} is not valid; use 1..64")
        if self.max_queue_delay_us < 0:
            raise UsageError(f"max_queue_delay_us={self.max_queue_delay_us} is not valid; it must be >= 0")
        if self.instances < 1:
            raise UsageError(f"instances={self.instances} is not valid; it must be >= 1")
        if self.kind is not None and self.kind not in KINDS:
            raise UsageError(f"kind={self.kind!r} is not valid; valid: {', '.join(KINDS)}")
        if self.io_dtype not in IO_DTYPES:
            raise UsageError(f"io_dtype={self.io_dtype!r} is not valid; valid: {', '.join(IO_DTYPES)}")
        if self.max_pixels < 0:
            raise UsageError(f"max_pixels={self.max_pixels} is not valid; it must be >= 0 (0: no limit)")
        if not self.outputs or len(set(self.outputs)) != len(self.outputs):
            raise UsageError(f"outputs={','.join(self.outputs)!r} is not valid; name each output once")
        if self.tensorrt and self.kind != "gpu":
            raise UsageError("tensorrt=True needs GPU instances; pass kind='gpu' (--triton-device gpu)")


# -- config.pbtxt ------------------------------------------------------------------------------
def _model_config(options: TritonModelOptions, backend: str, kind: str) -> Any:
    """The parts of Triton's ``ModelConfig`` message both flavours share."""
    model_config_pb2, _ = import_model_config_pb2()
    message = model_config_pb2.ModelConfig(name=options.name, backend=backend, max_batch_size=options.max_batch_size)
    if options.dynamic_batching:
        message.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
    group = message.instance_group.add(count=options.instances)
    group.kind = getattr(model_config_pb2.ModelInstanceGroup, KINDS[kind])
    return message


def _add_tensor(message: Any, field_name: str, name: str, data_type: str, dims: list[int]) -> None:
    model_config_pb2, _ = import_model_config_pb2()
    tensor = getattr(message, field_name).add(name=name, dims=dims)
    tensor.data_type = model_config_pb2.DataType.Value(data_type)


def _text(message: Any) -> str:
    _, text_format = import_model_config_pb2()
    text = text_format.MessageToString(message)
    validate_config_text(text)
    return text


def python_config_text(options: TritonModelOptions, model_type: str, spec: ModelSpec, kind: str,
                       python_path: str = "") -> str:
    """``config.pbtxt`` of the python flavour (validated before it is returned).

    Args:
        model_type: ``refine`` or ``base``.
        spec: what each model instance loads (``Predictor.from_spec``); a relative model path
            is relative to the version folder.
        kind: ``cpu`` or ``gpu`` instances (the spec's target device).
        python_path: a folder put first on the stub's ``sys.path`` (``serve`` passes the
            bgm-deploy it runs itself); empty: ``bgm_deploy`` must be installed for the stub.
    """
    unknown = [name for name in options.outputs if name not in SERVED_OUTPUTS]
    if unknown:
        raise UsageError(f"--outputs {','.join(options.outputs)} is not valid here; served outputs: {', '.join(SERVED_OUTPUTS)}")
    message = _model_config(options, "python", kind)
    dtype = IO_DTYPES[options.io_dtype]
    for name in ("src", "bgr"):
        _add_tensor(message, "input", name, dtype, [-1, -1, 3])
    for name in options.outputs:
        channels = _SERVED_CHANNELS[name]
        _add_tensor(message, "output", name, "TYPE_UINT8" if name == "rgba" else dtype,
                    [-1, -1] if channels is None else [-1, -1, channels])
    params = {"model_type": model_type, "model_spec": spec.to_json(), "io_dtype": options.io_dtype,
              "max_pixels": str(options.max_pixels), "pad": "true" if options.pad else "false",
              "python_path": python_path}
    for key, value in params.items():
        message.parameters[key].string_value = value
    return _text(message)


def onnxruntime_config_text(options: TritonModelOptions, onnx_inputs: dict[str, str], onnx_outputs: dict[str, str]) -> str:
    """``config.pbtxt`` of the onnxruntime flavour for an exported model's NCHW tensors.

    Args:
        onnx_inputs / onnx_outputs: ``{name: numpy dtype name}`` of the ONNX file's tensors.
    """
    types = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}
    missing = [name for name in options.outputs if name not in onnx_outputs]
    if missing:
        raise UsageError(f"outputs {', '.join(missing)} are not in the ONNX file (it has {', '.join(onnx_outputs)})")
    message = _model_config(options, "onnxruntime", options.kind or "cpu")
    for name, dtype in onnx_inputs.items():
        _add_tensor(message, "input", name, types[dtype], [CHANNELS[name], -1, -1])
    for name in options.outputs:
        _add_tensor(message, "output", name, types[onnx_outputs[name]], [CHANNELS[name], -1, -1])
    if options.tensorrt:
        accelerator = message.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        accelerator.parameters.update({
            "precision_mode": "FP16" if options.tensorrt_fp16 else "FP32",
            "max_workspace_size_bytes": str(4 << 30),
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": options.tensorrt_cache,
        })
    return _text(message)


def parse_config_text(text: str) -> Any:
    """Parses ``config.pbtxt`` text into Triton's ``ModelConfig`` protobuf, with none of
    bgm-deploy's own rules (any model of a repository).

    Raises:
        ServeError: the text does not parse.
        MissingExtraError: tritonclient is not installed.
    """
    model_config_pb2, text_format = import_model_config_pb2()
    message = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise ServeError(f"config.pbtxt does not parse as Triton's ModelConfig: {exc}") from None
    return message


def validate_config_text(text: str) -> Any:
    """Parses ``config.pbtxt`` text into Triton's ``ModelConfig`` protobuf and checks what the
    schema cannot: dims without the batch axis, a batching model, unique tensor names.

    Returns:
        The parsed ``inference.ModelConfig`` message.

    Raises:
        ServeError: the text does not parse or breaks one of the rules.
        MissingExtraError: tritonclient is not installed.
    """
    message = parse_config_text(text)
    names = [tensor.name for tensor in (*message.input, *message.output)]
    if len(set(names)) != len(names) or not message.input or not message.output:
        raise ServeError(f"config.pbtxt of {message.name!r} must name distinct inputs and outputs, got {names}")
    if message.max_batch_size < 1:
        raise ServeError(f"config.pbtxt of {message.name!r}: max_batch_size must be >= 1 (batched model)")
    for tensor in (*message.input, *message.output):
        if not 2 <= len(tensor.dims) <= 3:
            raise ServeError(f"config.pbtxt: {tensor.name} has dims {list(tensor.dims)}; expected 2 or 3 dims without the batch axis")
    return message


# -- writing a repository -------------------------------------------------------------------------
@dataclass
class TritonRepoReport:
    """What :func:`export_triton` wrote."""

    repository: str
    model_dir: str
    flavour: str
    files: list[str]
    options: dict[str, Any]
    verified: str
    export: dict[str, Any] = field(default_factory=dict)
    schema_version: int = REPORT_SCHEMA_VERSION
    manifests: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_target(repository: Path, name: str, overwrite: bool) -> Path:
    """``<repository>/<name>``, if it may be written.

    Raises:
        UsageError: the repository is a file, or the model folder exists without ``overwrite``.
    """
    if repository.exists() and not repository.is_dir():
        raise UsageError(f"-o {repository} is a file; a Triton model repository is a folder")
    target = repository / name
    if target.exists() and not overwrite:
        raise UsageError(f"{target} already exists; pass --overwrite to replace it or choose another --triton-name")
    return target


def write_model_dir(repository: str | Path, name: str, files: dict[str, Path | str | bytes], overwrite: bool = False) -> Path:
    """Writes ``<repository>/<name>/`` whole or not at all.

    Args:
        files: ``{relative path: source file | text | bytes}``.
        overwrite: replace an existing ``<name>`` folder.

    Raises:
        UsageError: the model folder exists and ``overwrite`` is False.
    """
    repository = Path(repository)
    target = check_target(repository, name, overwrite)
    repository.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=repository, prefix=f".{name}.", suffix=".part"))
    try:
        for relative, content in files.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copyfile(content, path)
            elif isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
        os.chmod(staging, 0o755)
        replace_folder(staging, target)  # the old folder is kept until the new one is in place
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def model_py_source() -> Path:
    """The Python-backend model file shipped with bgm-deploy."""
    return Path(__file__).with_name("triton_model.py")


def write_python_repository(
    repository: str | Path, options: TritonModelOptions, spec: ModelSpec, copy_model: bool = True,
    python_path: str = "", overwrite: bool = False,
) -> Path:
    """A python-flavour model folder whose instances load ``spec``.

    The model is loaded once here when its target can run here, so a file that cannot load
    fails now with our message, not in the server log. Instances are GPU instances when the
    spec's target runs on a GPU (such a repository can be written on a machine without one).

    Args:
        copy_model: copy the model file into ``<name>/1/`` (a self-contained repository);
            False references it by absolute path (``serve``: no copy of a large file).
    """
    target = spec.resolve_target()
    kind = "gpu" if target.device == "cuda" else "cpu"
    if options.kind is not None and options.kind != kind:
        raise UsageError(f"--triton-device {options.kind} does not match target {target.name} ({target.device}); "
                         "pick the device with --target")
    if target.why_unusable() is None:
        with Predictor.from_spec(spec) as predictor:
            model_type, available, source = predictor.model_type, predictor.available_outputs, predictor.source
    else:
        # A repository for a GPU server written on a machine without one: checked from the
        # file's metadata here, loaded for real by the server (whose log then says why not).
        if target.device != "cuda":
            spec.check()  # a CPU target that cannot run here (a missing package) is an error
        config = spec.model_config()
        model_type, source = config.model_type, spec.source
        available = ("pha", "fgr", "rgba")
    missing = [name for name in options.outputs if name not in available]
    if missing:
        raise UsageError(f"outputs {', '.join(missing)} are not available from {source} (it provides "
                         f"{', '.join(available)})")
    files: dict[str, Path | str | bytes] = {f"1/{MODEL_PY}": model_py_source()}
    served = spec.with_paths_resolved()
    if spec.model is not None and copy_model:
        model = Path(spec.model)
        files[f"1/model{model.suffix}"] = model
        served = dataclasses.replace(served, model=f"model{model.suffix}", config_file=None)
        metadata = Path(spec.config_file) if spec.config_file is not None else sidecar_config_path(model)
        if metadata.is_file():  # the copy keeps its metadata for files a tool stripped
            files[f"1/model{model.suffix}{SIDECAR_SUFFIX}"] = metadata
    files["config.pbtxt"] = python_config_text(options, model_type, served, kind, python_path=python_path)
    return write_model_dir(repository, options.name, files, overwrite=overwrite)


def triton_export_outputs(flavour: str, outputs: tuple[str, ...] | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(served outputs, ONNX outputs to keep)`` for a flavour and the user's ``--outputs``.

    The python flavour serves pha/fgr/rgba from an ONNX file with pha and fgr (rgba is made
    from both); the onnxruntime flavour serves the ONNX outputs themselves. Default: pha, fgr.
    """
    served = tuple(outputs) if outputs else ("pha", "fgr")
    if flavour == "python":
        unknown = [name for name in served if name not in SERVED_OUTPUTS]
        if unknown:
            raise UsageError(f"--outputs {','.join(served)}: the python backend serves {', '.join(SERVED_OUTPUTS)} only")
        return served, ("pha", "fgr")
    return served, served


def export_triton(
    model_config: ModelConfig,
    repository: str | Path,
    options: TritonModelOptions | None = None,
    flavour: str = "onnxruntime",
    onnx: Any = None,
    checkpoint: str | Path | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    json_path: str | Path | None = None,
    kubernetes: KubernetesOptions | None = None,
    manifests_dir: str | Path | None = None,
) -> TritonRepoReport:
    """Exports ``model_config`` to ONNX (:func:`bgm_deploy.export.export`) and writes a Triton
    model repository around it.

    Args:
        flavour: ``"onnxruntime"`` (``model.onnx`` for Triton's onnxruntime backend) or
            ``"python"`` (the predictor in Triton's Python backend; needs bgm-deploy installed
            in the server's Python).
        onnx: an :class:`exporters.config.OnnxConfig`; with ``options.tensorrt`` its target is
            set to ``"tensorrt"`` (the TensorRT-safe graph).
        kubernetes, manifests_dir: also write Kubernetes manifests that run the repository
            (:mod:`bgm_deploy.serve.kubernetes`) into ``manifests_dir``; a GPU request when the
            instances are GPU instances.

    Raises:
        UsageError, ExportError, ServeError, MissingExtraError.
    """
    options = options or TritonModelOptions()
    options = dataclasses.replace(options, kind=options.kind or "cpu")  # the instance kind picks the target here
    if flavour not in FLAVOURS:
        raise UsageError(f"flavour={flavour!r} is not valid; valid: {', '.join(FLAVOURS)}")
    if flavour == "python" and options.tensorrt:
        raise UsageError("the TensorRT accelerator applies to the onnxruntime flavour only")
    # Fail before the slow export: no extra, or nowhere to write.
    import_model_config_pb2()
    check_target(Path(repository), options.name, overwrite)
    if (kubernetes is None) != (manifests_dir is None):
        raise UsageError("Kubernetes manifests need both a folder (--k8s DIR) and where the repository will live "
                         "(--model-uri)")
    if manifests_dir is not None:
        check_manifest_dir(manifests_dir, overwrite)
    if json_path is not None:
        check_output_file(json_path, "--json", inputs=[("--checkpoint", checkpoint)])
    onnx_config = onnx or OnnxConfig()
    if options.tensorrt:
        onnx_config = dataclasses.replace(onnx_config, target="tensorrt")
    say = progress or (lambda _message: None)
    with tempfile.TemporaryDirectory(prefix="bgm-triton-") as folder:
        onnx_path = Path(folder) / "model.onnx"

        def export_progress(message: str) -> None:
            if folder not in message:  # lines about the temporary export (its sidecar) would name a deleted folder
                say(message)

        report = export(model_config, onnx_path, "onnx", onnx=onnx_config, checkpoint=checkpoint,
                        progress=export_progress)
        if flavour == "python":
            spec = ModelSpec(model=str(onnx_path), target="cuda" if options.kind == "gpu" else None)
            target = write_python_repository(repository, options, spec, overwrite=overwrite)
            verified = ("loaded by the tritonserver bundled with PyTriton in the test suite" if options.kind == "cpu" else
                        "GPU instances: UNVERIFIED (no GPU in development); the CPU flavour is loaded in the test suite")
        else:
            inputs, outputs = _onnx_io(onnx_path)
            text = onnxruntime_config_text(options, inputs, outputs)
            target = write_model_dir(repository, options.name, {"config.pbtxt": text, "1/model.onnx": onnx_path},
                                     overwrite=overwrite)
            verified = "schema only (Triton ModelConfig protobuf); UNVERIFIED until loaded in the Triton container"
    files = sorted(str(path.relative_to(target.parent)) for path in target.rglob("*") if path.is_file())
    say(f"triton repository: {target} ({flavour}; {verified})")
    result = TritonRepoReport(str(Path(repository)), str(target), flavour, files, asdict(options), verified, report.export)
    if kubernetes is not None and manifests_dir is not None:
        kubernetes = dataclasses.replace(kubernetes, gpu=options.kind == "gpu")
        result.manifests = write_manifests(manifests_dir, kubernetes, overwrite=overwrite)
        say(f"kubernetes manifests: {', '.join(result.manifests)} (schema-validated offline, not applied to a cluster)")
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(result.to_dict(), indent=2))
    return result


def _onnx_io(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    import onnx
    from onnx import helper

    graph = onnx.load(str(path), load_external_data=False).graph

    def dtype(value: Any) -> str:
        return str(helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type))

    return {v.name: dtype(v) for v in graph.input}, {v.name: dtype(v) for v in graph.output}
