"""CPU speed of the default ONNX export, rewrite by rewrite, against the original project's
recipe and the arithmetic floor, in one run: ``benchmarks/results/cpu_speed.json``.

    python -m benchmarks.cpu_speed                      # ~12 min on a quiet 2-core machine
    python -m benchmarks.cpu_speed --cases hd-mobilenetv2 --rounds 5 --out /tmp/s.json   # smoke

For every case (backbone, resolution with its preset, fixed sampling: exactly
``sample_pixels // 16`` cells refined) the graphs below are exported from the same seeded
model and timed interleaved (one call of each per round, so machine drift hits all alike; each
call after an idle ``--pause``, so the previous session's spin-waiting workers have parked)
with onnxruntime's CPU provider on the same session options as ``bgm-deploy bench``:

* ``original``: the original project's recipe (``exporters/original.py``);
* ``reference``: our export without speed rewrites;
* ``previous``: the default before this round (patch inputs sampled per cell, conv1/conv3
  split; commit 8e35242);
* ``+fixed-weights`` (backbone 0.25 only): coarse windows by Gather + fixed-weight GEMM;
* ``default``: what ``bgm-deploy export`` writes now (adds 2x2 blocks).

Every graph's outputs are compared with eager PyTorch on the timed inputs by verify's parity
rule (``compare_case``: pass / warn for a selection differing only at error ties / fail),
with the max abs differences and whether ``ref_sm`` is identical. The floor is the frame's FLOPs (counted on the eager model)
at the fp32 GEMM peak measured in the same run, as ``bgm-deploy bench`` computes it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import runtimes
from bgm_deploy.bench import FIXED_PAIR, BenchConfig, _inputs, _model_config, parse_resolution
from bgm_deploy.bench.flops import count_flops, measure_peak_gemm
from bgm_deploy.bench.harness import INTERLEAVE_PAUSE_S
from bgm_deploy.bench.report import write_atomic
from bgm_deploy.environment import cpu_model
from bgm_deploy.verify import VerifyConfig, compare_case
from exporters.config import OnnxConfig, output_names
from exporters.onnx import export_patches, onnx_from_torch
from exporters.original import export_original_recipe, original_recipe_config
from exporters.patcher import EXPORT_PATCHES, Patch
from exporters.rewrites import _NETWORK_PATCHES, MIN_CELLS_PER_BLOCK, window_crops
from model.checkpoint import build_model

CASES = {
    "hd-mobilenetv2": ("mobilenetv2", (1920, 1080)),
    "4k-mobilenetv2": ("mobilenetv2", (3840, 2160)),
    "hd-resnet50": ("resnet50", (1920, 1080)),
    # Uniform noise instead of the photo pair: the error map has no edges, so the selected
    # cells are scattered and few 2x2 blocks hold two of them (the blocks' worst case).
    "hd-mobilenetv2-scattered": ("mobilenetv2", (1920, 1080)),
}
_, SPLIT_CONV1, SPLIT_CONV3 = _NETWORK_PATCHES


def _per_cell(exact_half: bool) -> Patch:
    """Patch inputs sampled directly, one 8x8 window per selected cell (no 2x2 blocks)."""

    def gather(hid, pha, fgr, src, bgr, idx, kernel_size, crop_method):  # type: ignore[no-untyped-def]
        return window_crops(torch.cat([hid, pha, fgr], dim=1).float(), src, bgr, idx, 1, exact_half)

    return Patch("module:model.refiner", "gather_patch_inputs", gather)


def variants(model: torch.nn.Module, full: bool) -> dict[str, tuple[Patch, ...] | None]:
    """Graph name -> export patches (None: the original recipe)."""
    quarter = model.backbone_scale == 0.25
    chosen: dict[str, tuple[Patch, ...] | None] = {"original": None}
    if full:
        chosen["reference"] = EXPORT_PATCHES
    chosen["previous"] = (*EXPORT_PATCHES, _per_cell(False), SPLIT_CONV1, SPLIT_CONV3)
    if full and quarter:
        chosen["+fixed-weights"] = (*EXPORT_PATCHES, _per_cell(True), SPLIT_CONV1, SPLIT_CONV3)
    chosen["default"] = export_patches("generic", model)
    return chosen


def _feeds(size: tuple[int, int], scattered: bool) -> dict[str, np.ndarray]:
    if scattered:
        rng = np.random.default_rng(0)
        return {part: rng.random((1, 3, size[1], size[0]), dtype=np.float32) for part in ("src", "bgr")}
    return _inputs("fixed", size, 1)[0].feeds()  # the bundled pair bench's fixed mode times


def cells_in_blocks(ref_sm: np.ndarray) -> float:
    """Fraction of the selected cells that the default graph refines in 2x2 blocks."""
    ref = torch.from_numpy(ref_sm)
    padded = torch.nn.functional.pad(ref, (0, ref.shape[3] % 2, 0, ref.shape[2] % 2))
    counts = torch.nn.functional.avg_pool2d(padded, 2) * 4  # selected cells per 2x2 block
    per_cell = torch.nn.functional.interpolate(counts, scale_factor=2.0, mode="nearest")[..., : ref.shape[2], : ref.shape[3]]
    return float(((per_cell >= MIN_CELLS_PER_BLOCK) & (ref > 0)).sum() / max(float(ref.sum()), 1.0))


def run_case(name: str, rounds: int, threads: int, workdir: Path, peak: float, full: bool,
             size: tuple[int, int] | None = None, pause: float = INTERLEAVE_PAUSE_S) -> dict[str, Any]:
    backbone, preset_size = CASES[name]
    size = size or preset_size
    config = _model_config(BenchConfig(backbones=(backbone,), resolutions=(size,)), backbone, size)
    config = original_recipe_config(config)  # roi_align + scatter_element: the ONNX defaults, and the original's
    model = build_model(config).eval()
    feeds = _feeds(size, name.endswith("-scattered"))
    src, bgr = torch.from_numpy(feeds["src"]), torch.from_numpy(feeds["bgr"])
    with torch.inference_mode():
        reference = dict(zip(output_names("refine"), (t.numpy() for t in model(src, bgr))))
        flops = count_flops(model, src, bgr)
    floor_ms = flops / (peak * 1e9) * 1e3

    paths: dict[str, Path] = {}
    for graph, patches in variants(model, full).items():
        path = workdir / f"{name}-{graph.strip('+')}.onnx"
        print(f"[{name}] exporting {graph}…", file=sys.stderr)
        if patches is None:
            export_original_recipe(model, path, size)
        else:
            onnx_from_torch(model, config, OnnxConfig(trace_resolution=size), path, patches=patches)
        paths[graph] = path

    runners = {g: runtimes.create_runner("onnxruntime", path=p, provider="cpu", threads=threads) for g, p in paths.items()}
    parity: dict[str, dict[str, Any]] = {}
    for graph, runner in runners.items():
        runner.activate()
        outputs = runner.infer(feeds)
        for _ in range(2):  # warmup: allocations and kernel selection
            runner.infer(feeds)
        # verify's parity rule: a cell selected differently only at a tie of the error map is
        # an explained "warn" (which tied cells top-k keeps is implementation-defined).
        case = compare_case(graph, list(feeds["src"].shape), reference, outputs, config, "float32", VerifyConfig())
        parity[graph] = {
            "verdict": case.verdict,
            "pha_max_abs": float(np.abs(outputs["pha"] - reference["pha"]).max()),
            "fgr_max_abs": float(np.abs(outputs["fgr"] - reference["fgr"]).max()),
            "same_ref_sm": bool(np.array_equal(outputs["ref_sm"], reference["ref_sm"])),
            "refined_fraction": float(outputs["ref_sm"].mean()),
        }
    times: dict[str, list[float]] = {g: [] for g in runners}
    print(f"[{name}] timing {len(runners)} graphs, {rounds} interleaved rounds…", file=sys.stderr)
    for _ in range(rounds):
        for graph, runner in runners.items():
            time.sleep(pause)  # the previous session's spinning workers park first (INTERLEAVE_PAUSE_S)
            start = time.perf_counter()
            runner.infer(feeds)
            times[graph].append((time.perf_counter() - start) * 1e3)
    for runner in runners.values():
        runner.deactivate()

    original = statistics.median(times["original"])
    previous = statistics.median(times["previous"])
    rows = []
    for graph, values in times.items():
        median = statistics.median(values)
        rows.append({
            "graph": graph,
            "median_ms": round(median, 2),
            "min_ms": round(min(values), 2),
            "cv": round(statistics.stdev(values) / statistics.mean(values), 3),
            "vs_original": round(median / original, 3),
            "vs_previous": round(median / previous, 3),
            "vs_floor": round(median / floor_ms, 3),
            **parity[graph],
        })
    return {
        "case": name, "backbone": backbone, "resolution": f"{size[0]}x{size[1]}",
        "backbone_scale": config.backbone_scale, "sample_pixels": config.refine_sample_pixels,
        "gflops": round(flops / 1e9, 3), "floor_ms": round(floor_ms, 2), "rounds": rounds, "pause_s": pause,
        "inputs": "uniform noise (seed 0)" if name.endswith("-scattered") else f"bundled pair {FIXED_PAIR}",
        "cells_in_blocks": round(cells_in_blocks(reference["ref_sm"]), 3), "graphs": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = []
    for case in result["cases"]:
        lines.append(f"**{case['backbone']} {case['resolution']}** ({case['backbone_scale']:g} / {case['sample_pixels']:,} px "
                     f"fixed; {case['inputs']}; {100 * case['cells_in_blocks']:.0f}% of the selected cells in 2x2 blocks; "
                     f"{case['gflops']:.1f} GFLOP/frame, floor {case['floor_ms']:.1f} ms at {result['peak_gflops']:.0f} GFLOP/s)")
        lines.append("")
        lines.append("| graph | median ms | min ms | CV | vs original | vs previous | vs floor | parity | pha max abs | same ref_sm |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---|---:|---|")
        for row in case["graphs"]:
            lines.append(f"| {row['graph']} | {row['median_ms']:.1f} | {row['min_ms']:.1f} | {row['cv']:.3f} | "
                         f"{row['vs_original']:.3f} | {row['vs_previous']:.3f} | {row['vs_floor']:.2f} | {row['verdict']} | "
                         f"{row['pha_max_abs']:.1e} | {'yes' if row['same_ref_sm'] else 'NO'} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated: {', '.join(CASES)}")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timed rounds per case")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads [torch's setting, as bench]")
    parser.add_argument("--size", default=None, help="WxH instead of each case's resolution (smoke runs)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cpu_speed.json")
    parser.add_argument("--pause", type=float, default=INTERLEAVE_PAUSE_S,
                        help="idle seconds before each timed call (bgm_deploy.bench.harness.INTERLEAVE_PAUSE_S); 0: none")
    args = parser.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown or args.rounds < 2:
        parser.error(f"unknown case(s) {', '.join(unknown)}; valid: {', '.join(CASES)}" if unknown else "--rounds must be >= 2")
    size = parse_resolution(args.size) if args.size else None
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    started = time.time()
    peak = measure_peak_gemm("cpu")
    print(f"fp32 GEMM peak: {peak.gflops:.1f} GFLOP/s", file=sys.stderr)
    import onnxruntime

    result: dict[str, Any] = {
        "schema_version": 1,
        "date": time.strftime("%Y-%m-%d", time.gmtime(started)),
        "machine": {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "threads": threads, "python": platform.python_version(),
                    "torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "peak_gflops": round(peak.gflops, 1),
        "cases": [],
    }
    with tempfile.TemporaryDirectory(prefix="bgm-cpu-speed-") as tmp:
        for case in cases:
            result["cases"].append(run_case(case, args.rounds, threads, Path(tmp), peak.gflops, case == "hd-mobilenetv2", size,
                                            args.pause))
    result["peak_gflops_end"] = round(measure_peak_gemm("cpu").gflops, 1)
    result["minutes"] = round((time.time() - started) / 60, 1)
    write_atomic(args.out, (json.dumps(result, indent=2) + "\n").encode())
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
