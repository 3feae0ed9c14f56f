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
# The reference model's own patch methods (the original project's defaults); exporters pick
# per-format defaults (exporters.config.PATCH_METHODS).
DEFAULT_CROP_METHOD = "unfold"
DEFAULT_REPLACE_METHOD = "scatter_nd"

INPUT_NAMES: tuple[str, ...] = ("src", "bgr")
# Output order of MattingRefine.forward / MattingBase.forward.
OUTPUT_NAMES: dict[str, tuple[str, ...]] = {
    "refine": ("pha", "fgr", "pha_sm", "fgr_sm", "err_sm", "ref_sm"),
    "base": ("pha", "fgr", "err", "hid"),
}

# Valid ranges of the refine settings (ModelConfig, MattingRefine and the scripted
# TorchScript model check against these). Below a 1% backbone scale the base network sees a
# handful of pixels (and below 2 px on the smaller side it cannot run at all).
BACKBONE_SCALE_RANGE = (0.01, 0.5)  # inclusive
MIN_SAMPLE_PIXELS = 16  # one 4x4 cell
THRESHOLD_RANGE = (0.0, 1.0)  # inclusive
# Largest image side any command accepts: 8192x8192 float32 inputs are already ~1.6 GB per
# batch item through the network; a typo (20000x20000) must fail at once, not allocate.
MAX_SIDE = 8192
MAX_SAMPLE_PIXELS = MAX_SIDE * MAX_SIDE


def refine_settings_error(
    backbone_scale: float,
    refine_mode: str,
    refine_sample_pixels: int,
    refine_threshold: float,
    refine_kernel_size: int,
    refine_patch_crop_method: str,
    refine_patch_replace_method: str,
    naming: str = "option",
) -> str | None:
    """The message naming the first refine setting that is not valid, or None.

    ``naming="option"`` names settings as the CLI options that set them (``--backbone-scale
    0.6``: ModelConfig, whose messages reach the command line); ``"argument"`` as the
    model's constructor arguments (``backbone_scale=0.6``: MattingRefine)."""

    def named(name: str, value: object) -> str:
        return f"--{name.replace('_', '-')} {value!r}" if naming == "option" else f"{name}={value!r}"

    choices = (
        ("refine_mode", refine_mode, REFINE_MODES),
        ("refine_kernel_size", refine_kernel_size, KERNEL_SIZES),
        ("refine_patch_crop_method", refine_patch_crop_method, CROP_METHODS),
        ("refine_patch_replace_method", refine_patch_replace_method, REPLACE_METHODS),
    )
    for name, value, valid in choices:
        if value not in valid:
            return f"{named(name, value)} is not valid; valid: {', '.join(map(str, valid))}"
    low, high = BACKBONE_SCALE_RANGE
    if not low <= backbone_scale <= high:
        return f"{named('backbone_scale', backbone_scale)} is not valid; it must be in [{low}, {high}]"
    if not MIN_SAMPLE_PIXELS <= refine_sample_pixels <= MAX_SAMPLE_PIXELS:
        return (f"{named('refine_sample_pixels', refine_sample_pixels)} is not valid; "
                f"it must be in {MIN_SAMPLE_PIXELS}..{MAX_SAMPLE_PIXELS}")
    low, high = THRESHOLD_RANGE
    if not low <= refine_threshold <= high:
        return f"{named('refine_threshold', refine_threshold)} is not valid; it must be in [{low}, {high}]"
    return None
