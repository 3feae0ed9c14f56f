"""PyTorch reference models of BackgroundMattingV2 (checkpoint-compatible with the release),
and what describes and loads them.

``from model import MattingBase, MattingRefine`` works as in the original project. The
network classes are resolved on first use (PEP 562) so that the torch-free parts of this
layer (:mod:`model.spec`, :mod:`model.errors`, :mod:`model.config`) load without torch.

Modules: ``spec`` (setting choices, I/O names), ``errors`` (the exception hierarchy),
``config`` (:class:`ModelConfig`), ``checkpoint`` (strict, safe loading), ``synthetic``
(seeded weights for tests), and the networks (``matting``, ``refiner``, ``decoder``,
``mobilenet``, ``resnet``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .spec import BACKBONES, CROP_METHODS, KERNEL_SIZES, REFINE_MODES, REPLACE_METHODS

_NETWORKS = {
    "Decoder": ".decoder",
    "MattingBase": ".matting",
    "MattingRefine": ".matting",
    "validate_inputs": ".matting",
    "MobileNetV2Encoder": ".mobilenet",
    "Refiner": ".refiner",
    "crop_patches": ".refiner",
    "gather_patch_inputs": ".refiner",
    "replace_patches": ".refiner",
    "select_refinement_regions": ".refiner",
    "ResNetEncoder": ".resnet",
}

__all__ = [
    "BACKBONES",
    "CROP_METHODS",
    "KERNEL_SIZES",
    "REFINE_MODES",
    "REPLACE_METHODS",
    "Decoder",
    "MattingBase",
    "MattingRefine",
    "MobileNetV2Encoder",
    "Refiner",
    "ResNetEncoder",
    "crop_patches",
    "gather_patch_inputs",
    "replace_patches",
    "select_refinement_regions",
    "validate_inputs",
]

if TYPE_CHECKING:
    from .decoder import Decoder
    from .matting import MattingBase, MattingRefine, validate_inputs
    from .mobilenet import MobileNetV2Encoder
    from .refiner import (
        Refiner,
        crop_patches,
        gather_patch_inputs,
        replace_patches,
        select_refinement_regions,
    )
    from .resnet import ResNetEncoder


def __getattr__(name: str) -> Any:
    module = _NETWORKS.get(name)
    if module is None:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
