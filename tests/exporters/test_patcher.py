"""ModelPatcher: patches applied as data and always restored."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import model.refiner
from exporters.config import OnnxConfig, dynamic_axes, output_names
from exporters.patcher import EXPORT_PATCHES, ModelPatcher, Patch
from model import MattingBase
from model.errors import ExportError


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.child = nn.Linear(2, 2)

    def validate(self, x: torch.Tensor) -> None:
        raise ValueError("checked")


def test_instance_patch_is_removed_again() -> None:
    tiny = Tiny()
    with ModelPatcher(tiny, [Patch("", "validate", lambda x: None)]):
        tiny.validate(torch.zeros(1))
    assert "validate" not in vars(tiny)
    with pytest.raises(ValueError, match="checked"):
        tiny.validate(torch.zeros(1))


def test_restored_when_the_body_raises() -> None:
    tiny = Tiny()
    original = model.refiner.select_refinement_regions
    patches = [Patch("child", "in_features", 99), Patch("module:model.refiner", "select_refinement_regions", None)]
    with pytest.raises(RuntimeError, match="boom"), ModelPatcher(tiny, patches):
        assert tiny.child.in_features == 99
        assert model.refiner.select_refinement_regions is None
        raise RuntimeError("boom")
    assert tiny.child.in_features == 2
    assert model.refiner.select_refinement_regions is original


def test_wrap_optional_and_missing_targets() -> None:
    tiny = Tiny()
    seen = []
    patches = [
        Patch("", "__class__", lambda cls: seen.append(cls) or type("TinySub", (cls,), {}), wrap=True),
        Patch("refiner", "kernel_size", 1, optional=True),
    ]
    with ModelPatcher(tiny, patches):
        assert type(tiny).__name__ == "TinySub"
    assert type(tiny) is Tiny and seen == [Tiny]
    with pytest.raises(ExportError, match="target not found"), ModelPatcher(tiny, [Patch("refiner", "x", 1)]):
        pass
    with pytest.raises(ExportError, match="no such attribute"), ModelPatcher(tiny, [Patch("child", "nope", 1)]):
        pass
    assert tiny.child.in_features == 2


def test_default_patches_skip_validation() -> None:
    base = MattingBase("mobilenetv2").eval()
    odd = torch.rand(1, 3, 64, 64)
    with ModelPatcher(base, EXPORT_PATCHES):
        base.validate(odd.int(), odd)  # would raise: not a float tensor
    with pytest.raises(ValueError, match="float tensor"):
        base.validate(odd.int(), odd)


def test_config_axes_are_distinct_per_resolution() -> None:
    axes = dynamic_axes(("src",) + output_names("refine"))
    assert axes["src"] == {0: "batch", 2: "height", 3: "width"}
    assert axes["pha_sm"] == {0: "batch", 2: "height_sm", 3: "width_sm"}
    assert axes["ref_sm"] == {0: "batch", 2: "height_q", 3: "width_q"}
    assert dynamic_axes(output_names("base"))["hid"] == {0: "batch", 2: "height", 3: "width"}


@pytest.mark.parametrize(
    "fields",
    [{"precision": "fp8"}, {"exporter": "tf"}, {"target": "coreml"}, {"trace_resolution": (130, 128)}, {"outputs": ()},
     {"outputs": ("pha", "pha")}, {"trace_batch": 0}],
)
def test_onnx_config_rejects_bad_values(fields: dict) -> None:
    from model.errors import UsageError

    with pytest.raises(UsageError):
        OnnxConfig(**fields)
