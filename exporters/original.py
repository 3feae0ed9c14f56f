"""The original project's ONNX recipe, rebuilt for comparison (the ``onnx-original`` bench row).

Users compare our export with what they had: the original project's ``export_onnx.py`` run
on its own model code. That recipe, as described in ``../shared/reference/BGMV2_FACTS.md``
and reproduced here on our reference model (same weights, same results):

* the legacy TorchScript-based exporter, opset 12, constant folding on, no onnxsim;
* patch crop ``roi_align`` (RoiAlign-10, i.e. ``aligned=False`` windows) and replace
  ``scatter_element``;
* its refiner's data flow (:func:`original_refiner_forward`): ``cat(hid, pha, fgr)`` and
  ``cat(src, bgr)`` resized to half resolution and zero-padded as whole maps, each cropped
  per selected cell, concatenated, run through the patch network; the full-resolution
  windows cropped from the padded full-resolution ``cat(src, bgr)``; the coarse ``pha`` and
  ``fgr`` concatenated, upsampled to full resolution as one 4-channel map, the patches
  written into it and the two outputs sliced back out;
* its sampling: a plain top-k (``k = sample_pixels // 16``) over the error map, so like the
  original it cannot run where ``k`` exceeds the quarter-resolution grid (small inputs).

Not reproduced, because they change results rather than cost: the original's ``scatter_element``
batch stride (wrong at batch >= 2) and its Python ``if`` on the patch count, which tracing
freezes to the refine branch (here the graph always has that branch, which is what a trace
with selected patches gives). Like the original's, the graph has no extra patch to keep
the patch batch non-empty, so with zero selected cells it depends on the runtime accepting
empty convolutions.

This is a measuring stick, not an export users should deploy: use :func:`exporters.onnx.onnx_from_torch`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import ModelConfig
from model.errors import ExportError, UsageError
from model.refiner import crop_patches, replace_patches, select_refinement_regions

from .config import OnnxConfig, output_names
from .onnx import OutputSelector, _export_graph, check_writable, example_inputs, temp_path_for
from .patcher import EXPORT_PATCHES, ModelPatcher, Patch

ORIGINAL_OPSET = 12
ORIGINAL_CROP = "roi_align"
ORIGINAL_REPLACE = "scatter_element"


def original_selection(err: Tensor, mode: str, sample_pixels: int, threshold: float, prevent_oversampling: bool) -> Tensor:
    """The original's cell selection: top-k over the flattened error map (k a constant);
    thresholding is the reference's own."""
    if mode != "sampling":
        return select_refinement_regions(err, mode, sample_pixels, threshold, prevent_oversampling)
    flat = err.flatten(1)
    indices = flat.topk(sample_pixels // 16, dim=1, sorted=False).indices
    ref = torch.zeros_like(flat).scatter(1, indices, 1.0)
    if prevent_oversampling:
        ref = ref * (flat > 0).to(ref.dtype)
    return ref.view_as(err)


def original_refiner_forward(original: Callable[..., tuple[Tensor, Tensor, Tensor]]) -> Callable[..., tuple[Tensor, Tensor, Tensor]]:
    """A replacement of :meth:`model.refiner.Refiner.forward` with the original's data flow."""
    refiner = original.__self__  # type: ignore[attr-defined]

    def forward(
        src: Tensor, bgr: Tensor, pha: Tensor, fgr: Tensor, err: Tensor, hid: Tensor, mode: str = "sampling",
        sample_pixels: int = 80_000, threshold: float = 0.1, prevent_oversampling: bool = True,
        crop_method: str = ORIGINAL_CROP, replace_method: str = ORIGINAL_REPLACE,
    ) -> tuple[Tensor, Tensor, Tensor]:
        if mode == "full":
            return original(src, bgr, pha, fgr, err, hid, mode, sample_pixels, threshold, prevent_oversampling,
                            crop_method, replace_method)
        full_h, full_w = src.shape[2], src.shape[3]
        half_h, half_w = full_h // 2, full_w // 2
        three = refiner.kernel_size == 3
        src_bgr = torch.cat([src, bgr], dim=1)
        err = F.interpolate(err, size=(full_h // 4, full_w // 4), mode="bilinear", align_corners=False)
        ref = original_selection(err, mode, sample_pixels, threshold, prevent_oversampling)
        idx = torch.nonzero(ref.squeeze(1))
        x = F.interpolate(torch.cat([hid, pha, fgr], dim=1), size=(half_h, half_w), mode="bilinear", align_corners=False)
        x = crop_patches(x, idx, 2, 3 if three else 0, crop_method)
        y = F.interpolate(src_bgr, size=(half_h, half_w), mode="bilinear", align_corners=False)
        y = crop_patches(y, idx, 2, 3 if three else 0, crop_method)
        x = refiner.relu(refiner.bn1(refiner.conv1(torch.cat([x, y], dim=1))))
        x = refiner.relu(refiner.bn2(refiner.conv2(x)))
        x = F.interpolate(x, size=(8, 8) if three else (4, 4), mode="nearest")
        y = crop_patches(src_bgr, idx, 4, 2 if three else 0, crop_method)
        x = refiner.relu(refiner.bn3(refiner.conv3(torch.cat([x, y], dim=1))))
        x = refiner.conv4(x)
        out = F.interpolate(torch.cat([pha, fgr], dim=1), size=(full_h, full_w), mode="bilinear", align_corners=False)
        out = replace_patches(out, x, idx, replace_method)
        return out[:, :1], out[:, 1:], ref

    return forward


ORIGINAL_PATCHES: tuple[Patch, ...] = (
    *EXPORT_PATCHES,
    Patch("refiner", "forward", original_refiner_forward, wrap=True, optional=True,
          reason="the original project's refiner data flow (whole-map resize/pad/crop, 4-channel pha+fgr map)"),
)


def original_recipe_config(model_config: ModelConfig) -> ModelConfig:
    """``model_config`` with the original recipe's patch methods."""
    if model_config.model_type != "refine":
        return model_config
    return model_config.replace(refine_patch_crop_method=ORIGINAL_CROP, refine_patch_replace_method=ORIGINAL_REPLACE)


def export_original_recipe(model: nn.Module, output: str | Path, trace_resolution: tuple[int, int], trace_batch: int = 1) -> Path:
    """Exports ``model`` the way the original project's script does (see the module docstring).

    Args:
        model: an eval-mode reference built from :func:`original_recipe_config` (its crop and
            replace methods must be roi_align / scatter_element).
        output: the ``.onnx`` path, written atomically.
        trace_resolution: ``(width, height)`` of the example inputs (the graph stays dynamic).

    Raises:
        UsageError: the sample budget exceeds the grid at ``trace_resolution`` (the original's top-k fails).
        ExportError: the model is not set up for the recipe, or the exporter failed.
    """
    output = Path(output)
    check_writable(output)
    if hasattr(model, "refiner") and (
        model.refine_patch_crop_method != ORIGINAL_CROP or model.refine_patch_replace_method != ORIGINAL_REPLACE
    ):
        raise ExportError("the original recipe exports roi_align crops and scatter_element replace; "
                          "build the model from original_recipe_config(config)")
    model_type = "refine" if hasattr(model, "refiner") else "base"
    names = output_names(model_type)
    width, height = trace_resolution
    cells = (width // 4) * (height // 4)
    if model_type == "refine" and model.refine_mode == "sampling" and model.refine_sample_pixels // 16 > cells:
        raise UsageError(
            f"the original ONNX recipe cannot run at {width}x{height}: its top-k takes sample_pixels // 16 = "
            f"{model.refine_sample_pixels // 16} cells of a {cells}-cell grid (a defect of the original, kept in this "
            f"baseline); use --sample-pixels {16 * cells} or less, or a larger --resolution"
        )
    # The legacy exporter at opset 12, as our own exports call it (constant folding on, dynamic
    # batch/height/width); no simplification or checks after it, as in the original's script.
    config = OnnxConfig(opset=ORIGINAL_OPSET, exporter="legacy", trace_batch=trace_batch, trace_resolution=(width, height))
    wrapper = OutputSelector(model, tuple(range(len(names)))).eval()
    temp = temp_path_for(output, ".onnx")
    try:
        with ModelPatcher(model, ORIGINAL_PATCHES), torch.no_grad():
            _export_graph(wrapper, example_inputs(config, torch.float32), names, config, temp)
        os.replace(temp, output)
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - the exporter raises many unrelated types; re-raised as one
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ExportError(f"the original ONNX recipe failed to export: {type(exc).__name__}: {first[:300]}") from exc
    finally:
        if temp.exists():
            temp.unlink()
    return output
