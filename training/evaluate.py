"""Scores MattingRefine weights on a recipe's held-out synthetic sets, as the trainer does
(MattingRefine at backbone_scale 0.25, 80,000 sample pixels, eval mode): alpha MSE and SAD
(/1000 per image) on ``val``, ``val12_mse`` (its first 12 samples: the refine-v1 set), the
coarse alpha upsampled (``*_mse_coarse``), and ``valmis`` when the recipe has it. For comparing
checkpoints of different runs (the demo file, fp16, included) on the same sets; never the real
pairs (``python -m benchmarks.demo_weights_quality`` scores those).

Usage::

    python -m training.evaluate WEIGHTS [WEIGHTS ...] [--recipe refine-v2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from .train import RECIPES, STAGE_RECIPES, evaluate, new_model, validation_sets


def score(weights: Path, recipe: str = "refine-v2", sets: dict | None = None) -> dict[str, float]:
    """Held-out scores of a MattingRefine state_dict file (fp16 or fp32)."""
    config = RECIPES[recipe]
    model = new_model("refine", config.sample_pixels)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    return evaluate(model, config, sets if sets is not None else validation_sets(config))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("weights", type=Path, nargs="+")
    parser.add_argument("--recipe", choices=list(STAGE_RECIPES["refine"]), default="refine-v2")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sets = validation_sets(RECIPES[args.recipe])
    for path in args.weights:
        print(json.dumps({"weights": str(path), "recipe": args.recipe, **score(path, args.recipe, sets)}), flush=True)


if __name__ == "__main__":
    main()
