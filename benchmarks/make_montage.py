"""Renders docs/images/montage.png: src | bgr | ground-truth alpha | predicted pha | rgba over a
checkerboard, one row per bundled photo pair.

The model uses the bundled **demo weights** (``model/weights``: trained here on synthetic
composites, far less accurate than the official checkpoints; none of these pairs was used in
training), at full size with the HD preset, the backgrounds aligned. With the official weights:
``python -m benchmarks.make_montage --checkpoint pytorch_mobilenetv2.pth``; ``--seed 0`` for the
synthetic test weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from bgm_deploy.matte.align import align_background
from bgm_deploy.images import (
    BUNDLED_PAIRS_DIR,
    checkerboard,
    composite_over,
    load_image,
    resize_rgb,
    save_image,
    to_uint8,
)
from bgm_deploy.predictor import Predictor
from model.config import ModelConfig
from model.demo import DEMO_WEIGHTS_PATH
from model.errors import RuntimeUnavailableError

REPO = Path(__file__).resolve().parents[1]
PAIRS = BUNDLED_PAIRS_DIR
COLUMNS = ("src", "bgr", "ground-truth alpha", "predicted pha", "rgba over checkerboard")


def _thumbnail(image: np.ndarray, height: int) -> np.ndarray:
    """Fits ``image`` in a ``4/3 * height`` x ``height`` tile (aspect kept)."""
    scale = min(height / image.shape[0], height * 4 / 3 / image.shape[1])
    return resize_rgb(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)))


def _letterbox(image: np.ndarray, height: int) -> np.ndarray:
    """Centres a thumbnail on a white tile so that every column lines up."""
    tile = np.full((height, round(height * 4 / 3), 3), 255, np.uint8)
    top, left = (tile.shape[0] - image.shape[0]) // 2, (tile.shape[1] - image.shape[1]) // 2
    tile[top : top + image.shape[0], left : left + image.shape[1]] = image
    return tile


def render(predictor: Predictor, height: int, label: str) -> np.ndarray:
    """The montage as an (H, W, 3) uint8 array."""
    rows = []
    for pair in sorted(PAIRS.iterdir()):
        src, bgr = load_image(pair / "src.jpg"), load_image(pair / "bgr.jpg")
        if src.shape != bgr.shape:
            bgr = resize_rgb(bgr, (src.shape[1], src.shape[0]))
        try:
            bgr, _ = align_background(src, bgr)  # the shifted pair needs it; others are left alone
        except RuntimeUnavailableError as exc:  # OpenCV is optional
            print(f"{pair.name}: not aligned ({exc})")
        # Matte at full size (what the model is for), shown at the thumbnail size.
        full = predictor.predict(src, bgr, outputs=("pha", "rgba"))
        src_small, bgr_small = _thumbnail(src, height), _thumbnail(bgr, height)
        size = (src_small.shape[1], src_small.shape[0])
        result = type(full)(pha=np.asarray(Image.fromarray(to_uint8(full.pha)).resize(size, Image.Resampling.BILINEAR),
                                           dtype=np.float32) / 255, rgba=np.asarray(Image.fromarray(full.rgba).resize(
                                               size, Image.Resampling.BILINEAR)))
        alpha = _thumbnail(load_image(pair / "alpha.png"), height)
        pha = np.repeat(to_uint8(result.pha)[..., None], 3, axis=2)
        com = composite_over(result.rgba, checkerboard(*src_small.shape[:2], cell=8))
        tiles = [_letterbox(tile, height) for tile in (src_small, bgr_small, alpha, pha, com)]
        gap = np.full((height, 4, 3), 255, np.uint8)
        rows.append(np.concatenate([x for tile in tiles for x in (tile, gap)][:-1], axis=1))
    width = max(row.shape[1] for row in rows)
    rows = [np.pad(row, ((0, 4), (0, width - row.shape[1]), (0, 0)), constant_values=255) for row in rows]
    header = Image.new("RGB", (width, 36), "white")
    draw = ImageDraw.Draw(header)
    tile_width = rows[0].shape[1] // len(COLUMNS)
    for index, title in enumerate(COLUMNS):
        draw.text((index * tile_width + 4, 4), title, fill="black")
    draw.text((4, 20), label, fill=(120, 0, 0))
    return np.concatenate([np.asarray(header), *rows], axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="weights [the bundled demo weights]")
    parser.add_argument("--seed", type=int, default=None, help="synthetic test weights of this seed instead")
    parser.add_argument("--height", type=int, default=144, help="row height in pixels")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "images" / "montage.png")
    args = parser.parse_args()
    config = ModelConfig(backbone="mobilenetv2", backbone_scale=0.25, refine_sample_pixels=80_000,
                         seed=0 if args.seed is None else args.seed)
    if args.seed is not None:
        predictor = Predictor.load(model_config=config)
        label = f"weights: SYNTHETIC (seed {args.seed}) - the predicted matte is not meaningful"
    else:
        checkpoint = args.checkpoint or DEMO_WEIGHTS_PATH
        predictor = Predictor.load(checkpoint=checkpoint)  # the HD preset: scale 0.25, 80,000 pixels
        label = (f"weights: {checkpoint.name}" if args.checkpoint else
                 "weights: bundled DEMO weights (trained on synthetic composites; not the official weights)")
    with predictor:
        montage = render(predictor, args.height, label)
    save_image(args.output, montage)
    print(f"wrote {args.output} ({montage.shape[1]}x{montage.shape[0]})")


if __name__ == "__main__":
    main()
