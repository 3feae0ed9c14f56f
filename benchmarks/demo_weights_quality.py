"""Scores a checkpoint on the bundled real pairs (bgm_deploy/data/pairs) with the matting
metrics: SAD (/1000), MSE, Grad (/1000), Conn (/1000) per pair and their mean, on the whole
image at full size, with MattingRefine at the HD preset (backbone_scale 0.25, 80,000 sample
pixels, sampling mode). A pair whose meta.json records a misaligned plate is scored twice:
as given and after ``align_background``.

Usage::

    python -m benchmarks.demo_weights_quality [--checkpoint model/weights/demo_mobilenetv2.pth] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bgm_deploy.images import BUNDLED_PAIRS_DIR, load_image
from bgm_deploy.matte.align import align_background
from bgm_deploy.metrics import matting_scores
from model.checkpoint import build_model, config_for_checkpoint, file_sha256
from model.config import ModelConfig
from model.demo import DEMO_WEIGHTS_PATH

SCHEMA_VERSION = 1
HD_SETTINGS = {"backbone_scale": 0.25, "refine_mode": "sampling", "refine_sample_pixels": 80_000}


@torch.no_grad()
def predict_alpha(model: torch.nn.Module, src: np.ndarray, bgr: np.ndarray) -> np.ndarray:
    """Alpha (H, W) in 0..1 for uint8 RGB images, padded (replicate) to a multiple of 4."""
    height, width = src.shape[:2]
    pad = (0, (-width) % 4, 0, (-height) % 4)

    def tensor(image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
        return torch.nn.functional.pad(x, pad, mode="replicate")

    pha = model(tensor(src), tensor(bgr))[0]
    return pha[0, 0, :height, :width].numpy().astype(np.float64)


def evaluate(checkpoint: Path) -> dict[str, Any]:
    """Per-pair scores and the mean over the pairs as given (no alignment)."""
    config = config_for_checkpoint(ModelConfig(model_type="refine", backbone="mobilenetv2", **HD_SETTINGS), checkpoint)
    model = build_model(config, checkpoint)
    rows = []
    for folder in sorted(p for p in BUNDLED_PAIRS_DIR.iterdir() if p.is_dir()):
        meta = json.loads((folder / "meta.json").read_text())
        src, bgr = load_image(folder / "src.jpg"), load_image(folder / "bgr.jpg")
        true = load_image(folder / "alpha.png")[..., 0].astype(np.float64) / 255
        variants = [("as given", bgr)]
        if meta.get("bgr_misalignment_dx_dy_deg"):
            aligned, result = align_background(src, bgr)
            variants.append((f"aligned ({result.status})", aligned))
        for label, plate in variants:
            scores = matting_scores(predict_alpha(model, src, plate), true)
            rows.append({"pair": folder.name, "plate": label, **scores.to_dict()})
    given = [r for r in rows if r["plate"] == "as given"]
    mean = {k: statistics.fmean(r[k] for r in given) for k in ("sad", "mse", "grad", "conn")}
    return {
        "schema_version": SCHEMA_VERSION,
        "checkpoint": checkpoint.name,
        "checkpoint_sha256": file_sha256(checkpoint),
        "settings": HD_SETTINGS,
        "units": "SAD/1000, MSE as is, Grad/1000, Conn/1000; alpha in 0..1, whole image",
        "pairs": rows,
        "mean_as_given": mean,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.demo_weights_quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=DEMO_WEIGHTS_PATH)
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = evaluate(args.checkpoint)
    print(f"{'pair':36s} {'plate':22s} {'SAD':>8s} {'MSE':>8s} {'Grad':>8s} {'Conn':>8s}")
    for row in report["pairs"]:
        print(f"{row['pair']:36s} {row['plate']:22s} {row['sad']:8.2f} {row['mse']:8.4f} {row['grad']:8.2f} {row['conn']:8.2f}")
    mean = report["mean_as_given"]
    print(f"{'mean (plates as given)':59s} {mean['sad']:8.2f} {mean['mse']:8.4f} {mean['grad']:8.2f} {mean['conn']:8.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
