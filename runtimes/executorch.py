"""ExecuTorch runner: a ``.pte`` program (XNNPACK delegate) run by ``executorch.runtime``.

The program takes one input size, fixed at export; another size is refused with a message
naming the fix (re-export with ``--resolution``). ``executorch`` is an optional extra
(``pip install "bgm-deploy[executorch]"``), imported only when the runner is activated.
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

INSTALL = 'pip install "bgm-deploy[executorch]"'
# ExecuTorch's ScalarType codes as MethodMeta reports them (TensorInfo.dtype()).
_DTYPES = {6: np.float32, 5: np.float16, 4: np.int64, 3: np.int32, 0: np.uint8, 11: np.bool_}


def _import_runtime() -> Any:
    try:
        from executorch import runtime
    except ImportError:
        raise RuntimeUnavailableError(f"the executorch runner needs ExecuTorch, which is not installed: {INSTALL}") from None
    return runtime


@register_runner("executorch")
class ExecuTorchRunner(StaticShapeRunner):
    """Runs an ExecuTorch ``.pte`` program on the CPU.

    Args:
        path: the ``.pte`` file.
        threads: threads of ExecuTorch's (process-wide) XNNPACK thread pool; None leaves it
            as it is (one per core).
        outputs: output names for a file without bgm-deploy metadata.
    """

    format_label = "ExecuTorch"

    def __init__(self, path: str | Path, threads: int | None = None, outputs: tuple[str, ...] | None = None) -> None:
        super().__init__()
        check_threads(threads)
        self.path = Path(path)
        self.threads = threads
        self.outputs = outputs
        self.program: Any = None
        self.method: Any = None
        self._names: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())

    def _activate(self) -> None:
        runtime = _import_runtime()
        if not self.path.is_file():
            raise ModelFileError(f"ExecuTorch program {self.path} does not exist")
        inputs, outputs, _ = self._read_io(self.outputs)
        if self.threads is not None:
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(self.threads)  # the only thread setting the Python API has
        try:
            self.program = runtime.Runtime.get().load_program(str(self.path))
            self.method = self.program.load_method("forward")
        except (RuntimeError, ValueError) as exc:
            raise ModelFileError(f"{self.path}: ExecuTorch cannot load it ({first_line(exc)})") from None
        if self.method is None:
            raise ModelFileError(f"{self.path}: the program has no 'forward' method")
        self._names = (inputs, outputs)
        self.provider = "executorch:xnnpack"

    def _deactivate(self) -> None:
        self.method = None
        self.program = None

    def _io_metadata(self) -> tuple[dict[str, TensorMeta], dict[str, TensorMeta]]:
        meta = self.method.metadata
        inputs, outputs = self._names
        if meta.num_inputs() != len(inputs) or meta.num_outputs() != len(outputs):
            raise ModelFileError(f"{self.path}: the program has {meta.num_inputs()} inputs and {meta.num_outputs()} outputs, "
                                 f"its metadata names {len(inputs)} and {len(outputs)}")

        def tensor(info: Any, name: str) -> TensorMeta:
            dtype = _DTYPES.get(int(info.dtype()))
            if dtype is None:
                raise ModelFileError(f"{self.path}: tensor {name!r} has unsupported ExecuTorch dtype {info.dtype()}")
            return TensorMeta(name, np.dtype(dtype), tuple(int(d) for d in info.sizes()))

        return ({name: tensor(meta.input_tensor_meta(i), name) for i, name in enumerate(inputs)},
                {name: tensor(meta.output_tensor_meta(i), name) for i, name in enumerate(outputs)})

    def _infer(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        import torch

        arrays = [torch.from_numpy(to_numpy(feeds[name])) for name in self._names[0]]
        try:
            results = self.method.execute(arrays)
        except RuntimeError as exc:
            shapes = {key: tuple(value.shape) for key, value in feeds.items()}
            raise RunnerError(f"runner 'executorch' failed on inputs {shapes}: {first_line(exc)}") from None
        # ExecuTorch reuses its planned output buffers on the next call: copy.
        return {name: value.numpy().copy() for name, value in zip(self._names[1], results)}


def _build(request: LoadRequest) -> dict[str, Any]:
    if request.precision != "fp32":
        raise UsageError(f"precision {request.precision!r} is not valid for target executorch-cpu; the file is fp32")
    return {"path": request.path, "threads": request.threads}


register_target(Target(
    "executorch-cpu", "executorch", "cpu", ("executorch",),
    "ExecuTorch runtime with the XNNPACK delegate (.pte, fixed input size)",
    _build, module_missing("executorch", INSTALL), default_for=("executorch",), bench="executorch-cpu",
    recipe="executorch",
))
