"""Golden outputs of the synthetic reference model on a small real input.

Guards the reference numerics (model code + synthetic weights) against silent change.
Regenerate deliberately with ``pytest tests/model/test_golden.py --regen-golden`` and
commit the new file with a message saying why the numbers changed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.checkpoint import build_model
from model.config import ModelConfig

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden" / "mobilenetv2_seed0_cat_160x128.npz"
CONFIG = ModelConfig(refine_sample_pixels=4_000, refine_mode="sampling")
# Generous for float16 storage and BLAS differences between machines; far below a real change.
ATOL = 2e-3


def _inputs(pairs_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    def load(name: str) -> torch.Tensor:
        image = np.asarray(Image.open(pairs_dir / "cat_rocket_1001x667" / f"{name}.jpg").convert("RGB"))
        crop = image[300:428, 400:560].copy()
        return torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255

    return load("src"), load("bgr")


def test_reference_matches_golden(pairs_dir: Path, request: pytest.FixtureRequest) -> None:
    model = build_model(CONFIG)
    src, bgr = _inputs(pairs_dir)
    with torch.no_grad():
        pha, fgr, _, _, err_sm, ref_sm = model(src, bgr)
    current = {"pha": pha.numpy(), "fgr": fgr.numpy(), "err_sm": err_sm.numpy(), "ref_sm": ref_sm.numpy()}
    if request.config.getoption("--regen-golden"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(GOLDEN, **{k: v.astype(np.float16) for k, v in current.items()})
        pytest.skip(f"golden file regenerated: {GOLDEN}")
    assert GOLDEN.is_file(), f"{GOLDEN} is missing; create it with --regen-golden"
    golden = np.load(GOLDEN)
    assert 0 < golden["ref_sm"].mean() < 1  # the golden case exercises the refiner
    for name, value in current.items():
        np.testing.assert_allclose(value, golden[name].astype(np.float32), atol=ATOL, err_msg=name)
