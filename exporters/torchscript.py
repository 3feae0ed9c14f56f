"""``torchscript_from_torch``: a *scripted* MattingBase / MattingRefine.

Scripted, not traced, so that the refinement settings stay attributes of the loaded
module, as in the original TorchScript release::

    model = torch.jit.load("matting.torchscript")  # torch only: no torchvision needed*
    model.backbone_scale = 0.125
    model.refine_mode = "thresholding"      # or "sampling" / "full"
    model.refine_sample_pixels = 320_000
    model.refine_threshold = 0.05
    model.refine_prevent_oversampling = False
    outputs = model(src, bgr)               # tuple in the order of metadata export["outputs"]

``torch.jit.script`` compiles the methods of a module's *class*, and three reference
methods use Python that TorchScript cannot compile (starred unpacking in
``run_network``, a ``range`` index into ``nn.Sequential`` in the MobileNetV2 encoder,
``repr`` f-strings in the input checks). The export therefore applies :data:`SCRIPT_PATCHES`:
``__class__`` swaps to the subclasses below, which override only those methods with
equivalent scriptable ones (same numerics: the network code itself is inherited). The
scripted ``validate`` still checks inputs and the (settable) settings at run time.

\* The patch crop method is fixed at export time (metadata ``export["needs_torchvision_ops"]``):
with ``unfold`` (the TorchScript default) or ``gather`` the scripted graph holds no call of
``torchvision::roi_align``, so a bare ``torch.jit.load`` (or libtorch in C++) loads it
without torchvision's op library; only a ``roi_align`` export needs ``import torchvision``
(C++: link torchvision's ops) before loading. Setting ``refine_patch_crop_method`` to
another method after loading raises a ValueError naming the methods compiled in.
"""

from __future__ import annotations

import copy
import os
import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from model import MattingBase, MattingRefine
from model.config import ModelConfig
from model.errors import ExportError
from model.mobilenet import MobileNetV2Encoder
from model.refiner import crop_gather, crop_unfold
from model.spec import BACKBONE_SCALE_RANGE, MIN_SAMPLE_PIXELS, REFINE_MODES, THRESHOLD_RANGE

from .config import TorchScriptConfig, output_names
from .metadata import TORCHSCRIPT_EXTRA_FILE, ExportMetadata
from .onnx import check_writable, export_metadata, temp_path_for
from .patcher import ModelPatcher, Patch

Progress = Callable[[str], None]


@dataclass
class TorchScriptExportResult:
    """What :func:`torchscript_from_torch` produced."""

    path: Path
    size_bytes: int
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    outputs: tuple[str, ...] = ()
    metadata: ExportMetadata | None = None


def _check_pair(src: Tensor, bgr: Tensor) -> None:
    if src.dim() != 4 or src.shape[1] != 3:
        raise ValueError("src must have shape (B, 3, H, W)")
    if src.shape != bgr.shape:
        raise ValueError("src and bgr must have the same shape")
    if src.dtype != bgr.dtype or not src.is_floating_point():
        raise ValueError("src and bgr must be float tensors of one dtype, values in 0..1")


class ScriptableMobileNetV2Encoder(MobileNetV2Encoder):
    """The reference encoder with its block loop written the way TorchScript accepts."""

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # noqa: UP006 - TorchScript
        x0 = x
        x1 = x
        x2 = x
        x3 = x
        for i, block in enumerate(self.features):
            x = block(x)
            if i == 1:
                x1 = x
            elif i == 3:
                x2 = x
            elif i == 6:
                x3 = x
        return x, x3, x2, x1, x0


class ScriptableMattingBase(MattingBase):
    """MattingBase with scriptable ``validate`` and ``run_network``."""

    def run_network(self, src: Tensor, bgr: Tensor) -> Tensor:
        x4, x3, x2, x1, x0 = self.backbone(torch.cat([src, bgr], dim=1))
        return self.decoder(self.aspp(x4), x3, x2, x1, x0)

    def validate(self, src: Tensor, bgr: Tensor) -> None:
        _check_pair(src, bgr)


class ScriptableMattingRefine(MattingRefine):
    """MattingRefine with scriptable ``validate`` (settings checked at run time) and ``run_network``."""

    def run_network(self, src: Tensor, bgr: Tensor) -> Tensor:
        x4, x3, x2, x1, x0 = self.backbone(torch.cat([src, bgr], dim=1))
        return self.decoder(self.aspp(x4), x3, x2, x1, x0)

    def validate(self, src: Tensor, bgr: Tensor) -> None:
        _check_pair(src, bgr)
        if src.shape[2] % 4 != 0 or src.shape[3] % 4 != 0:
            raise ValueError("src/bgr height and width must be divisible by 4")
        # The limits of model.spec, copied onto the module before scripting (TorchScript can
        # neither call refine_settings_error nor read tuple globals), checked at run time
        # because these settings stay settable after torch.jit.load.
        limits = self.setting_limits
        if not (limits[0] <= self.backbone_scale <= limits[1]):
            raise ValueError("backbone_scale is not valid; it must be in [0.01, 0.5]")
        if self.refine_mode not in self.valid_refine_modes:
            raise ValueError("refine_mode must be one of: full, sampling, thresholding")
        if self.refine_sample_pixels < limits[2]:
            raise ValueError("refine_sample_pixels must be >= 16")
        if not (limits[3] <= self.refine_threshold <= limits[4]):
            raise ValueError("refine_threshold must be in [0, 1]")


def crop_patches_without_roi_align(x: Tensor, idx: Tensor, size: int, padding: int, method: str) -> Tensor:
    """:func:`model.refiner.crop_patches` without its ``roi_align`` branch (same numerics).

    Scripted in place of the reference dispatcher when the export's crop method is not
    ``roi_align``, so the saved graph never names ``torchvision::roi_align`` (a bare
    ``torch.jit.load`` resolves every op of the graph, run or not, and would fail).
    """
    if padding != 0:
        x = F.pad(x, (padding, padding, padding, padding))
    window = size + 2 * padding
    if method == "unfold":
        return crop_unfold(x, idx, size, window)
    if method == "gather":
        return crop_gather(x, idx, size, window)
    raise ValueError("this TorchScript file was exported without roi_align; refine_patch_crop_method must be unfold or gather")


def needs_torchvision_ops(model: nn.Module) -> bool:
    """Whether the scripted ``model`` references torchvision ops (its crop method is roi_align)."""
    return isinstance(model, MattingRefine) and model.refine_patch_crop_method == "roi_align"


# TorchScript needs a fixed tuple length per forward; one tiny forward per output count
# returns the outputs listed in the (scripted, constant) `output_indices` attribute.
def _forward_1(self, src: Tensor, bgr: Tensor) -> Tuple[Tensor]:  # noqa: UP006
    o = self.forward_list(src, bgr)
    i = self.output_indices
    return (o[i[0]],)


def _forward_2(self, src: Tensor, bgr: Tensor) -> Tuple[Tensor, Tensor]:  # noqa: UP006
    o = self.forward_list(src, bgr)
    i = self.output_indices
    return o[i[0]], o[i[1]]


def _forward_3(self, src: Tensor, bgr: Tensor) -> Tuple[Tensor, Tensor, Tensor]:  # noqa: UP006
    o = self.forward_list(src, bgr)
    i = self.output_indices
    return o[i[0]], o[i[1]], o[i[2]]


def _forward_4(self, src: Tensor, bgr: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:  # noqa: UP006
    o = self.forward_list(src, bgr)
    i = self.output_indices
    return o[i[0]], o[i[1]], o[i[2]], o[i[3]]


def _forward_5(self, src: Tensor, bgr: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # noqa: UP006
    o = self.forward_list(src, bgr)
    i = self.output_indices
    return o[i[0]], o[i[1]], o[i[2]], o[i[3]], o[i[4]]


def _forward_6(self, src: Tensor, bgr: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # noqa: UP006
    o = self.forward_list(src, bgr)
    i = self.output_indices
    return o[i[0]], o[i[1]], o[i[2]], o[i[3]], o[i[4]], o[i[5]]


_FORWARDS = {1: _forward_1, 2: _forward_2, 3: _forward_3, 4: _forward_4, 5: _forward_5, 6: _forward_6}
_CLASS_CACHE: dict[tuple[type, int], type] = {}


def scriptable_class(base: type, count: int) -> type:
    """A subclass of ``base`` whose ``forward`` returns ``count`` selected outputs."""
    key = (base, count)
    if key not in _CLASS_CACHE:
        _CLASS_CACHE[key] = type(f"{base.__name__}{count}", (base,), {"forward": _FORWARDS[count]})
    return _CLASS_CACHE[key]


def script_patches(model: nn.Module, count: int) -> tuple[Patch, ...]:
    """``__class__`` swaps that make ``model`` scriptable, returning ``count`` outputs."""
    base = ScriptableMattingRefine if isinstance(model, MattingRefine) else ScriptableMattingBase
    patches = [
        # torch.jit.script reuses cached JIT types per Python class; after other exports in
        # the same process (seen after a run of ONNX exports) a cached Refiner type had a
        # different forward signature and scripting failed. A fresh store per export
        # compiles every submodule anew.
        Patch(
            "module:torch.jit._recursive",
            "concrete_type_store",
            lambda _cached: torch.jit._recursive.ConcreteTypeStore(),
            wrap=True,
            reason="no JIT types cached by earlier exports in this process",
        ),
        # The same for compiled free functions (cached per function object): a
        # gather_patch_inputs compiled by an earlier export keeps the crop dispatcher it
        # was compiled with (with or without roi_align), whatever this export patches in.
        Patch(
            "module:torch.jit._state",
            "_jit_caching_layer",
            lambda _cached: weakref.WeakKeyDictionary(),
            wrap=True,
            reason="no free functions cached by earlier exports in this process",
        ),
        Patch("", "__class__", scriptable_class(base, count), reason="scriptable validate/run_network/forward"),
    ]
    if isinstance(model, MattingRefine) and not needs_torchvision_ops(model):
        patches.append(
            Patch(
                "module:model.refiner",
                "crop_patches",
                crop_patches_without_roi_align,
                reason="no torchvision::roi_align in the graph: loads with torch alone",
            )
        )
    if isinstance(getattr(model, "backbone", None), MobileNetV2Encoder):
        patches.append(
            Patch("backbone", "__class__", ScriptableMobileNetV2Encoder, reason="block loop TorchScript can compile")
        )
    return tuple(patches)


def torchscript_from_torch(
    model: nn.Module,
    model_config: ModelConfig,
    config: TorchScriptConfig,
    output: str | Path,
    progress: Progress | None = None,
) -> TorchScriptExportResult:
    """Scripts ``model`` and saves it with its metadata as extra file ``bgm_deploy.json``.

    Args:
        model: the eval-mode reference built from ``model_config`` (not modified).
        model_config: embedded as metadata.
        config: precision and outputs.
        output: destination path (``.pt`` / ``.torchscript``); written atomically.
        progress: called with one line per stage.

    Raises:
        UsageError: bad outputs or output path.
        ExportError: scripting or saving failed.
    """
    say = progress or (lambda _message: None)
    output = Path(output)
    check_writable(output)
    model_config = model_config.resolved_from(model)  # unset settings: what the model runs
    names = config.output_names(model_config.model_type)
    every = output_names(model_config.model_type)
    dtype = torch.float16 if config.precision == "fp16" else torch.float32
    # Always a copy: the scripted module keeps a reference to these parameters.
    module = copy.deepcopy(model).to(dtype).eval()
    module.output_indices = [every.index(name) for name in names]
    if isinstance(module, MattingRefine):
        module.valid_refine_modes = list(REFINE_MODES)
        module.setting_limits = [*BACKBONE_SCALE_RANGE, float(MIN_SAMPLE_PIXELS), *THRESHOLD_RANGE]

    result = TorchScriptExportResult(path=output, size_bytes=0, outputs=names)
    start = time.perf_counter()
    say(f"export: torch.jit.script, {config.precision}, outputs {','.join(names)}")
    try:
        with ModelPatcher(module, script_patches(module, len(names))), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.script's deprecation notice
            scripted = torch.jit.script(module)
    except (RuntimeError, torch.jit.frontend.FrontendError) as exc:
        raise ExportError(f"torch.jit.script failed: {str(exc).strip().splitlines()[0][:300]}") from exc
    result.seconds["export"] = time.perf_counter() - start

    # Same keys as ONNX metadata so readers need no per-format branches; None = not applicable.
    fields = {
        "exporter": "torch.jit.script",
        "opset": None,
        "simplified": False,
        "target": "generic",
        "trace_resolution": None,
        "trace_batch": None,
        # True only with the roi_align crop: then torchvision's op library must be loaded
        # (import torchvision / link torchvision ops in C++) before torch.jit.load.
        "needs_torchvision_ops": needs_torchvision_ops(module),
    }
    metadata = export_metadata(model_config, "torchscript", config, names, fields)
    temp = temp_path_for(output, ".pt")
    try:
        start = time.perf_counter()
        torch.jit.save(scripted, str(temp), _extra_files={TORCHSCRIPT_EXTRA_FILE: metadata.to_json()})
        # Check: the file is a loadable TorchScript archive carrying the metadata.
        extra = {TORCHSCRIPT_EXTRA_FILE: ""}
        torch.jit.load(str(temp), map_location="cpu", _extra_files=extra)
        if not extra[TORCHSCRIPT_EXTRA_FILE]:
            raise ExportError(f"{temp}: saved TorchScript file lost its metadata")
        result.seconds["check"] = time.perf_counter() - start
        say(f"check: reloaded with torch.jit.load ({result.seconds['check']:.1f} s)")
        os.replace(temp, output)
    finally:
        if temp.exists():
            temp.unlink()
    result.size_bytes = output.stat().st_size
    result.metadata = metadata
    say(f"wrote {output} ({result.size_bytes / 1e6:.1f} MB)")
    return result

