"""AOTInductor runner: a ``.pt2`` package run by ``torch._inductor.aoti_load_package``.

The same compiled library a C++ server loads with ``torch::inductor::AOTIModelPackageLoader``;
here through torch's Python loader. Sizes are dynamic unless the package was exported with
a fixed size (then another size is refused with a message naming the fix). Needs torch
(imported when the runner is activated).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from model.errors import ModelFileError, RunnerError, RuntimeUnavailableError, UsageError

from .base import Dim, TensorMeta, check_threads
from .registry import register_runner
from .static import StaticShapeRunner, first_line, to_numpy
from .targets import LoadRequest, Target, register_target

# Channels of the outputs (documented in model/matting.py); the other dims follow the input.
_CHANNELS = {"pha": 1, "fgr": 3, "pha_sm": 1, "fgr_sm": 3, "err_sm": 1, "ref_sm": 1, "err": 1, "hid": 32}


@register_runner("aoti")
class AotiRunner(StaticShapeRunner):
    """Runs an AOTInductor ``.pt2`` package on the CPU.

    Args:
        path: the ``.pt2`` file.
        threads: torch's intra-op threads (process-wide; None leaves torch's setting).
        outputs: output names for a file without bgm-deploy metadata.
    """

    format_label = "AOTInductor"

    def __init__(self, path: str | Path, threads: int | None = None, outputs: tuple[str, ...] | None = None) -> None:
        super().__init__()
        check_threads(threads)
        self.path = Path(path)
        self.threads = threads
        self.outputs = outputs
        self.loader: Any = None
        self._names: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        self._shape: tuple[Dim, ...] = ("batch", 3, "height", "width")

    def _activate(self) -> None:
        try:
            import torch
        except ImportError:
            raise RuntimeUnavailableError("the aoti runner needs PyTorch: pip install torch") from None
        if not self.path.is_file():
            raise ModelFileError(f"AOTInductor package {self.path} does not exist")
        inputs, outputs, export = self._read_io(self.outputs)
        shape = export.get("input_shape")
        if shape:
            self._shape = tuple(dim if isinstance(dim, int) else str(dim) for dim in shape)
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            self.loader = torch._inductor.aoti_load_package(str(self.path))
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelFileError(f"{self.path}: AOTInductor cannot load it ({first_line(exc)}); a package runs on "
                                 "the torch version and CPU instruction sets it was compiled for") from None
        self._names = (inputs, outputs)
        self.provider = f"aoti:cpu/torch-{torch.__version__}"

    def _deactivate(self) -> None:
        self.loader = None

    def _io_metadata(self) -> tuple[dict[str, TensorMeta], dict[str, TensorMeta]]:
        inputs, outputs = self._names
        return ({name: TensorMeta(name, np.dtype(np.float32), self._shape) for name in inputs},
                {name: TensorMeta(name, np.dtype(np.float32), (self._shape[0], _CHANNELS.get(name), None, None))
                 for name in outputs})

    def _infer(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        import torch

        tensors = [torch.from_numpy(to_numpy(feeds[name])) for name in self._names[0]]
        try:
            with torch.inference_mode():
                results = self.loader(*tensors)
        except RuntimeError as exc:
            shapes = {key: tuple(value.shape) for key, value in feeds.items()}
            raise RunnerError(f"runner 'aoti' failed on inputs {shapes}: {first_line(exc)}") from None
        return {name: value.numpy() for name, value in zip(self._names[1], results)}


def _build(request: LoadRequest) -> dict[str, Any]:
    if request.precision != "fp32":
        raise UsageError(f"precision {request.precision!r} is not valid for target aoti-cpu; the file is fp32")
    return {"path": request.path, "threads": request.threads}


register_target(Target(
    "aoti-cpu", "aoti", "cpu", ("aoti",), "AOTInductor package (.pt2) on the CPU, loaded by torch (as libtorch does in C++)",
    _build, default_for=("aoti",), bench="aoti-cpu", recipe="aoti", bench_by_default=False,
))
