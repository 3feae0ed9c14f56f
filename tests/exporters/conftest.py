"""Session-scoped exports shared by the exporter tests (each export is built once)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from exporters.config import OnnxConfig, output_names
from exporters.onnx import onnx_from_torch
from model.checkpoint import build_model
from model.config import ModelConfig

# Traced at 160x128; parity is checked at other sizes (W, H, batch) never seen by the tracer.
TRACE = (160, 128)
CHECK_SIZES = ((224, 160, 2), (256, 192, 1))
SAMPLE_PIXELS = 4_000  # 250 cells: a fraction of the 40x56 .. 48x64 quarter grids


def small_config(model_type: str = "refine", **changes: object) -> ModelConfig:
    base = ModelConfig(
        model_type=model_type,
        refine_sample_pixels=SAMPLE_PIXELS,
        refine_patch_crop_method="roi_align",
        refine_patch_replace_method="scatter_element",
    )
    return base.replace(**changes)


def random_pair(width: int, height: int, batch: int, seed: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    src = torch.rand(batch, 3, height, width, generator=generator)
    bgr = torch.rand(batch, 3, height, width, generator=generator)
    return src.to(dtype), bgr.to(dtype)


def run_onnx(path: Path, src: torch.Tensor, bgr: torch.Tensor) -> list[np.ndarray]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"src": src.numpy(), "bgr": bgr.numpy()})


def max_diffs(model: nn.Module, model_type: str, names: tuple[str, ...], got: list[np.ndarray], src: torch.Tensor, bgr: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        reference = dict(zip(output_names(model_type), model(src, bgr)))
    return {
        name: float(np.abs(value.astype(np.float64) - reference[name].double().numpy()).max())
        for name, value in zip(names, got)
    }


class Exported:
    """A model, its config and its ONNX file."""

    def __init__(self, model: nn.Module, config: ModelConfig, onnx_config: OnnxConfig, path: Path, result: object) -> None:
        self.model = model
        self.config = config
        self.onnx_config = onnx_config
        self.path = path
        self.result = result


@pytest.fixture(scope="session")
def onnx_export(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Exported]:
    """``onnx_export(model_config, **onnx_config_fields)``, cached for the session."""
    cache: dict[tuple, Exported] = {}
    models: dict[ModelConfig, nn.Module] = {}
    directory = tmp_path_factory.mktemp("onnx")

    def export(config: ModelConfig, **fields: object) -> Exported:
        fields.setdefault("trace_resolution", TRACE)
        onnx_config = OnnxConfig(**fields)
        key = (config, onnx_config)
        if key not in cache:
            if config not in models:
                models[config] = build_model(config)
            path = directory / f"model{len(cache)}.onnx"
            result = onnx_from_torch(models[config], config, onnx_config, path)
            cache[key] = Exported(models[config], config, onnx_config, path, result)
        return cache[key]

    return export
