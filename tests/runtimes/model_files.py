"""Builds small exported model files (ONNX, TorchScript) with bgm-deploy metadata for tests.

Until ``bgm_deploy.export`` lands these use ``torch.onnx.export(dynamo=False)`` and
``torch.jit.trace`` directly, with the reference model's ``validate`` replaced by a no-op
for the duration of the export (as the exporter does) and the metadata embedded by hand.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

from bgm_deploy.checkpoint import build_model
from bgm_deploy.config import ModelConfig
from exporters.metadata import METADATA_KEY, TORCHSCRIPT_EXTRA_FILE, ExportMetadata
from runtimes.providers import OUTPUT_NAMES

# A small, fast model whose refiner selects some but not all cells at test resolutions.
TEST_CONFIG = ModelConfig(
    backbone="mobilenetv2",
    backbone_scale=0.25,
    refine_mode="sampling",
    refine_sample_pixels=4096,
    refine_patch_crop_method="roi_align",
    refine_patch_replace_method="scatter_element",
    seed=0,
)
BASE_CONFIG = ModelConfig(model_type="base", backbone="mobilenetv2", seed=0)
SAMPLE_SIZE = (128, 160)


class _Outputs(nn.Module):
    """Returns the named subset of the model's outputs, in model order."""

    def __init__(self, model: nn.Module, model_type: str, outputs: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.indices = [OUTPUT_NAMES[model_type].index(name) for name in outputs]

    def forward(self, src: Tensor, bgr: Tensor) -> tuple[Tensor, ...]:
        results = self.model(src, bgr)
        return tuple(results[i] for i in self.indices)


@contextlib.contextmanager
def _no_validate(model: nn.Module) -> Iterator[None]:
    original = model.validate
    model.validate = lambda src, bgr: None  # shapes are symbolic while exporting
    try:
        yield
    finally:
        model.validate = original


def _sample(batch: int = 1) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(0)
    return (torch.rand(batch, 3, *SAMPLE_SIZE, generator=generator), torch.rand(batch, 3, *SAMPLE_SIZE, generator=generator))


def _metadata(config: ModelConfig, fmt: str, outputs: tuple[str, ...], io_dtype: str = "float32") -> ExportMetadata:
    return ExportMetadata(config, fmt, {"outputs": list(outputs), "io_dtype": io_dtype, "made_by": "tests/runtimes/model_files.py"})


def make_onnx(path: Path, config: ModelConfig = TEST_CONFIG, outputs: tuple[str, ...] | None = None) -> Path:
    """Exports ``config`` (synthetic weights) to ONNX with dynamic batch/height/width."""
    outputs = tuple(outputs or OUTPUT_NAMES[config.model_type])
    model = build_model(config)
    wrapper = _Outputs(model, config.model_type, outputs).eval()
    axes = {name: {0: "batch", 2: "height", 3: "width"} for name in ("src", "bgr", *outputs)}
    with _no_validate(model), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, _sample(), str(path), dynamo=False, opset_version=17,
            input_names=["src", "bgr"], output_names=list(outputs), dynamic_axes=axes,
        )
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, _metadata(config, "onnx", outputs).to_json()
    onnx.save(proto, str(path))
    return path


def make_torchscript(path: Path, config: ModelConfig = TEST_CONFIG, outputs: tuple[str, ...] | None = None) -> Path:
    """Traces ``config`` (synthetic weights) to TorchScript with the metadata extra file."""
    outputs = tuple(outputs or OUTPUT_NAMES[config.model_type])
    model = build_model(config)
    wrapper = _Outputs(model, config.model_type, outputs).eval()
    with _no_validate(model), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, _sample(), check_trace=False)
    torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_EXTRA_FILE: _metadata(config, "torchscript", outputs).to_json()})
    return path


_CACHE: dict[str, Path] = {}
_MAKERS = {
    "onnx": lambda path: make_onnx(path),
    "torchscript": lambda path: make_torchscript(path),
    "onnx_base": lambda path: make_onnx(path, BASE_CONFIG),
}


def model_file(kind: str, root: Path) -> Path:
    """``onnx``, ``torchscript`` or ``onnx_base`` test model, exported once per test session
    (test modules in different directories share this cache) under pytest's ``root``."""
    if kind not in _CACHE:
        suffix = ".pt" if kind == "torchscript" else ".onnx"
        root.mkdir(parents=True, exist_ok=True)
        _CACHE[kind] = _MAKERS[kind](root / f"test_{kind}{suffix}")
    return _CACHE[kind]


def import_from_here() -> None:
    """Lets test modules outside tests/runtimes ``import model_files``."""
    here = str(Path(__file__).parent)
    if here not in sys.path:
        sys.path.insert(0, here)
