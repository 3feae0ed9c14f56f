"""Two-stage training of mobilenetv2 BackgroundMattingV2 from scratch, on a CPU.

Stage ``base`` trains MattingBase on whole composites at a modest resolution; stage ``refine``
starts from the base weights and trains MattingRefine end to end at a higher resolution, with
the backbone on the input downsampled by ``backbone_scale`` (0.25, the HD preset) as at
deployment. Losses follow the original's recipe (the BGMv2 paper and its repository's
training scripts):

- base: L1(alpha) + L1(Sobel(alpha)) + L1(foreground where true alpha > 0)
  + MSE(error map, |predicted alpha - true alpha|);
- refine: the alpha, Sobel and foreground terms on the full-resolution outputs and on the
  coarse ones, + MSE(upsampled coarse error map, |upsampled coarse alpha - true alpha|).

Adam with a learning rate per part (backbone lowest; the backbone starts from random weights
here, so the rates are higher than the original's fine-tuning ones), a short warm-up, then a
cosine decay over the stage's steps.

Recipes (``--recipe``, default per stage): ``base``; ``refine-v1`` (the whole network trained
end to end, which made the first demo weights), ``refine-v2`` (the default: the base stage's
backbone, ASPP and decoder frozen, batch-norm statistics included, and only the refiner trained,
longer, on composites with more misaligned plates and more frames without a subject) and
``refine-v3`` (refine-v2 continued from its weights with an MSE term on the full-resolution
alpha; the demo weights are base → refine-v2 → refine-v3).

Usage::

    python -m training.train --stage base --out runs/demo [--resume] [--minutes N] [--seed S] [--threads T]
    python -m training.train --stage refine --out runs/demo [--recipe refine-v2] [--init FILE] [--resume] ...

Files in ``--out``: ``<stage>_state.pth`` (resumable: weights, optimiser, RNG, step),
``<stage>_weights.pth`` (plain state_dict of the latest weights), ``<stage>_best.pth``
(best held-out synthetic MSE), ``log.jsonl`` (one JSON object per line).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from model import MattingBase, MattingRefine

from .composites import REFINE_PLATE, PlateConfig, make_batch, validation_set

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
        val_count: held-out synthetic samples evaluated (``val_*`` in the log; the best
            ``val_mse`` selects ``<stage>_best.pth``).
        val_size: their (height, width).
        freeze: parts (``backbone``, ``aspp``, ``decoder``) kept as they start: no gradients,
            not in the optimiser, batch norm in eval mode (running statistics unchanged).
        plate: the training composites' plate perturbations.
        index_offset: added to the sample indices, so that a recipe sees composites that
            another recipe of the stage never saw.
        val_misaligned: samples of a second held-out set (another seed) with the training
            ``plate``'s perturbations, at ``val_size`` (``valmis_*`` in the log; 0: none).
        pha_mse_weight: refine stage: adds this times MSE(alpha, true alpha) on the
            full-resolution alpha (``pha_mse`` in the log). L1 alone makes the refiner commit
            to 0 or 1 where it is unsure (the median), which lowers SAD but raises MSE; the MSE
            term pulls those pixels towards the expected alpha (about: 5 puts an unsure pixel
            within 0.1 of it).
    """

    steps: int
    batch: int
    sizes: tuple[tuple[int, int], ...]
    lr: dict[str, float]
    warmup: int
    sample_pixels: int = 0
    val_count: int = 24
    val_size: tuple[int, int] = (192, 256)
    freeze: tuple[str, ...] = ()
    plate: PlateConfig = PlateConfig()
    index_offset: int = 0
    val_misaligned: int = 0
    pha_mse_weight: float = 0.0


RECIPES = {
    "base": StageConfig(
        steps=1000,
        batch=8,
        sizes=((192, 192), (160, 224), (224, 160), (176, 240)),
        lr={"backbone": 5e-4, "aspp": 1e-3, "decoder": 1e-3},
        warmup=50,
        val_size=(192, 256),
    ),
    # Made the first demo weights (commit aef5faf): end to end, which made the coarse network
    # worse on two of the three real pairs than the base stage's weights alone.
    "refine-v1": StageConfig(
        steps=240,
        batch=4,
        sizes=((640, 640), (544, 736), (736, 544)),
        lr={"backbone": 1e-4, "aspp": 1e-4, "decoder": 2e-4, "refiner": 5e-4},
        warmup=20,
        sample_pixels=40_000,
        val_count=12,
        val_size=(480, 640),
        # Refine crops stand for parts of a full-size photo: plate shifts in their own pixels.
        plate=PlateConfig(absolute_shift=True),
    ),
    # The coarse network stays the base stage's (frozen, batch norm included); only the refiner
    # learns, on crops of a 1920x1080 photo with more misaligned plates rotated about the
    # photo's centre and more crops without a subject. Backward through the refiner only:
    # a step costs about half of a refine-v1 step, so the stage runs 2x as many.
    "refine-v2": StageConfig(
        steps=500,
        batch=4,
        sizes=((640, 640), (544, 736), (736, 544)),
        lr={"refiner": 1e-3},
        warmup=20,
        sample_pixels=40_000,
        val_count=36,
        val_size=(480, 640),
        freeze=("backbone", "aspp", "decoder"),
        plate=REFINE_PLATE,
        index_offset=10_000_000,
        val_misaligned=12,
    ),
}
# Continues refine-v2's last weights (--init <v2 run>/refine_weights.pth): the same frozen
# coarse network and composites (new ones), the refiner's alpha loss plus 5 x MSE. On the
# held-out sets, v2's refiner lowered the L1 error of the upsampled coarse alpha but raised
# its MSE (it commits to 0 or 1 where unsure), and MSE is the score the weights are judged by.
RECIPES["refine-v3"] = replace(RECIPES["refine-v2"], steps=200, lr={"refiner": 3e-4}, warmup=10,
                               index_offset=20_000_000, pha_mse_weight=5.0)
STAGE_RECIPES = {"base": ("base",), "refine": ("refine-v1", "refine-v2", "refine-v3")}
DEFAULT_RECIPE = {"base": "base", "refine": "refine-v2"}
STAGE_CONFIGS = {stage: RECIPES[name] for stage, name in DEFAULT_RECIPE.items()}
MISALIGNED_VAL_SEED = 1_000_033
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


def refine_loss(outputs: list[Tensor], true_pha: Tensor, true_fgr: Tensor, pha_mse_weight: float = 0.0) -> dict[str, Tensor]:
    """MattingRefine loss on full-resolution and coarse outputs, as the original's refine stage;
    ``pha_mse_weight`` > 0 adds that times MSE on the full-resolution alpha (``pha_mse``)."""
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
    if pha_mse_weight > 0:
        terms["pha_mse"] = pha_mse_weight * F.mse_loss(pha, true_pha)
    return terms


# ---------------------------------------------------------------------------------------------
# Model, optimiser, schedule


def new_model(stage: str, sample_pixels: int) -> MattingBase:
    """The stage's network (mobilenetv2), in training mode."""
    if stage == "base":
        return MattingBase("mobilenetv2")
    return MattingRefine("mobilenetv2", BACKBONE_SCALE, "sampling", sample_pixels, refine_prevent_oversampling=False)


def apply_freeze(model: MattingBase, freeze: tuple[str, ...]) -> None:
    """Training mode, except the frozen parts: eval mode (batch norm keeps its running
    statistics) and no gradients."""
    model.train()
    for part in freeze:
        module = getattr(model, part)
        module.eval()
        module.requires_grad_(False)


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


def validation_sets(config: StageConfig) -> dict[str, dict[str, np.ndarray]]:
    """The stage's held-out synthetic sets by log prefix: ``val`` (selects the best
    checkpoint) and, if the recipe asks, ``valmis`` (its training plate perturbations)."""
    sets = {"val": validation_set(config.val_count, config.val_size)}
    if config.val_misaligned:
        sets["valmis"] = validation_set(config.val_misaligned, config.val_size, seed=MISALIGNED_VAL_SEED, plate=config.plate)
    return sets


@torch.no_grad()
def evaluate(model: MattingBase, config: StageConfig, sets: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
    """Alpha MSE and SAD (/1000, per image) on each held-out set, in eval mode; for
    MattingRefine also the MSE of the coarse alpha upsampled bilinearly (``*_mse_coarse``: what
    the refiner starts from), and, when ``val`` has more than 12 samples, the MSE of its first 12
    (``val12_mse``: the set of the refine-v1 recipe)."""
    was_training = model.training
    model.eval()
    refine = isinstance(model, MattingRefine)
    if refine:
        model.refine_sample_pixels = 80_000  # as deployed (HD preset)
        model.refine_prevent_oversampling = True
    scores: dict[str, float] = {}
    for name, val in sets.items():
        errors, sads, coarse = [], [], []
        for i in range(0, len(val["src"]), 4):
            src = torch.from_numpy(val["src"][i : i + 4])
            bgr = torch.from_numpy(val["bgr"][i : i + 4])
            true = torch.from_numpy(val["pha"][i : i + 4])
            outputs = model(src, bgr)
            pha = outputs[0]
            errors.append(((pha - true) ** 2).mean(dim=(1, 2, 3)))
            sads.append((pha - true).abs().sum(dim=(1, 2, 3)) / 1000)
            if refine:
                up = F.interpolate(outputs[2], size=true.shape[2:], mode="bilinear", align_corners=False)
                coarse.append(((up - true) ** 2).mean(dim=(1, 2, 3)))
        errors_all = torch.cat(errors)
        scores[f"{name}_mse"] = float(errors_all.mean())
        scores[f"{name}_sad"] = float(torch.cat(sads).mean())
        if coarse:
            scores[f"{name}_mse_coarse"] = float(torch.cat(coarse).mean())
        if name == "val" and len(errors_all) > 12:
            scores["val12_mse"] = float(errors_all[:12].mean())
    if refine:
        model.refine_sample_pixels = config.sample_pixels
        model.refine_prevent_oversampling = False
    if was_training:
        apply_freeze(model, config.freeze)
    return scores


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, then rename: an interrupted save never leaves a torn file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_state(
    out: Path, stage: str, step: int, model: MattingBase, optimizer: torch.optim.Optimizer, best: float, seconds: float, recipe: str
) -> None:
    """Everything a resumed run needs: weights, optimiser, torch RNG, step, best score, time spent."""
    state = {
        "stage": stage,
        "recipe": recipe,
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "best_val_mse": best,
        "seconds": seconds,
    }
    _save_atomic(state, out / f"{stage}_state.pth")
    _save_atomic(model.state_dict(), out / f"{stage}_weights.pth")


def load_initial_weights(model: MattingBase, out: Path, stage: str, init: Path | None = None) -> str:
    """Refine stage: the base stage's last weights, at the end of its schedule, as the original
    project chains its stages (the refiner stays at its initialisation): ``init`` if given,
    else ``<out>/base_weights.pth``. ``init`` may also hold a refiner (MattingRefine weights of
    an earlier refine run, which a later recipe continues). Returns the origin for the log
    (path and sha256)."""
    if stage == "base":
        if init is not None:
            raise ValueError("--init is for the refine stage (the base stage starts from random weights)")
        return "random"
    for path in (init,) if init is not None else (out / "base_weights.pth",):
        if path.is_file():
            state = torch.load(path, map_location="cpu", weights_only=True)
            missing, unexpected = model.load_state_dict(state, strict=False)
            if unexpected or any(not key.startswith("refiner.") for key in missing):
                raise RuntimeError(f"{path}: not MattingBase weights (missing {missing[:3]}, unexpected {unexpected[:3]})")
            return f"{path} (sha256 {hashlib.sha256(path.read_bytes()).hexdigest()})"
    raise FileNotFoundError(f"no base weights in {out}: run `python -m training.train --stage base --out {out}` first")


# ---------------------------------------------------------------------------------------------
# Training loop


def _batch(seed: int, stage: str, step: int, config: StageConfig) -> dict[str, Tensor]:
    """The composites of one step, a pure function of (seed, stage, step)."""
    size = config.sizes[step % len(config.sizes)]
    # Each stage (and recipe) reads its own sample indices, so the refine stage sees new composites.
    first = (STAGES.index(stage) * 10_000_000) + config.index_offset + step * config.batch
    return {k: torch.from_numpy(v) for k, v in make_batch(seed, first, config.batch, size, plate=config.plate).items()}


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
    recipe: str | None = None,
    init: Path | None = None,
) -> None:
    """Runs (or continues) one stage until its last step or until ``minutes`` have passed.

    ``steps`` overrides the stage's step count (short smoke runs; the schedule shrinks with it).
    ``recipe`` picks the stage's configuration (default :data:`DEFAULT_RECIPE`); ``init`` the
    refine stage's starting weights (default ``<out>/base_weights.pth``).
    """
    torch.set_num_threads(threads)
    recipe = recipe or DEFAULT_RECIPE[stage]
    if recipe not in STAGE_RECIPES[stage]:
        raise ValueError(f"recipe={recipe!r} is not a {stage} recipe; valid: {list(STAGE_RECIPES[stage])}")
    config = RECIPES[recipe]
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
        saved = state.get("recipe", "refine-v1" if stage == "refine" else "base")  # states before recipes: v1
        if saved != recipe:
            raise ValueError(f"{state_path} was trained with recipe {saved!r}, not {recipe!r}: pass --recipe {saved}")
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
        origin = load_initial_weights(model, out, stage, init)
        optimizer = new_optimizer(model, config.lr)
    apply_freeze(model, config.freeze)
    loss_fn = base_loss if stage == "base" else partial(refine_loss, pha_mse_weight=config.pha_mse_weight)
    val = validation_sets(config)

    def log(record: dict[str, Any]) -> None:
        line = json.dumps({"stage": stage, **record}, sort_keys=False)
        print(line, flush=True)
        with open(log_path, "a") as handle:
            handle.write(line + "\n")

    log({"event": "start", "step": step, "origin": origin, "recipe": recipe, "seed": seed, "threads": threads, "config": asdict(config)})
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
            scores = evaluate(model, config, val)
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
            save_state(out, stage, step, model, optimizer, best, spent + time.monotonic() - started, recipe)
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
    parser.add_argument("--recipe", choices=list(RECIPES), default=None, help="the stage's configuration (default: base / refine-v2)")
    parser.add_argument("--init", type=Path, default=None, help="refine stage: starting weights (default <out>/base_weights.pth)")
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
        args.log_every, args.eval_every, args.checkpoint_minutes, args.steps, args.recipe, args.init,
    )


if __name__ == "__main__":
    main()
