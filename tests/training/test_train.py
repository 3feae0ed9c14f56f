"""The trainer end to end at a few steps: both stages, recipes chained with --init, the frozen
parts left as they started, resume rules. Scores are not checked (a few steps learn nothing);
that the recipe reproduces the demo weights' scores is a CPU-hours run, not a test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("cv2")  # the composites need OpenCV (the train extra)

from training.train import train  # noqa: E402


def _events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_base_then_refiner_only_recipe(tmp_path: Path) -> None:
    base = tmp_path / "base"
    train("base", base, steps=2, threads=2, eval_every=1000)
    assert {"base_state.pth", "base_weights.pth", "base_best.pth", "log.jsonl"} <= {p.name for p in base.iterdir()}
    assert _events(base)[-1]["event"] == "done"
    with pytest.raises(FileExistsError, match="--resume"):
        train("base", base, steps=2, threads=2)

    refine = tmp_path / "v3"
    train("refine", refine, steps=1, threads=2, recipe="refine-v3", init=base / "base_weights.pth")
    start = _events(refine)[0]
    assert start["recipe"] == "refine-v3" and "sha256" in start["origin"]
    assert start["config"]["freeze"] == ["backbone", "aspp", "decoder"]
    assert any("valmis_mse" in event and "pha_mse" in event for event in _events(refine))
    before = torch.load(base / "base_weights.pth", weights_only=True)
    after = torch.load(refine / "refine_weights.pth", weights_only=True)
    frozen = [key for key in before if not key.startswith("refiner.")]
    assert frozen and all(torch.equal(before[key], after[key]) for key in frozen)  # batch-norm statistics too

    with pytest.raises(ValueError, match="--recipe refine-v3"):
        train("refine", refine, resume=True, steps=1, recipe="refine-v2")
    with pytest.raises(ValueError, match="not a base recipe"):
        train("base", tmp_path / "x", steps=1, recipe="refine-v2")
