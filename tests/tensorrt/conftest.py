"""Fixtures for the TensorRT-side tests: small sampling-mode exports, generic and TensorRT-safe.

The models use the HD preset's ``refine_sample_pixels=80_000`` (TopK K = 5,000 > 3840) on
small inputs, so the default export trips the preflight and the grid (64x80 = 5,120 cells at
256x320) is close to K: the TopK-free selection is exercised with ties at zero error.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

from exporters.metadata import METADATA_KEY, ExportMetadata
from exporters.patcher import EXPORT_PATCHES, ModelPatcher
from exporters.tensorrt_safe import TENSORRT_PATCHES
from model.checkpoint import build_model
from model.config import ModelConfig

HD_SAMPLING = ModelConfig(
    refine_sample_pixels=80_000,
    refine_patch_crop_method="roi_align",
    refine_patch_replace_method="scatter_element",
    seed=0,
)
OUTPUT_NAMES = ["pha", "fgr", "pha_sm", "fgr_sm", "err_sm", "ref_sm"]


def export_refine_onnx(config: ModelConfig, target: str, path: Path) -> Path:
    """Exports ``config``'s model for ``target`` ('generic' or 'tensorrt') with the legacy exporter.

    The same rewrites the project's exporter applies (validate no-op, ``TENSORRT_PATCHES``
    for target 'tensorrt'), kept local so these tests pin the selection and the preflight
    independently of the exporter's options.
    """
    model = build_model(config, None)
    src = torch.rand(1, 3, 128, 160, generator=torch.Generator().manual_seed(0))
    patches = EXPORT_PATCHES + (TENSORRT_PATCHES if target == "tensorrt" else ())
    with ModelPatcher(model, patches), torch.no_grad():
        torch.onnx.export(
            model,
            (src, src.flip(-1)),
            str(path),
            input_names=["src", "bgr"],
            output_names=OUTPUT_NAMES,
            dynamic_axes={name: {0: "batch", 2: "height", 3: "width"} for name in ("src", "bgr")},
            opset_version=17,
            dynamo=False,
        )
    # Embed the metadata every bgm-deploy export carries (engine_from_onnx reads it).
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, ExportMetadata(config, "onnx", {"target": target}).to_json()
    onnx.save(proto, str(path))
    return path


@pytest.fixture(scope="session")
def hd_model() -> torch.nn.Module:
    return build_model(HD_SAMPLING, None)


@pytest.fixture(scope="session")
def generic_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_refine_onnx(HD_SAMPLING, "generic", tmp_path_factory.mktemp("generic") / "model.onnx")


@pytest.fixture(scope="session")
def tensorrt_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_refine_onnx(HD_SAMPLING, "tensorrt", tmp_path_factory.mktemp("tensorrt") / "model.onnx")
