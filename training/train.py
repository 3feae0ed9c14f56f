"""Two-stage training of mobilenetv2 BackgroundMattingV2 from scratch, on a CPU.

Stage ``base`` trains MattingBase on whole composites at a modest resolution; stage ``refine``
starts from the base weights and trains MattingRefine end to end at a higher resolution, with
the backbone on the input downsampled by ``backbone_scale`` (0.25, the HD preset) as at
deployment. Losses follow the original's recipe (see /work/shared/reference/BGMV2_FACTS.md
"Training facts"):

- base: L1(alpha) + L1(Sobel(alpha)) + L1(foreground where true alpha > 0)
  + MSE(error map, |predicted alpha - true alpha|);
- refine: the alpha, Sobel and foreground terms on the full-resolution outputs and on the
  coarse ones, + MSE(upsampled coarse error map, |upsampled coarse alpha - true alpha|).

Adam with a learning rate per part (backbone lowest; the backbone starts from random weights
here, so the rates are higher than the original's fine-tuning ones), a short warm-up, then a
cosine decay over the stage's steps.

Usage::

    python -m training.train --stage base --out runs/demo [--resume] [--minutes N] [--seed S] [--threads T]
    python -m training.train --stage refine --out runs/demo [--resume] ...

Files in ``--out``: ``<stage>_state.pth`` (resumable: weights, optimiser, RNG, step),
``<stage>_weights.pth`` (plain state_dict of the latest weights), ``<stage>_best.pth``
(best held-out synthetic MSE), ``log.jsonl`` (one JSON object per line).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from model import MattingBase, MattingRefine

from .composites import PlateConfig, make_batch, validation_set

STAGES = ("base", "refine")


@dataclass(frozen=True)
class StageConfig:
    """The schedule and data of one stage.

    Attributes:
        steps: optimiser steps of the stage (the cosine schedule spans them).
        batch: samples per step.
        sizes: (height, width) choices, one drawn per step (aspect ratios as at deployment).
        lr: learning rate per part (``backbone``, ``aspp``, ``decoder``, ``refiner``).
        warmup: steps of linear warm-up.
        sample_pixels: refine stage: pixels refined per image (16 per patch).
        val_count: held-out synthetic samples evaluated.
        val_size: their (height, width).
    """

    steps: int
    batch: int
    sizes: tuple[tuple[int, int], ...]
    lr: dict[str, float]
    warmup: int
    sample_pixels: int = 0
    val_count: int = 24
    val_size: tuple[int, int] = (192, 256)


STAGE_CONFIGS = {
    "base": StageConfig(
        steps=1000,
        batch=8,
        sizes=((192, 192), (160, 224), (224, 160), (176, 240)),
        lr={"backbone": 5e-4, "aspp": 1e-3, "decoder": 1e-3},
        warmup=50,
        val_size=(192, 256),
    ),
    "refine": StageConfig(
        steps=240,
        batch=4,
        sizes=((640, 640), (544, 736), (736, 544)),
        lr={"backbone": 1e-4, "aspp": 1e-4, "decoder": 2e-4, "refiner": 5e-4},
        warmup=20,
        sample_pixels=40_000,
        val_count=12,
        val_size=(480, 640),
    ),
}
BACKBONE_SCALE = 0.25  # the HD preset: the refine stage trains the model as it is deployed


# ---------------------------------------------------------------------------------------------
# Losses


def sobel(x: Tensor) -> Tensor:
    """Gradient magnitude with normalised 3x3 Sobel kernels (replicate border): (B, C, H, W)."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype, device=x.device) / 8
    kernels = torch.stack([kx, kx.t()]).unsqueeze(1)  # (2, 1, 3, 3)
    b, c, h, w = x.shape
    padded = F.pad(x.reshape(b * c, 1, h, w), (1, 1, 1, 1), mode="replicate")
    g = F.conv2d(padded, kernels)
    return (g.pow(2).sum(dim=1, keepdim=True) + 1e-6).sqrt().reshape(b, c, h, w)


def matting_terms(pha: Tensor, fgr: Tensor, true_pha: Tensor, true_fgr: Tensor) -> dict[str, Tensor]:
    """The alpha, alpha-gradient and foreground L1 terms (foreground only where alpha > 0)."""
    mask = (true_pha > 0).to(fgr.dtype)
    return {
        "pha": F.l1_loss(pha, true_pha),
        "grad": F.l1_loss(sobel(pha), sobel(true_pha)),
        "fgr": F.l1_loss(fgr * mask, true_fgr * mask),
    }


def base_loss(outputs: list[Tensor], true_pha: Tensor, true_fgr: Tensor) -> dict[str, Tensor]:
    """MattingBase loss; the error map learns |pred alpha - true alpha| (pred detached)."""
    pha, fgr, err, _ = outputs
    terms = matting_terms(pha, fgr, true_pha, true_fgr)
    terms["err"] = F.mse_loss(err, (pha.detach() - true_pha).abs())
    return terms


def refine_loss(outputs: list[Tensor], true_pha: Tensor, true_fgr: Tensor) -> dict[str, Tensor]:
    """MattingRefine loss on full-resolution and coarse outputs, as the original's refine stage."""
    pha, fgr, pha_sm, fgr_sm, err_sm, _ = outputs
    size = true_pha.shape[2:]
    true_pha_sm = F.interpolate(true_pha, size=pha_sm.shape[2:], mode="bilinear", align_corners=False)
    true_fgr_sm = F.interpolate(true_fgr, size=pha_sm.shape[2:], mode="bilinear", align_corners=False)
    full = matting_terms(pha, fgr, true_pha, true_fgr)
    coarse = matting_terms(pha_sm, fgr_sm, true_pha_sm, true_fgr_sm)
    terms = {k: full[k] for k in full} | {f"{k}_sm": v for k, v in coarse.items()}
    err_up = F.interpolate(err_sm, size=size, mode="bilinear", align_corners=False)
    pha_up = F.interpolate(pha_sm, size=size, mode="bilinear", align_corners=False)
    terms["err"] = F.mse_loss(err_up, (pha_up.detach() - true_pha).abs())
    return terms


# ---------------------------------------------------------------------------------------------
# Model, optimiser, schedule


def new_model(stage: str, sample_pixels: int) -> MattingBase:
    """The stage's network (mobilenetv2), in training mode."""
    if stage == "base":
        return MattingBase("mobilenetv2")
    return MattingRefine("mobilenetv2", BACKBONE_SCALE, "sampling", sample_pixels, refine_prevent_oversampling=False)


def new_optimizer(model: MattingBase, lr: dict[str, float]) -> torch.optim.Adam:
    """Adam with one parameter group per part, each with its own learning rate."""
    groups = [{"params": getattr(model, part).parameters(), "lr": rate, "name": part} for part, rate in lr.items()]
    return torch.optim.Adam(groups)


def lr_factor(step: int, config: StageConfig) -> float:
    """Linear warm-up, then cosine decay to 5% of the base rates at the last step."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    progress = min(1.0, (step - config.warmup) / max(1, config.steps - config.warmup))
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------
# Evaluation on the held-out synthetic set


@torch.no_grad()
def evaluate(model: MattingBase, stage: str, config: StageConfig, val: dict[str, np.ndarray]) -> dict[str, float]:
    """Alpha MSE, SAD (/1000, per image) and mean abs error map on the held-out set, in eval mode."""
    was_training = model.training
    model.eval()
    if isinstance(model, MattingRefine):
        model.refine_sample_pixels = 80_000  # as deployed (HD preset)
        model.refine_prevent_oversampling = True
    errors, sads = [], []
    for i in range(0, len(val["src"]), 4):
        src = torch.from_numpy(val["src"][i : i + 4])
        bgr = torch.from_numpy(val["bgr"][i : i + 4])
        true = torch.from_numpy(val["pha"][i : i + 4])
        pha = model(src, bgr)[0]
        errors.append(((pha - true) ** 2).mean(dim=(1, 2, 3)))
        sads.append((pha - true).abs().sum(dim=(1, 2, 3)) / 1000)
    if isinstance(model, MattingRefine):
        model.refine_sample_pixels = config.sample_pixels
        model.refine_prevent_oversampling = False
    model.train(was_training)
    return {"val_mse": float(torch.cat(errors).mean()), "val_sad": float(torch.cat(sads).mean())}


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, then rename: an interrupted save never leaves a torn file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_state(out: Path, stage: str, step: int, model: MattingBase, optimizer: torch.optim.Optimizer, best: float, seconds: float) -> None:
    """Everything a resumed run needs: weights, optimiser, torch RNG, step, best score, time spent."""
    state = {
        "stage": stage,
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "best_val_mse": best,
        "seconds": seconds,
    }
    _save_atomic(state, out / f"{stage}_state.pth")
    _save_atomic(model.state_dict(), out / f"{stage}_weights.pth")


def load_initial_weights(model: MattingBase, out: Path, stage: str) -> str:
    """Refine stage: the base stage's last weights, at the end of its schedule, as the original
    project chains its stages (the refiner stays at its initialisation)."""
    if stage == "base":
        return "random"
    for name in ("base_weights.pth",):
        path = out / name
        if path.is_file():
            state = torch.load(path, map_location="cpu", weights_only=True)
            missing, unexpected = model.load_state_dict(state, strict=False)
            if unexpected or any(not key.startswith("refiner.") for key in missing):
                raise RuntimeError(f"{path}: not MattingBase weights (missing {missing[:3]}, unexpected {unexpected[:3]})")
            return str(path)
    raise FileNotFoundError(f"no base weights in {out}: run `python -m training.train --stage base --out {out}` first")


# ---------------------------------------------------------------------------------------------
# Training loop


def _batch(seed: int, stage: str, step: int, config: StageConfig) -> dict[str, Tensor]:
    """The composites of one step, a pure function of (seed, stage, step)."""
    size = config.sizes[step % len(config.sizes)]
    # Each stage reads its own sample indices, so the refine stage sees new composites.
    first = (STAGES.index(stage) * 10_000_000) + step * config.batch
    # Refine crops stand for parts of a full-size photo: plate shifts in their own pixels.
    plate = PlateConfig(absolute_shift=stage == "refine")
    return {k: torch.from_numpy(v) for k, v in make_batch(seed, first, config.batch, size, plate=plate).items()}


def train(
    stage: str,
    out: Path,
    resume: bool = False,
    minutes: float = float("inf"),
    seed: int = 0,
    threads: int = 2,
    log_every: int = 10,
    eval_every: int = 100,
    checkpoint_minutes: float = 5.0,
    steps: int | None = None,
) -> None:
    """Runs (or continues) one stage until its last step or until ``minutes`` have passed.

    ``steps`` overrides the stage's step count (short smoke runs; the schedule shrinks with it).
    """
    torch.set_num_threads(threads)
    config = STAGE_CONFIGS[stage]
    if steps is not None:
        config = replace(config, steps=steps, warmup=min(config.warmup, max(1, steps // 4)))
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "log.jsonl"
    model = new_model(stage, config.sample_pixels).train()
    optimizer = new_optimizer(model, config.lr)
    state_path = out / f"{stage}_state.pth"
    step, best, spent = 0, float("inf"), 0.0
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        step, best, spent = int(state["step"]), float(state["best_val_mse"]), float(state["seconds"])
        origin = f"resumed from {state_path} at step {step}"
    else:
        if state_path.is_file():
            raise FileExistsError(f"{state_path} exists: pass --resume to continue it, or another --out")
        torch.manual_seed(seed)
        model = new_model(stage, config.sample_pixels).train()  # seeded initialisation
        origin = load_initial_weights(model, out, stage)
        optimizer = new_optimizer(model, config.lr)
    loss_fn = base_loss if stage == "base" else refine_loss
    val = validation_set(config.val_count, config.val_size)

    def log(record: dict[str, Any]) -> None:
        line = json.dumps({"stage": stage, **record}, sort_keys=False)
        print(line, flush=True)
        with open(log_path, "a") as handle:
            handle.write(line + "\n")

    log({"event": "start", "step": step, "origin": origin, "seed": seed, "threads": threads, "config": asdict(config)})
    started = time.monotonic()
    last_checkpoint = started
    running: dict[str, float] = {}
    pool = ThreadPoolExecutor(max_workers=1)  # builds the next batch while this one trains
    upcoming: Future = pool.submit(_batch, seed, stage, step, config)
    while step < config.steps:
        batch = upcoming.result()
        if step + 1 < config.steps:
            upcoming = pool.submit(_batch, seed, stage, step + 1, config)
        for group in optimizer.param_groups:
            group["lr"] = config.lr[group["name"]] * lr_factor(step, config)
        outputs = model(batch["src"], batch["bgr"])
        terms = loss_fn(list(outputs), batch["pha"], batch["fgr"])
        loss = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        for key, value in {"loss": loss, **terms}.items():
            running[key] = running.get(key, 0.0) + float(value.detach())
        now = time.monotonic()
        record: dict[str, Any] = {}
        if step % eval_every == 0 or step == config.steps:
            scores = evaluate(model, stage, config, val)
            record |= scores
            if scores["val_mse"] < best:
                best = scores["val_mse"]
                _save_atomic(model.state_dict(), out / f"{stage}_best.pth")
        if step % log_every == 0 or record:
            count = step % log_every or log_every
            record = {"step": step, **{k: round(v / count, 5) for k, v in running.items()}, **record}
            record["lr_factor"] = round(lr_factor(step - 1, config), 4)
            record["minutes"] = round((spent + now - started) / 60, 2)
            log(record)
            running = {}
        out_of_time = now - started >= minutes * 60
        if now - last_checkpoint >= checkpoint_minutes * 60 or out_of_time or step == config.steps:
            save_state(out, stage, step, model, optimizer, best, spent + time.monotonic() - started)
            last_checkpoint = time.monotonic()
        if out_of_time and step < config.steps:
            log({"event": "paused", "step": step, "reason": f"--minutes {minutes} reached; continue with --resume"})
            break
    else:
        log({"event": "done", "step": step, "best_val_mse": best, "minutes": round((spent + time.monotonic() - started) / 60, 2)})
    pool.shutdown(cancel_futures=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=STAGES, required=True)
    parser.add_argument("--out", type=Path, required=True, help="run folder (both stages share it)")
    parser.add_argument("--resume", action="store_true", help="continue the stage from <out>/<stage>_state.pth")
    parser.add_argument("--minutes", type=float, default=float("inf"), help="stop (resumably) after this many minutes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--log-every", type=int, default=10, help="steps per log line")
    parser.add_argument("--eval-every", type=int, default=100, help="steps per held-out evaluation")
    parser.add_argument("--checkpoint-minutes", type=float, default=5.0)
    parser.add_argument("--steps", type=int, default=None, help="override the stage's step count (smoke runs)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    train(
        args.stage, args.out, args.resume, args.minutes, args.seed, args.threads,
        args.log_every, args.eval_every, args.checkpoint_minutes, args.steps,
    )


if __name__ == "__main__":
    main()
