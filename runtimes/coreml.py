"""Core ML runner: a ``.mlpackage`` run by coremltools on macOS (CPU compute units).

UNVERIFIED: written against coremltools' ``MLModel.predict`` API; no Mac was available in
development, and coremltools' Linux wheel cannot predict (no ``libcoremlpython``). The
target therefore reports itself unusable off macOS, and ``bgm-deploy verify`` says so.
On a Mac: ``bgm-deploy verify model.mlpackage`` is the check that makes it verified.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np

from model.errors import ModelFileError, RunnerError, RuntimeUnavailableError, UsageError

from .base import TensorMeta
from .registry import register_runner
from .static import StaticShapeRunner, first_line, to_numpy
from .targets import LoadRequest, Target, all_of, module_missing, register_target

INSTALL = 'pip install "bgm-deploy[coreml]"'
COMPUTE_UNITS = ("CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL")


def _import_coremltools() -> Any:
    try:
        import coremltools
    except ImportError:
        raise RuntimeUnavailableError(f"the coreml runner needs coremltools, which is not installed: {INSTALL}") from None
    return coremltools


def macos_missing() -> str | None:
    """Core ML predictions run on macOS only."""
    if platform.system() != "Darwin":
        return f"Core ML predictions need macOS (this is {platform.system()}; coremltools converts here but cannot predict)"
    return None


@register_runner("coreml")
class CoreMlRunner(StaticShapeRunner):
    """Runs a Core ML ``.mlpackage`` (macOS only; unverified).

    Args:
        path: the ``.mlpackage`` folder.
        compute_units: one of :data:`COMPUTE_UNITS` (default ``CPU_ONLY``: float32 on the CPU,
            the precision parity is defined at).
        outputs: output names for a package without bgm-deploy metadata.
    """

    format_label = "Core ML"

    def __init__(self, path: str | Path, compute_units: str = "CPU_ONLY", outputs: tuple[str, ...] | None = None) -> None:
        super().__init__()
        if compute_units not in COMPUTE_UNITS:
            raise UsageError(f"compute_units={compute_units!r} is not valid; valid: {', '.join(COMPUTE_UNITS)}")
        self.path = Path(path)
        self.compute_units = compute_units
        self.outputs = outputs
        self.model: Any = None
        self._names: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())

    def _activate(self) -> None:
        ct = _import_coremltools()
        reason = macos_missing()
        if reason is not None:
            raise RuntimeUnavailableError(f"runner 'coreml': {reason}")
        if not self.path.is_dir():
            raise ModelFileError(f"Core ML package {self.path} does not exist")
        inputs, outputs, _ = self._read_io(self.outputs)
        try:
            self.model = ct.models.MLModel(str(self.path), compute_units=getattr(ct.ComputeUnit, self.compute_units))
        except Exception as exc:  # noqa: BLE001 - coremltools raises bare Exception for packages it cannot load
            raise ModelFileError(f"{self.path}: Core ML cannot load it ({first_line(exc)})") from None
        self._names = (inputs, outputs)
        self.provider = f"coreml:{self.compute_units}"

    def _deactivate(self) -> None:
        self.model = None

    def _io_metadata(self) -> tuple[dict[str, TensorMeta], dict[str, TensorMeta]]:
        description = self.model.get_spec().description

        def meta(feature: Any) -> TensorMeta:
            return TensorMeta(feature.name, np.dtype(np.float32), tuple(int(d) for d in feature.type.multiArrayType.shape))

        return ({f.name: meta(f) for f in description.input}, {f.name: meta(f) for f in description.output})

    def _infer(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        arrays = {name: to_numpy(feeds[name]) for name in self._names[0]}
        try:
            results = self.model.predict(arrays)
        except Exception as exc:  # noqa: BLE001 - coremltools raises bare Exception on prediction errors
            shapes = {key: tuple(value.shape) for key, value in arrays.items()}
            raise RunnerError(f"runner 'coreml' failed on inputs {shapes}: {first_line(exc)}") from None
        return {name: np.asarray(results[name], dtype=np.float32) for name in self._names[1]}


def _build(request: LoadRequest) -> dict[str, Any]:
    if request.precision != "fp32":
        raise UsageError(f"precision {request.precision!r} is not valid for target coreml-cpu; the package is float32")
    return {"path": request.path}


register_target(Target(
    "coreml-cpu", "coreml", "cpu", ("coreml",), "Core ML on macOS, CPU compute units (.mlpackage; unverified)",
    _build, all_of(module_missing("coremltools", INSTALL), macos_missing), default_for=("coreml",), bench="coreml-cpu",
    recipe="coreml", verified=False,
))
