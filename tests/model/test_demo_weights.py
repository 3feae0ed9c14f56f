"""The shipped demo weights: present and intact, the release's layout (strict load), compact
dtypes, a torch-free ``model.demo``, and a real matte on a bundled pair (so a wrong or
untrained file cannot be shipped by mistake)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from bgm_deploy.images import BUNDLED_PAIRS_DIR
from model import MattingRefine
from model.checkpoint import build_model, config_for_checkpoint, read_checkpoint
from model.config import ModelConfig
from model.demo import DEMO_SHA256, DEMO_WEIGHTS_PATH, demo_available


def test_demo_weights_are_present_and_intact() -> None:
    assert demo_available(), f"{DEMO_WEIGHTS_PATH} is missing or its sha256 is not {DEMO_SHA256}"
    sidecar = DEMO_WEIGHTS_PATH.with_name(DEMO_WEIGHTS_PATH.name + ".sha256").read_text().split()[0]
    assert sidecar == DEMO_SHA256


def test_demo_weights_layout_and_dtypes() -> None:
    state, info = read_checkpoint(DEMO_WEIGHTS_PATH)
    assert (info.model_type, info.backbone, info.refine_kernel_size) == ("refine", "mobilenetv2", 3)
    assert list(state) == list(MattingRefine("mobilenetv2").state_dict())
    for key, value in state.items():
        expected = torch.int64 if key.endswith("num_batches_tracked") else torch.float16
        assert value.dtype == expected, f"{key}: {value.dtype}"


def test_model_demo_imports_without_torch() -> None:
    code = "import sys, model.demo; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_demo_weights_matte_a_bundled_pair() -> None:
    config = config_for_checkpoint(ModelConfig(backbone_scale=0.25, refine_sample_pixels=80_000), DEMO_WEIGHTS_PATH)
    model = build_model(config, DEMO_WEIGHTS_PATH)  # strict=True
    pair = BUNDLED_PAIRS_DIR / "astronaut_coffee_640x480"

    def load(name: str) -> torch.Tensor:
        return torch.from_numpy(np.array(Image.open(pair / name).convert("RGB"))).permute(2, 0, 1)[None].float() / 255

    true = np.array(Image.open(pair / "alpha.png").convert("L"), dtype=np.float64) / 255
    with torch.no_grad():
        pha = model(load("src.jpg"), load("bgr.jpg"))[0][0, 0].double().numpy()
    # Measured here: seeded synthetic (untrained) weights 0.41, an all-zero alpha 0.28.
    assert float(((pha - true) ** 2).mean()) < 0.05
