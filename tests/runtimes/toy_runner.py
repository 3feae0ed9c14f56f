"""A toy runtime, the way a plug-in adds one: this one file, nothing else edited.

It runs ONNX files by handing them to onnxruntime's CPU provider through numpy only, and
counts its calls, so a test can see that verify, matte and bench really used it.
Importing the module registers the runner and its target.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from runtimes import BaseRunner, register_runner
from runtimes.base import TensorMeta
from runtimes.targets import LoadRequest, Target, register_target

CALLS = {"infer": 0}


@register_runner("toy")
class ToyRunner(BaseRunner):
    """onnxruntime CPU, behind the runner contract, with a call counter."""

    def __init__(self, path: str, threads: int | None = None) -> None:
        super().__init__()
        self.path = str(path)
        self.threads = threads
        self.session: Any = None

    def _activate(self) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        self.session = onnxruntime.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.provider = "toy:onnxruntime-cpu"

    def _deactivate(self) -> None:
        self.session = None

    def _io_metadata(self) -> tuple[dict[str, TensorMeta], dict[str, TensorMeta]]:
        def meta(arg: Any) -> TensorMeta:
            dims = tuple(d if isinstance(d, int) else None for d in arg.shape)
            return TensorMeta(arg.name, np.dtype(np.float32), dims)

        return ({a.name: meta(a) for a in self.session.get_inputs()},
                {a.name: meta(a) for a in self.session.get_outputs()})

    def _infer(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        CALLS["infer"] += 1
        names = list(self._outputs)
        return dict(zip(names, self.session.run(names, {k: np.asarray(v) for k, v in feeds.items()})))


def _build(request: LoadRequest) -> dict[str, Any]:
    return {"path": request.path, "threads": request.threads}


TOY = register_target(Target("toy-cpu", "toy", "cpu", ("onnx",), "a toy runtime registered by one file", _build,
                             bench="toy-cpu", recipe="onnx"))
