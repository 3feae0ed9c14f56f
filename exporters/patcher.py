"""Export-only rewrites of the reference model, as data, applied by a context manager.

A :class:`Patch` names an owner object, an attribute and its replacement. The owner is
found from the model at patch time:

* ``target=""`` — the model itself; ``target="refiner"`` / ``"backbone"`` — a submodule
  (``model.get_submodule(target)``);
* ``target="module:model.refiner"`` — an importable Python module, to replace one of its
  *globals*. This is how a free function used inside ``forward`` is swapped without a
  hook in ``model/``: :class:`model.refiner.Refiner` calls the module-level
  ``select_refinement_regions``, so the TensorRT-safe selection is the patch
  ``Patch("module:model.refiner", "select_refinement_regions", select_refinement_regions_tensorrt)``
  (see ``exporters/tensorrt_safe.py``, list ``TENSORRT_PATCHES``, applied when
  ``OnnxConfig.target == "tensorrt"``). Module globals are process-wide: while the
  patcher is active every model in the process sees the replacement, so export under
  one patcher at a time.

With ``wrap=True`` the value is a factory called with the original attribute and
returning the replacement (e.g. a subclass to assign to ``__class__``, which is how the
TorchScript exporter swaps in scriptable methods: ``torch.jit.script`` compiles the
methods of the *class*, so instance attributes would be ignored).

:class:`ModelPatcher` applies the patches in order on ``__enter__`` and restores every
owner on ``__exit__`` in reverse order, also when the export raises. An attribute that
was not in the owner's ``__dict__`` (a method inherited from the class) is deleted again
rather than re-assigned, so the model ends up exactly as it was.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType, TracebackType
from typing import Any

from torch import Tensor, nn

from model.errors import ExportError

MODULE_PREFIX = "module:"
_MISSING = object()


@dataclass(frozen=True)
class Patch:
    """One attribute replacement.

    Attributes:
        target: ``""`` (the model), a submodule path, or ``"module:<python.module>"``.
        attribute: name of the attribute to replace.
        value: the replacement, or with ``wrap=True`` a factory ``value(original)``.
        wrap: call ``value`` with the original attribute to get the replacement.
        optional: skip silently when the target or attribute does not exist (e.g. a
            ``refiner`` patch applied to a MattingBase).
        reason: why the rewrite is needed (shown in docs and errors).
    """

    target: str
    attribute: str
    value: Any
    wrap: bool = False
    optional: bool = False
    reason: str = ""

    def owner(self, model: nn.Module) -> object | None:
        """The object whose attribute is replaced, or None if absent and ``optional``."""
        try:
            if self.target.startswith(MODULE_PREFIX):
                return importlib.import_module(self.target[len(MODULE_PREFIX) :])
            return model.get_submodule(self.target) if self.target else model
        except (AttributeError, ImportError) as exc:
            if self.optional:
                return None
            raise ExportError(f"export patch {self.target or '<model>'}.{self.attribute}: target not found ({exc})") from None


def _skip_validation(src: Tensor, bgr: Tensor) -> None:
    """Replaces ``validate``: its Python checks read concrete shapes, which are symbolic
    (and must stay so) while exporting; inputs are checked by the runners instead."""


# Applied to every ONNX export (target "generic"; TensorRT adds its own list after these).
EXPORT_PATCHES: tuple[Patch, ...] = (
    Patch("", "validate", _skip_validation, reason="input checks read concrete shapes; shapes are symbolic"),
)


class ModelPatcher:
    """Context manager applying :class:`Patch` es to a model and restoring it afterwards.

    Example:
        >>> with ModelPatcher(model, EXPORT_PATCHES):
        ...     torch.onnx.export(model, ...)
    """

    def __init__(self, model: nn.Module, patches: Sequence[Patch]) -> None:
        self.model = model
        self.patches = tuple(patches)
        self._undo: list[tuple[object, str, object]] = []

    def __enter__(self) -> nn.Module:
        try:
            for patch in self.patches:
                owner = patch.owner(self.model)
                if owner is None:
                    continue
                if not hasattr(owner, patch.attribute):
                    if patch.optional:
                        continue
                    raise ExportError(f"export patch {patch.target or '<model>'}.{patch.attribute}: no such attribute")
                original = getattr(owner, patch.attribute)
                own = vars(owner).get(patch.attribute, _MISSING) if not isinstance(owner, ModuleType) else original
                if patch.attribute == "__class__":
                    own = original
                replacement = patch.value(original) if patch.wrap else patch.value
                setattr(owner, patch.attribute, replacement)
                self._undo.append((owner, patch.attribute, own))
        except BaseException:
            self._restore()
            raise
        return self.model

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._restore()

    def _restore(self) -> None:
        while self._undo:
            owner, attribute, own = self._undo.pop()
            if own is _MISSING:
                delattr(owner, attribute)
            else:
                setattr(owner, attribute, own)
