"""PyTorch reference models of BackgroundMattingV2 (checkpoint-compatible with the release).

``from model import MattingBase, MattingRefine`` works as in the original project.
"""

from __future__ import annotations

from .decoder import Decoder
from .matting import BACKBONES, MattingBase, MattingRefine, validate_inputs
from .mobilenet import MobileNetV2Encoder
from .refiner import (
    CROP_METHODS,
    KERNEL_SIZES,
    REFINE_MODES,
    REPLACE_METHODS,
    Refiner,
    crop_patches,
    gather_patch_inputs,
    replace_patches,
    select_refinement_regions,
)
from .resnet import ResNetEncoder

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
