"""What describes a BackgroundMattingV2 model without building one (no torch import):
the choices of every setting and the names of the inputs and outputs, in the order the
reference models take and return them. Exporters, runtimes and the API all read them here.
"""

from __future__ import annotations

BACKBONES = ("resnet50", "resnet101", "mobilenetv2")
MODEL_TYPES = ("refine", "base")
REFINE_MODES = ("full", "sampling", "thresholding")
CROP_METHODS = ("unfold", "roi_align", "gather")
REPLACE_METHODS = ("scatter_nd", "scatter_element")
KERNEL_SIZES = (1, 3)

INPUT_NAMES: tuple[str, ...] = ("src", "bgr")
# Output order of MattingRefine.forward / MattingBase.forward.
OUTPUT_NAMES: dict[str, tuple[str, ...]] = {
    "refine": ("pha", "fgr", "pha_sm", "fgr_sm", "err_sm", "ref_sm"),
    "base": ("pha", "fgr", "err", "hid"),
}
