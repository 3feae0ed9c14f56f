"""exporters.original: the original project's ONNX recipe (the bench's onnx-original row)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from exporters.original import ORIGINAL_OPSET, ORIGINAL_PATCHES, export_original_recipe, original_recipe_config
from exporters.patcher import ModelPatcher
from model.checkpoint import build_model
from model.config import ModelConfig
from model.errors import ExportError, UsageError

CONFIG = ModelConfig(refine_sample_pixels=16 * 40, refine_mode="sampling", refine_prevent_oversampling=False)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_model(original_recipe_config(CONFIG)).eval()


def _inputs(shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g), torch.rand(*shape, generator=g)


def test_original_data_flow_gives_the_reference_results(model: torch.nn.Module) -> None:
    src, bgr = _inputs((2, 3, 96, 128), 3)
    with torch.no_grad():
        expected = model(src, bgr)
        with ModelPatcher(model, ORIGINAL_PATCHES):
            got = model(src, bgr)
    assert expected[5].sum() == 2 * 40
    for a, b in zip(expected, got):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_exported_recipe_is_the_original_graph_and_runs(model: torch.nn.Module, tmp_path) -> None:
    path = export_original_recipe(model, tmp_path / "original.onnx", (160, 128))
    proto = onnx.load(str(path))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [ORIGINAL_OPSET]
    ops = [n.op_type for n in proto.graph.node]
    # whole maps resized and padded before cropping; pha+fgr replaced in one 4-channel map
    assert "Pad" in ops and ops.count("RoiAlign") == 3 and "MatMul" not in ops
    assert not [p for p in proto.metadata_props if p.key == "bgm_deploy"]  # not a bgm-deploy export
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in ((1, 3, 128, 160), (1, 3, 96, 128)):  # dynamic height and width
        src, bgr = _inputs(shape, sum(shape))
        with torch.no_grad():
            expected = model(src, bgr)
        got = session.run(None, {"src": src.numpy(), "bgr": bgr.numpy()})
        for a, b in zip(expected, got):
            np.testing.assert_allclose(b, a.numpy(), atol=1e-5, rtol=0)


def test_recipe_refuses_other_patch_methods(tmp_path) -> None:
    other = build_model(CONFIG.replace(refine_patch_crop_method="unfold", refine_patch_replace_method="scatter_nd")).eval()
    with pytest.raises(ExportError, match="original_recipe_config"):
        export_original_recipe(other, tmp_path / "o.onnx", (160, 128))
    assert list(tmp_path.iterdir()) == []


def test_sample_budget_larger_than_the_grid_is_refused_clearly(tmp_path) -> None:
    """The original's top-k cannot take more cells than the grid has: a clear error, no file."""
    big = build_model(original_recipe_config(CONFIG.replace(refine_sample_pixels=80_000))).eval()
    with pytest.raises(UsageError, match=r"cannot run at 160x128: .* 5000 cells of a 1280-cell grid.*--sample-pixels 20480"):
        export_original_recipe(big, tmp_path / "o.onnx", (160, 128))
    assert list(tmp_path.iterdir()) == []
