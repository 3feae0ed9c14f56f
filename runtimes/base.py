"""The runner contract every backend implements (after Polygraphy's ``BaseRunner``).

Public ``activate`` / ``infer`` / ``deactivate`` do all checking; subclasses implement
``_activate``, ``_deactivate``, ``_infer`` and ``_io_metadata`` only.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from model.errors import RunnerError, UsageError

Dim = int | str | None


def check_threads(threads: int | None) -> None:
    """Raises :class:`UsageError` unless ``threads`` is None (the runtime's default) or >= 1."""
    if threads is not None and threads < 1:
        raise UsageError(f"threads={threads!r} is not valid; it must be >= 1 or None")


@dataclass(frozen=True)
class TensorMeta:
    """Name, numpy dtype and shape of one model input or output (str/None dims are dynamic)."""

    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...]

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {np.dtype(self.dtype).name}[{dims}]"


class BaseRunner(ABC):
    """A loaded model that maps a dict of numpy arrays to a dict of numpy arrays.

    Use as a context manager (``with create_runner(...) as runner: runner.infer(feeds)``).
    ``provider`` names what actually executed (e.g. ``"CPUExecutionProvider"``).
    """

    name: ClassVar[str] = "base"

    def __init__(self) -> None:
        self.is_active = False
        self.provider: str = "unknown"
        self.last_inference_time: float | None = None
        self._inputs: dict[str, TensorMeta] = {}
        self._outputs: dict[str, TensorMeta] = {}

    # -- lifecycle -------------------------------------------------------------------------
    def activate(self) -> None:
        if self.is_active:
            raise RunnerError(f"runner {self.name!r} is already active; call deactivate() first")
        self._activate()
        self._inputs, self._outputs = self._io_metadata()
        self.is_active = True

    def deactivate(self) -> None:
        if not self.is_active:
            raise RunnerError(f"runner {self.name!r} is not active; nothing to deactivate")
        try:
            self._deactivate()
        finally:
            self.is_active = False

    def __enter__(self) -> BaseRunner:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    # -- metadata --------------------------------------------------------------------------
    def input_metadata(self) -> dict[str, TensorMeta]:
        self._require_active("input_metadata")
        return dict(self._inputs)

    def output_metadata(self) -> dict[str, TensorMeta]:
        self._require_active("output_metadata")
        return dict(self._outputs)

    # -- inference -------------------------------------------------------------------------
    def infer(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        """Runs the model. Checks names, dtypes and ranks/fixed dims of ``feeds`` first."""
        self._require_active("infer")
        self._check_feeds(feeds)
        start = time.perf_counter()
        outputs = self._infer(feeds)
        self.last_inference_time = time.perf_counter() - start
        return outputs

    def prepare(self, feeds: dict[str, Any]) -> Callable[[], Any]:
        """Puts ``feeds`` where the runtime computes (device buffers, bound once) and returns a
        zero-argument call that runs the model on them, leaving the outputs where the runtime
        keeps them: what compute-only benchmarks time (no host↔device copies, no conversions).

        The default checks the feeds once and calls :meth:`_infer` on them; runtimes with
        device memory or tensors of their own override :meth:`_prepare`.
        """
        self._require_active("prepare")
        self._check_feeds(feeds)
        return self._prepare(feeds)

    def _prepare(self, feeds: dict[str, Any]) -> Callable[[], Any]:
        return lambda: self._infer(feeds)

    def synchronize(self) -> None:
        """Waits for work the runtime queued on a device (CPU runtimes: nothing to wait for)."""

    def _check_feeds(self, feeds: dict[str, Any]) -> None:
        expected = set(self._inputs)
        given = set(feeds)
        if given != expected:
            missing, extra = sorted(expected - given), sorted(given - expected)
            raise RunnerError(
                f"runner {self.name!r}: inputs must be exactly {sorted(expected)}; "
                f"missing {missing or 'none'}, unexpected {extra or 'none'}"
            )
        for key, meta in self._inputs.items():
            array = feeds[key]
            dtype = getattr(array, "dtype", None)
            shape = tuple(getattr(array, "shape", ()))
            if dtype is None or not _same_dtype(dtype, meta.dtype):
                raise RunnerError(
                    f"runner {self.name!r}: input {key!r} has dtype {dtype}, the model expects "
                    f"{np.dtype(meta.dtype).name} (convert with .astype(np.{np.dtype(meta.dtype).name}))"
                )
            if len(shape) != len(meta.shape) or any(
                isinstance(d, int) and d != s for d, s in zip(meta.shape, shape)
            ):
                raise RunnerError(f"runner {self.name!r}: input {key!r} has shape {shape}, the model expects {meta.describe()}")

    def _require_active(self, what: str) -> None:
        if not self.is_active:
            raise RunnerError(f"runner {self.name!r} is not active: call activate() (or use 'with') before {what}()")

    # -- for subclasses --------------------------------------------------------------------
    @abstractmethod
    def _activate(self) -> None: ...

    @abstractmethod
    def _deactivate(self) -> None: ...

    @abstractmethod
    def _io_metadata(self) -> tuple[dict[str, TensorMeta], dict[str, TensorMeta]]: ...

    @abstractmethod
    def _infer(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]: ...


def to_numpy(value: Any) -> np.ndarray:
    """A numpy array of a numpy array, a torch tensor (any device) or an array-like."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):  # torch tensor
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _same_dtype(actual: Any, expected: np.dtype) -> bool:
    """Numpy or torch dtypes compared by name (torch.float32 ~ float32)."""
    name = str(actual).replace("torch.", "")
    return name == np.dtype(expected).name
