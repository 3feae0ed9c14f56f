"""OpenVINO runner: an exported ONNX file compiled by OpenVINO (CPU plugin).

**Precision.** OpenVINO's CPU plugin picks its own *inference precision*: on a CPU with
AVX512-BF16 or AMX it is bf16 by default, and bf16 ruins BGMv2's refined patches (patch
coordinates and the top-k/threshold selection lose precision: alpha off by up to 1.0 at
1920x1080, issue 14). This runner therefore sets ``INFERENCE_PRECISION_HINT`` to ``f32``
unless told otherwise; ``precision="default"`` leaves OpenVINO's choice (what a user who
opens the file by hand gets), ``"bf16"``/``"f16"`` ask for it. ``provider`` names what
actually ran, e.g. ``openvino:CPU/f32``; ``verify`` reports it.

``openvino`` is an optional extra (``pip install "bgm-deploy[openvino]"``), imported only
when the runner is activated.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from model.errors import ModelFileError, RunnerError, RuntimeUnavailableError, UsageError

from .base import BaseRunner, Dim, TensorMeta, check_threads, to_numpy
from .registry import register_runner
from .targets import LoadRequest, Target, TargetOption, module_missing, register_target

log = logging.getLogger(__name__)

# "default" = no hint: OpenVINO's own choice (bf16 on CPUs with AVX512-BF16/AMX).
PRECISIONS = ("f32", "bf16", "f16", "default")
DEFAULT_PRECISION = "f32"
DEVICES = ("CPU",)


def import_openvino() -> Any:
    """``openvino``, or one clear line naming the extra to install."""
    try:
        import openvino  # heavy optional dependency: only when an OpenVINO runner starts
    except ImportError:
        raise RuntimeUnavailableError(
            'the openvino runner needs OpenVINO, which is not installed: pip install "bgm-deploy[openvino]"'
        ) from None
    return openvino


def cpu_precision_facts() -> dict[str, Any]:
    """What OpenVINO's CPU plugin would do here: its default inference precision and whether
    the CPU has native bf16 (``OPTIMIZATION_CAPABILITIES``)."""
    ov = import_openvino()
    core = ov.Core()
    return {
        "openvino": str(ov.__version__),
        "default_inference_precision": str(core.get_property("CPU", "INFERENCE_PRECISION_HINT")),
        "optimization_capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
    }


@register_runner("openvino")
class OpenVinoRunner(BaseRunner):
    """Runs an ONNX file with OpenVINO.

    Args:
        path: the ``.onnx`` file.
        device: OpenVINO device; ``"CPU"`` (the only one tested).
        precision: inference precision hint, one of :data:`PRECISIONS` (default ``"f32"``:
            the one that keeps mattes right).
        threads: ``INFERENCE_NUM_THREADS`` (None: OpenVINO's default).
    """

    def __init__(
        self, path: str | Path, device: str = "CPU", precision: str = DEFAULT_PRECISION, threads: int | None = None
    ) -> None:
        super().__init__()
        if device not in DEVICES:
            raise UsageError(f"device={device!r} is not valid for the openvino runner; valid: {', '.join(DEVICES)}")
        if precision not in PRECISIONS:
            raise UsageError(f"precision={precision!r} is not valid for the openvino runner; valid: {', '.join(PRECISIONS)}")
        check_threads(threads)
        self.path = Path(path)
        self.device = device
        self.precision = precision
        self.threads = threads
        self.compiled: Any = None
        self._request: Any = None
        self._names: tuple[list[str], list[str]] = ([], [])

    def _activate(self) -> None:
        ov = import_openvino()
        if not self.path.is_file():
            raise ModelFileError(f"ONNX model {self.path} does not exist")
        config: dict[str, Any] = {}
        if self.precision != "default":
            config["INFERENCE_PRECISION_HINT"] = self.precision
        if self.threads is not None:
            config["INFERENCE_NUM_THREADS"] = self.threads
        core = ov.Core()
        try:
            self.compiled = core.compile_model(core.read_model(str(self.path)), self.device, config)
        except RuntimeError as exc:  # OpenVINO raises RuntimeError with multi-line details
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelFileError(f"{self.path}: OpenVINO cannot compile it for {self.device} ({first[:300]})") from None
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        actual = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)  # ov.Type -> "f32"
        self.provider = f"openvino:{self.device}/{actual}"
        # ONNX tensor names in graph order: an OpenVINO port may carry several names (an
        # output that is also an intermediate value), get_any_name() picks any of them.
        import onnx  # heavy: only when a runner starts (the CLI reads this module's targets for --help)

        graph = onnx.load(str(self.path), load_external_data=False).graph
        initializers = {init.name for init in graph.initializer}
        self._names = (
            [value.name for value in graph.input if value.name not in initializers],
            [value.name for value in graph.output],
        )
        if actual != "f32":
            log.warning("!!! OpenVINO runs %s at inference precision %s: refined patches may be wrong", self.path, actual)
        self._request = self.compiled.create_infer_request()

    def _deactivate(self) -> None:
        self._request = None
        self.compiled = None

    def _io_metadata(self) -> tuple[dict[str, TensorMeta], dict[str, TensorMeta]]:
        def meta(port: Any, name: str) -> TensorMeta:
            if name not in port.get_names():
                raise ModelFileError(f"{self.path}: OpenVINO port {port.get_names()} does not carry ONNX name {name!r}")
            shape: tuple[Dim, ...] = tuple(
                dim.get_length() if dim.is_static else None for dim in port.get_partial_shape()
            )
            return TensorMeta(name, np.dtype(port.get_element_type().to_dtype()), shape)

        inputs, outputs = self._names
        return (
            {name: meta(port, name) for port, name in zip(self.compiled.inputs, inputs)},
            {name: meta(port, name) for port, name in zip(self.compiled.outputs, outputs)},
        )

    def _infer(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        arrays = {key: np.ascontiguousarray(to_numpy(value)) for key, value in feeds.items()}
        try:
            results = self._request.infer(arrays)
        except RuntimeError as exc:
            shapes = {key: tuple(value.shape) for key, value in arrays.items()}
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RunnerError(f"runner 'openvino' ({self.provider}) failed on inputs {shapes}: {first[:300]}") from None
        # Ports in graph order; the request reuses its output buffers between calls: copy.
        values = [np.array(results[port], copy=True) for port in self.compiled.outputs]
        return dict(zip(self._names[1], values))


def _build(request: LoadRequest) -> dict[str, Any]:
    return {"path": request.path, "threads": request.threads, **request.options}


register_target(Target(
    "openvino-cpu", "openvino", "cpu", ("onnx",), "OpenVINO CPU plugin (ONNX files, f32 unless told otherwise)",
    _build, module_missing("openvino", 'pip install "bgm-deploy[openvino]"'),
    options=(TargetOption("precision", "--openvino-precision",
                          "OpenVINO inference precision; default = OpenVINO's own (bf16 on AVX512-BF16/AMX CPUs)",
                          PRECISIONS, DEFAULT_PRECISION),),
    bench="openvino-cpu", recipe="onnx",
))
