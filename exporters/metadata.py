"""Export metadata embedded in every exported file.

ONNX: ``metadata_props`` entry ``bgm_deploy`` = JSON; TorchScript: extra file
``bgm_deploy.json``; TensorRT engines: a ``<engine>.json`` sidecar. The JSON is
``{"schema_version": 1, "model_config": ModelConfig.to_dict(), "export": {...}}`` where
``export`` holds the format-specific export config plus torch/onnx versions, so that
verify, bench and the predictor can rebuild the PyTorch reference from the file alone.

Tools that rewrite a file (``polygraphy surgeon sanitize``, some converters) drop ONNX
``metadata_props``; so ``bgm-deploy export`` also writes the same JSON next to the file,
``<file>.bgm.json`` (:func:`sidecar_config_path`), and the readers take an explicit config
file. Read order of :func:`read_metadata`: (1) an explicit ``config`` file (``--config
FILE``), (2) the metadata embedded in the file, (3) the sidecar ``<file>.bgm.json`` next to
it. A rewritten file under a new name needs ``--config old.onnx.bgm.json`` (or a copy of the
sidecar renamed to ``<new name>.bgm.json``).
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.config import ModelConfig
from model.errors import ModelFileError

from .paths import looks_like_checkpoint


def _package_version() -> str:
    """The installed bgm-deploy version (pyproject.toml is the one place it is written)."""
    try:
        return importlib.metadata.version("bgm-deploy")
    except importlib.metadata.PackageNotFoundError:  # a checkout used without installing it
        return "0+unknown"


BGM_DEPLOY_VERSION = _package_version()
METADATA_KEY = "bgm_deploy"
TORCHSCRIPT_EXTRA_FILE = "bgm_deploy.json"
METADATA_SCHEMA_VERSION = 1
SIDECAR_SUFFIX = ".bgm.json"


@dataclass(frozen=True)
class ExportMetadata:
    """What an exported file says about itself."""

    model_config: ModelConfig
    format: str  # a registered file format: "onnx", "torchscript", "tensorrt", "executorch", ...
    export: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "schema_version": METADATA_SCHEMA_VERSION,
                "format": self.format,
                "model_config": self.model_config.to_dict(),
                "export": self.export,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str, source: str) -> ExportMetadata:
        try:
            data = json.loads(text)
            return cls(ModelConfig.from_dict(data["model_config"]), data["format"], data.get("export", {}))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ModelFileError(f"{source}: bgm-deploy metadata is unreadable ({exc}); re-export the model") from None


@dataclass(frozen=True)
class FileFormat:
    """A kind of exported model file, registered by the exporter that writes it.

    Attributes:
        name: the format (``onnx``), what targets declare they run.
        suffixes: file suffixes, lower case, with the dot.
        read_embedded: the metadata stored inside the file; raises :class:`ModelFileError`
            with "no bgm-deploy metadata" in the message when there is none (the sidecar is
            read then).
        directory: the "file" is a folder (a Core ML ``.mlpackage``).
    """

    name: str
    suffixes: tuple[str, ...]
    read_embedded: Callable[[Path], ExportMetadata]
    directory: bool = False


_FORMATS: dict[str, FileFormat] = {}


def register_format(fmt: FileFormat) -> FileFormat:
    """Adds a file format; a name or suffix registered twice raises."""
    taken = {suffix: other.name for other in _FORMATS.values() for suffix in other.suffixes}
    clash = [suffix for suffix in fmt.suffixes if suffix in taken]
    if fmt.name in _FORMATS or clash:
        raise ModelFileError(f"file format {fmt.name!r} is already registered (or its suffixes {clash} are)")
    _FORMATS[fmt.name] = fmt
    return fmt


def file_formats() -> list[FileFormat]:
    return list(_FORMATS.values())


def detect_format(path: str | Path) -> str:
    """The registered format of ``path`` from its suffix (``onnx``, ``torchscript``, ...);
    a suffix-less zip archive is taken for TorchScript."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file {path} does not exist")
    suffix = path.suffix.lower()
    for fmt in _FORMATS.values():
        if suffix in fmt.suffixes:
            if fmt.directory != path.is_dir():
                kind = "a folder" if fmt.directory else "a file"
                raise ModelFileError(f"model {path}: a {fmt.name} model is {kind}")
            return fmt.name
    if path.is_file():
        with open(path, "rb") as handle:
            head = handle.read(4)
        if head[:2] == b"PK":
            return "torchscript"
    known = ", ".join(s for fmt in _FORMATS.values() for s in fmt.suffixes)
    raise ModelFileError(f"{path}: cannot tell the model format from suffix {suffix!r}; known suffixes: {known}")


def sidecar_config_path(path: str | Path) -> Path:
    """``model.onnx`` → ``model.onnx.bgm.json``: the config export writes next to the file."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def read_config_file(config: str | Path, option: str = "--config") -> ExportMetadata:
    """Reads a bgm-deploy metadata JSON file (a sidecar written by export, or a copy)."""
    config = Path(config)
    if not config.is_file():
        raise ModelFileError(f"{option} {config} does not exist; pass the <model>{SIDECAR_SUFFIX} file export wrote")
    try:
        text = config.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{option} {config} is not readable ({exc})") from None
    return ExportMetadata.from_json(text, f"{option} {config}")


def read_metadata(path: str | Path, config: str | Path | None = None) -> ExportMetadata:
    """The metadata of an exported model file.

    Read order: ``config`` (an explicit metadata JSON file) if given, else the metadata
    embedded in the file, else the sidecar ``<file>.bgm.json`` next to it.

    Raises:
        ModelFileError: the file is missing, corrupt or carries no bgm-deploy metadata
            (and has no sidecar), or ``config`` is not a readable metadata file.
    """
    path = Path(path)
    fmt = detect_format(path)
    if config is not None:
        return read_config_file(config)
    try:
        return _read_embedded(path, fmt)
    except ModelFileError as exc:
        sidecar = sidecar_config_path(path)
        if fmt == "tensorrt" or not sidecar.is_file() or "no bgm-deploy metadata" not in str(exc):
            raise
        return read_config_file(sidecar, "sidecar")


def fixed_input_shape(export: dict[str, Any]) -> tuple[int, int, int, int] | None:
    """``(batch, 3, height, width)`` a file takes, or None when its sizes are dynamic."""
    shape = export.get("input_shape")
    if not shape or not all(isinstance(dim, int) for dim in shape):
        return None
    return tuple(shape)  # type: ignore[return-value]


def size_refusal(path: Any, fmt: str, expected: tuple[int, ...], got: tuple[int, ...]) -> str:
    """The one-line message for an input of another size than a fixed-size file takes."""
    batch, _, height, width = expected
    fix = f"re-export with --resolution {got[-1]}x{got[-2]}" if len(got) == 4 else "re-export at that size"
    return (f"{path}: this {fmt} file takes inputs of shape {list(expected)} only (fixed at export: "
            f"{width}x{height}, batch {batch}); got {list(got)}: resize the images to {width}x{height}, or {fix}")


def _read_onnx(path: Path) -> ExportMetadata:
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends without a common base
        raise ModelFileError(f"{path}: not a readable ONNX file ({type(exc).__name__}: {exc})") from None
    props = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY not in props:
        raise ModelFileError(
            f"{path}: has no bgm-deploy metadata (not exported by bgm-deploy, or a tool stripped it) and no "
            f"sidecar {sidecar_config_path(path).name}; pass the config export wrote with --config "
            f"FILE{SIDECAR_SUFFIX}, or export the model with 'bgm-deploy export' (matte also runs a PyTorch "
            "checkpoint directly: --checkpoint FILE)"
        )
    return ExportMetadata.from_json(props[METADATA_KEY], str(path))


def _read_torchscript(path: Path) -> ExportMetadata:
    import torch

    if looks_like_checkpoint(path):
        raise ModelFileError(
            f"{path} is a PyTorch checkpoint (weights), not an exported model; pass it with --checkpoint {path}, "
            f"or export it first: bgm-deploy export --format onnx --checkpoint {path} -o model.onnx"
        )
    extra = {TORCHSCRIPT_EXTRA_FILE: ""}
    try:
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except (RuntimeError, ValueError) as exc:
        raise ModelFileError(f"{path}: not a readable TorchScript file ({str(exc).splitlines()[0]})") from None
    if not extra[TORCHSCRIPT_EXTRA_FILE]:
        raise ModelFileError(
            f"{path}: has no bgm-deploy metadata (extra file {TORCHSCRIPT_EXTRA_FILE} missing) and no sidecar "
            f"{sidecar_config_path(path).name}; pass the config export wrote with --config FILE{SIDECAR_SUFFIX}"
        )
    text = extra[TORCHSCRIPT_EXTRA_FILE]
    return ExportMetadata.from_json(text.decode() if isinstance(text, bytes) else text, str(path))


def _read_engine(path: Path) -> ExportMetadata:
    sidecar = path.with_suffix(path.suffix + ".json")
    if not sidecar.is_file():
        raise ModelFileError(f"{path}: engine metadata sidecar {sidecar.name} is missing; rebuild the engine with bgm-deploy")
    return ExportMetadata.from_json(sidecar.read_text(), str(sidecar))


def _read_embedded(path: Path, fmt: str) -> ExportMetadata:
    return _FORMATS[fmt].read_embedded(path)


register_format(FileFormat("onnx", (".onnx",), _read_onnx))
register_format(FileFormat("torchscript", (".pt", ".pth", ".ts", ".torchscript", ".jit"), _read_torchscript))
register_format(FileFormat("tensorrt", (".engine", ".plan", ".trt"), _read_engine))
