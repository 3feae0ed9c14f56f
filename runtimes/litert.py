"""LiteRT runner: a ``.tflite`` file run by ai-edge-litert's interpreter with XNNPACK.

The interpreter (``pip install "bgm-deploy[litert]"``: ai-edge-litert, torch-free) applies
the XNNPACK delegate by default. Files converted by litert-torch name their signature
tensors ``args_0, args_1`` and ``output_0 ...``; they are mapped by position to the names
of the bgm-deploy metadata (the sidecar). The input size is fixed at export; another size
is refused with a message naming the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from model.errors import ModelFileError, RunnerError, RuntimeUnavailableError, UsageError

from .base import TensorMeta, check_threads
from .registry import register_runner
from .static import StaticShapeRunner, first_line, to_numpy
from .targets import LoadRequest, Target, module_missing, register_target

INSTALL = 'pip install "bgm-deploy[litert]"'
SIGNATURE = "serving_default"


def _import_interpreter() -> Any:
    try:
        from ai_edge_litert import interpreter
    except ImportError:
        raise RuntimeUnavailableError(f"the litert runner needs ai-edge-litert, which is not installed: {INSTALL}") from None
    return interpreter


@register_runner("litert")
class LiteRtRunner(StaticShapeRunner):
    """Runs a LiteRT ``.tflite`` file on the CPU (XNNPACK delegate).

    Args:
        path: the ``.tflite`` file.
        threads: interpreter threads (None: LiteRT's default).
        outputs: output names for a file without bgm-deploy metadata.
    """

    format_label = "LiteRT"

    def __init__(self, path: str | Path, threads: int | None = None, outputs: tuple[str, ...] | None = None) -> None:
        super().__init__()
        check_threads(threads)
        self.path = Path(path)
        self.threads = threads
        self.outputs = outputs
        self.interpreter: Any = None
        self._runner: Any = None
        self._names: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        self._keys: tuple[list[str], list[str]] = ([], [])

    def _activate(self) -> None:
        interpreter = _import_interpreter()
        if not self.path.is_file():
            raise ModelFileError(f"LiteRT model {self.path} does not exist")
        inputs, outputs, _ = self._read_io(self.outputs)
        try:
            self.interpreter = interpreter.Interpreter(model_path=str(self.path), num_threads=self.threads)
            signatures = self.interpreter.get_signature_list()
            self._runner = self.interpreter.get_signature_runner(SIGNATURE)
        except (RuntimeError, ValueError) as exc:
            raise ModelFileError(f"{self.path}: LiteRT cannot load it ({first_line(exc)})") from None
        signature = signatures.get(SIGNATURE, {})
        keys = (sorted(signature.get("inputs", []), key=_position), sorted(signature.get("outputs", []), key=_position))
        if len(keys[0]) != len(inputs) or len(keys[1]) != len(outputs):
            raise ModelFileError(f"{self.path}: its signature has {len(keys[0])} inputs and {len(keys[1])} outputs, "
                                 f"its metadata names {len(inputs)} and {len(outputs)}")
        self._names, self._keys = (inputs, outputs), keys
        self.provider = "litert:xnnpack"

    def _deactivate(self) -> None:
        self._runner = None
        self.interpreter = None

    def _io_metadata(self) -> tuple[dict[str, TensorMeta], dict[str, TensorMeta]]:
        details = (self._runner.get_input_details(), self._runner.get_output_details())

        def meta(name: str, detail: dict[str, Any]) -> TensorMeta:
            return TensorMeta(name, np.dtype(detail["dtype"]), tuple(int(d) for d in detail["shape"]))

        return tuple(  # type: ignore[return-value]
            {name: meta(name, found[key]) for name, key in zip(names, keys)}
            for names, keys, found in zip(self._names, self._keys, details)
        )

    def _infer(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        arrays = {key: to_numpy(feeds[name]) for name, key in zip(self._names[0], self._keys[0])}
        try:
            results = self._runner(**arrays)
        except (RuntimeError, ValueError) as exc:
            shapes = {key: tuple(value.shape) for key, value in feeds.items()}
            raise RunnerError(f"runner 'litert' failed on inputs {shapes}: {first_line(exc)}") from None
        return {name: np.array(results[key], copy=True) for name, key in zip(self._names[1], self._keys[1])}


def _position(key: str) -> int:
    """``args_1`` / ``output_3`` → 1 / 3: litert-torch numbers the signature tensors in order."""
    digits = key.rsplit("_", 1)[-1]
    return int(digits) if digits.isdigit() else 0


def _build(request: LoadRequest) -> dict[str, Any]:
    if request.precision != "fp32":
        raise UsageError(f"precision {request.precision!r} is not valid for target litert-cpu; the file is fp32")
    return {"path": request.path, "threads": request.threads}


register_target(Target(
    "litert-cpu", "litert", "cpu", ("litert",), "LiteRT interpreter with the XNNPACK delegate (.tflite, fixed input size)",
    _build, module_missing("ai_edge_litert", INSTALL), default_for=("litert",), bench="litert-cpu", recipe="litert",
))
