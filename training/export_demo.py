"""Writes trained weights as the demo checkpoint: a plain MattingRefine state_dict in the
original release's layout (the keys of ``pytorch_mobilenetv2.pth``, strict-loadable), floats
stored as fp16 to keep the file small (``num_batches_tracked`` stays int64), and its sha256
beside it (``<file>.sha256``, the format of ``sha256sum``).

Usage::

    python -m training.export_demo --run runs/demo [--weights refine_best.pth] [--out model/weights/demo_mobilenetv2.pth]
"""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path

import torch
from torch import Tensor

from model import MattingRefine

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "model" / "weights" / "demo_mobilenetv2.pth"


def demo_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` checked against MattingRefine("mobilenetv2") (strict) and stored compactly:
    floating tensors as fp16, others (``num_batches_tracked``) as they are, in the model's key order."""
    reference = MattingRefine("mobilenetv2")
    reference.load_state_dict(state, strict=True)  # raises naming missing/unexpected keys
    out = {}
    for key, value in reference.state_dict().items():
        out[key] = value.detach().to(torch.float16).clone() if value.is_floating_point() else value.detach().clone()
    return out


def export(weights: Path, out: Path) -> str:
    """Writes the demo checkpoint and ``<out>.sha256``; returns the sha256."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    compact = demo_state_dict(state)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed only once it loads strictly into a fresh model (as
    # users will load it): an interrupted or failed export never leaves a torn demo file.
    staged = out.with_name(out.name + ".part")
    try:
        torch.save(compact, staged)
        MattingRefine("mobilenetv2").load_state_dict(torch.load(staged, map_location="cpu", weights_only=True), strict=True)
        digest = hashlib.sha256(staged.read_bytes()).hexdigest()
        os.replace(staged, out)
    finally:
        staged.unlink(missing_ok=True)
    out.with_name(out.name + ".sha256").write_text(f"{digest}  {out.name}\n")
    return digest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.export_demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="the run folder of python -m training.train")
    parser.add_argument("--weights", default="refine_best.pth", help="file in --run to export (default: best held-out)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    source = args.run / args.weights
    if not source.is_file():
        parser.error(f"{source} does not exist; train the refine stage first (python -m training.train --stage refine --out {args.run})")
    digest = export(source, args.out)
    print(f"{args.out}  {args.out.stat().st_size} bytes  sha256 {digest}")


if __name__ == "__main__":
    main()
