"""Scripted TorchScript export: settable attributes, parity, fp16, loading without bgm-deploy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from exporters.config import TorchScriptConfig
from exporters.metadata import read_metadata
from exporters.torchscript import torchscript_from_torch
from model.checkpoint import build_model
from model.config import ModelConfig

from .conftest import random_pair

CONFIG = ModelConfig(refine_sample_pixels=4_000)


@pytest.fixture(scope="session")
def refine_model() -> torch.nn.Module:
    return build_model(CONFIG)


@pytest.fixture(scope="session")
def scripted(tmp_path_factory: pytest.TempPathFactory, refine_model: torch.nn.Module) -> Path:
    path = tmp_path_factory.mktemp("ts") / "refine.torchscript"
    torchscript_from_torch(refine_model, CONFIG, TorchScriptConfig(), path)
    return path


def test_settable_attributes_match_eager(scripted: Path, refine_model: torch.nn.Module) -> None:
    loaded = torch.jit.load(str(scripted))
    reference = build_model(CONFIG)  # a fresh copy whose attributes we change alongside
    src, bgr = random_pair(224, 160, 2, 0)
    settings = [
        {"refine_mode": "thresholding", "refine_threshold": 0.05},
        {"refine_mode": "full"},
        {"refine_mode": "sampling", "refine_sample_pixels": 1_600, "refine_prevent_oversampling": False},
        {"backbone_scale": 0.5},
    ]
    for change in settings:
        for name, value in change.items():
            setattr(loaded, name, value)
            setattr(reference, name, value)
        with torch.no_grad():
            got, want = loaded(src, bgr), reference(src, bgr)
        assert len(got) == 6
        for a, b in zip(got, want):
            assert a.shape == b.shape
            assert float((a - b).abs().max()) <= 1e-5, change
    loaded.refine_mode = "bogus"
    with pytest.raises(torch.jit.Error, match="refine_mode"):
        loaded(src, bgr)


def test_metadata_and_pruned_outputs(tmp_path: Path, refine_model: torch.nn.Module) -> None:
    path = tmp_path / "pruned.pt"
    result = torchscript_from_torch(refine_model, CONFIG, TorchScriptConfig(outputs=("fgr", "pha")), path)
    metadata = read_metadata(path)
    assert metadata.format == "torchscript" and metadata.model_config == CONFIG.resolved_from(refine_model)
    assert metadata.model_config.refine_patch_crop_method == refine_model.refine_patch_crop_method
    assert metadata.export["outputs"] == ["fgr", "pha"] and metadata.export["io_dtype"] == "float32"
    loaded = torch.jit.load(str(path))
    src, bgr = random_pair(160, 128, 1, 1)
    fgr, pha = loaded(src, bgr)
    with torch.no_grad():
        want = refine_model(src, bgr)
    assert torch.equal(pha, want[0]) and torch.equal(fgr, want[1])
    assert result.size_bytes == path.stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == ["pruned.pt"]  # no temp file left


def test_fp16_base(tmp_path: Path) -> None:
    config = ModelConfig(model_type="base")
    model = build_model(config)
    path = tmp_path / "base16.pt"
    torchscript_from_torch(model, config, TorchScriptConfig(precision="fp16"), path)
    assert read_metadata(path).export["io_dtype"] == "float16"
    loaded = torch.jit.load(str(path))
    src, bgr = random_pair(128, 96, 1, 2, torch.float16)
    got = loaded(src, bgr)
    with torch.no_grad():
        want = model.half()(src, bgr)
    assert all(g.dtype == torch.float16 for g in got)
    # Same kernels on the same device: the scripted module matches eager fp16 exactly-ish.
    for a, b in zip(got, want):
        assert float((a.float() - b.float()).abs().max()) <= 1e-3


_BARE_LOAD = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("bgm_deploy", "model", "exporters", "runtimes", "torchvision"):
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
import torch
m = torch.jit.load(sys.argv[1])
m.refine_mode = "thresholding"
m.backbone_scale = 0.5
out = m(torch.rand(1, 3, 128, 160), torch.rand(1, 3, 128, 160))
assert len(out) == 6 and tuple(out[0].shape) == (1, 1, 128, 160)
assert not any(k.split(".")[0] in ("bgm_deploy", "model", "exporters", "torchvision") for k in sys.modules)
print("ok")
"""


def _bare_load(path: Path) -> subprocess.CompletedProcess[str]:
    """Loads and runs ``path`` in a clean interpreter (-I: no cwd, no PYTHONPATH) that can
    import torch but neither this project nor torchvision (a libtorch user's situation)."""
    return subprocess.run(
        [sys.executable, "-I", "-c", _BARE_LOAD, str(path)], capture_output=True, text=True, cwd=path.parent, timeout=300
    )


def test_loads_with_torch_alone(scripted: Path) -> None:
    # Issue 14 finding 5: the unfold export used to reference torchvision::roi_align.
    assert read_metadata(scripted).export["needs_torchvision_ops"] is False
    done = _bare_load(scripted)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")


def test_gather_crop_loads_with_torch_alone_and_matches(tmp_path: Path) -> None:
    config = ModelConfig(refine_sample_pixels=4_000, refine_patch_crop_method="gather")
    model = build_model(config)
    path = tmp_path / "gather.pt"
    torchscript_from_torch(model, config, TorchScriptConfig(), path)
    assert _bare_load(path).returncode == 0
    loaded = torch.jit.load(str(path))
    src, bgr = random_pair(160, 128, 2, 3)
    with torch.no_grad():
        for got, want in zip(loaded(src, bgr), model(src, bgr)):
            assert float((got - want).abs().max()) <= 1e-5
    loaded.refine_patch_crop_method = "roi_align"  # not compiled into this file
    with pytest.raises(torch.jit.Error, match="exported without roi_align"):
        loaded(src, bgr)


def test_roi_align_crop_says_it_needs_torchvision(tmp_path: Path) -> None:
    config = ModelConfig(refine_sample_pixels=4_000, refine_patch_crop_method="roi_align")
    path = tmp_path / "roi.pt"
    torchscript_from_torch(build_model(config), config, TorchScriptConfig(), path)
    assert read_metadata(path).export["needs_torchvision_ops"] is True
    done = _bare_load(path)
    assert done.returncode != 0 and "torchvision::roi_align" in done.stderr
