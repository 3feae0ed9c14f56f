"""Latency, parity and file size of every runnable deployment target against the default ONNX
export on onnxruntime's CPU provider, in one interleaved run: ``benchmarks/results/targets_speed.json``.

    python -m benchmarks.targets_speed                                  # ~15 min on 2 cores
    python -m benchmarks.targets_speed --resolutions 320x256 --rounds 3 --out /tmp/t.json   # smoke
    python -m benchmarks.targets_speed --resolutions 1920x1080 --sample-pixels 16,80000 \
        --formats onnx,onnx:coarse,executorch:rewrites,executorch:coarse,litert:rewrites,litert:coarse \
        --out benchmarks/results/targets_speed_coarse.json       # where the gap is (docs/targets.md)

For each resolution the same seeded model (mobilenetv2, synthetic weights, backbone 0.25,
a fixed sampling budget with prevent-oversampling off so every frame refines exactly
``sample_pixels // 16`` cells, as the original project's speed test does) is exported with
``bgm_deploy.export.export`` to each format: ``onnx`` (the default export, with its speed
rewrites), ``executorch`` (.pte, XNNPACK), ``litert`` (.tflite, XNNPACK) and ``aoti`` (.pt2, its
default dynamic shapes; one file per sample budget, serving any size). Core ML is not runnable on Linux.
Rows name the options explicitly: a bare row is the static-K refiner without the ported speed
rewrites, ``:rewrites`` with them (what ``export`` writes by default for ExecuTorch and LiteRT,
decided from this benchmark), ``aoti:fixed`` a fixed-size AOTInductor file, ``onnx:static`` an ONNX
file of the static-K refiner, ``format:coarse`` a file of the coarse outputs only (the backbone and
decoder alone, to split a target's time from its refiner's).
Every runner is created through the target registry with the same thread count, fed the same
bundled photo pair resized to the resolution, and timed interleaved (one call of each per
round, so machine drift hits all alike, each call after an idle ``--pause`` so that the
previous runtime's spinning threads do not take its cores); the reported latency is the median over rounds, the
ratio is against ``onnxruntime-cpu`` of the same rounds (a ``:coarse`` row against ``onnx:coarse``
when that row runs too). Parity: each target's outputs against
eager PyTorch on the timed inputs by verify's rule (``compare_case``). The JSON records the
machine, its load before and after, and what else ran (``--note``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bgm_deploy.bench.harness import INTERLEAVE_PAUSE_S
from bgm_deploy.environment import cpu_model, environment_info
from bgm_deploy.export import export
from bgm_deploy.images import BUNDLED_PAIRS_DIR
from bgm_deploy.verify import VerifyConfig, compare_case
from exporters.config import OnnxConfig
from exporters.onnx import onnx_from_torch
from exporters.recipes import RecipeConfig
from exporters.static_rewrites import target_patches
from exporters.torch_program import package_version
from model.checkpoint import build_model
from model.config import ModelConfig
from runtimes import create_runner
from runtimes.targets import LoadRequest, get_target

BASELINE = "onnxruntime-cpu"
# format -> the target that runs it here
TARGETS = {"onnx": BASELINE, "executorch": "executorch-cpu", "litert": "litert-cpu", "aoti": "aoti-cpu"}
SUFFIXES = {"onnx": ".onnx", "executorch": ".pte", "litert": ".tflite", "aoti": ".pt2"}
# The ``:coarse`` rows keep only these outputs: the backbone and decoder, the refiner pruned.
COARSE = ("pha_sm", "fgr_sm", "err_sm")
# Fixed budget per resolution (the original's presets at HD; 4,000 px at the small size).
SAMPLE_PIXELS = {(320, 256): 4_000, (1920, 1080): 80_000}
PAIR = "astronaut_rocket_1920x1080_shifted"


def parse_size(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


def load_pair(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """The bundled HD pair resized to ``width`` x ``height``: (1, 3, H, W) float32 in 0..1."""
    from PIL import Image

    def load(name: str) -> np.ndarray:
        image = Image.open(BUNDLED_PAIRS_DIR / PAIR / f"{name}.jpg").convert("RGB").resize((width, height), Image.BILINEAR)
        return np.ascontiguousarray(np.asarray(image, dtype=np.float32).transpose(2, 0, 1)[None] / 255)

    return load("src"), load("bgr")


def model_config(width: int, height: int, sample_pixels: int | None = None) -> ModelConfig:
    pixels = sample_pixels or SAMPLE_PIXELS.get((width, height), 80_000)
    return ModelConfig(backbone="mobilenetv2", backbone_scale=0.25, refine_mode="sampling", refine_sample_pixels=pixels,
                       refine_prevent_oversampling=False, seed=0)


def export_all(config: ModelConfig, size: tuple[int, int], folder: Path, rows: list[str],
               shared: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Each row's file (made once; an AOTInductor file is dynamic and shared by all sizes).
    A row is a format, ``format:rewrites`` for its export with the ported speed rewrites,
    ``aoti:fixed`` for an AOTInductor file of the benchmark's size (its default is dynamic),
    ``onnx:static`` for an ONNX file of the static-K refiner (:func:`static_onnx`), or
    ``format:coarse`` for a file with only the coarse outputs (:data:`COARSE`): the backbone and
    decoder alone, at the same input size, the refiner pruned."""
    files = {}
    for row in rows:
        fmt, _, variant = row.partition(":")
        dynamic = fmt == "aoti" and variant != "fixed"
        tag = "any" if dynamic else f"{size[0]}x{size[1]}"
        path = folder / f"bgm-{config.refine_sample_pixels}-{tag}{'-' + variant if variant else ''}{SUFFIXES[fmt]}"
        key = f"{row}@{config.refine_sample_pixels}"  # one dynamic file per model (its budget is baked in)
        if dynamic and key in shared:
            path = shared[key]
        start = time.perf_counter()
        if not path.exists() and row == "onnx:static":
            static_onnx(config, size, path)
        elif not path.exists():
            outputs = COARSE if variant == "coarse" else None
            options = {"rewrites": variant == "rewrites", "dynamic": dynamic}
            recipe = RecipeConfig(resolution=size, options=options, outputs=outputs) if fmt != "onnx" else None
            export(config, path, fmt, onnx=OnnxConfig(outputs=outputs) if fmt == "onnx" else None,
                   resolution=None if dynamic else size, recipe_config=recipe, overwrite=True,
                   progress=lambda line, row=row: print(f"  [{row}] {line}", flush=True))
        if dynamic:
            shared[key] = path
        files[row] = {"path": str(path), "size_bytes": _size(path), "export_seconds": time.perf_counter() - start}
    return files


def static_onnx(config: ModelConfig, size: tuple[int, int], path: Path) -> None:
    """The ``onnx:static`` row: an ONNX file of the static-K refiner with the ported rewrites
    (gather crop), to decide whether it should become the ONNX default (it removes NonZero)."""
    resolved = config.resolved(size, ("gather", "scatter_element"))
    model = build_model(resolved).eval()
    onnx_from_torch(model, resolved, OnnxConfig(trace_resolution=size), path,
                    patches=target_patches(model, None, rewrites=True))


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def bench_size(size: tuple[int, int], folder: Path, formats: list[str], rounds: int, threads: int,
               shared: dict[str, Path], sample_pixels: int | None = None, pause: float = INTERLEAVE_PAUSE_S) -> dict[str, Any]:
    width, height = size
    config = model_config(width, height, sample_pixels)
    files = export_all(config, size, folder, formats, shared)
    src, bgr = load_pair(width, height)
    feeds = {"src": src, "bgr": bgr}
    runners = {}
    for row in formats:
        fmt = row.partition(":")[0]
        target = get_target(TARGETS[fmt])
        request = LoadRequest(fmt, path=Path(files[row]["path"]), model_config=config, threads=threads)
        runners[row] = create_runner(target.runner, **target.build(request))
    reference = create_runner("pytorch", model_config=config.resolved(size, ("roi_align", "scatter_element")))
    times: dict[str, list[float]] = {fmt: [] for fmt in formats}
    parity: dict[str, Any] = {}
    for runner in runners.values():
        runner.activate()
    try:
        with reference:
            expected = reference.infer(feeds)
        for fmt, runner in runners.items():  # warm-up call, also the parity check
            got = runner.infer(feeds)
            case = compare_case(fmt, list(src.shape), expected, got, config, "float32", VerifyConfig())
            parity[fmt] = {"verdict": case.verdict, "max_abs": {o.name: o.max_abs for o in case.outputs}}
        for _ in range(rounds):
            for fmt, runner in runners.items():
                time.sleep(pause)  # the previous row's spinning worker threads park (INTERLEAVE_PAUSE_S)
                start = time.perf_counter()
                runner.infer(feeds)
                times[fmt].append(time.perf_counter() - start)
        providers = {fmt: runner.provider for fmt, runner in runners.items()}
    finally:
        for runner in runners.values():
            runner.deactivate()
    rows = []
    for fmt in formats:
        median = statistics.median(times[fmt])
        # A coarse row is compared with the coarse ONNX file when there is one (the same pruned graph).
        base_row = "onnx:coarse" if fmt.endswith(":coarse") and "onnx:coarse" in times else "onnx"
        baseline = statistics.median(times[base_row]) if base_row in times else None
        rows.append({
            "format": fmt,
            "target": TARGETS[fmt.partition(":")[0]],
            "rewrites": fmt.endswith(":rewrites"),
            "variant": fmt.partition(":")[2] or "default",
            "provider": providers[fmt],
            "median_ms": round(median * 1000, 1),
            "min_ms": round(min(times[fmt]) * 1000, 1),
            "ratio_vs_onnxruntime": round(median / baseline, 3) if baseline else None,
            "ratio_against": base_row if baseline else None,
            "size_mb": round(files[fmt]["size_bytes"] / 1e6, 2),
            "parity_vs_pytorch": parity[fmt],
            "export_seconds": round(files[fmt]["export_seconds"], 1),
        })
        print(f"{width}x{height} {fmt:10s} {rows[-1]['median_ms']:8.1f} ms  x{rows[-1]['ratio_vs_onnxruntime']}  "
              f"{rows[-1]['size_mb']} MB  {parity[fmt]['verdict']} {max(parity[fmt]['max_abs'].values()):.2g}", flush=True)
    return {"resolution": [width, height], "sample_pixels": config.refine_sample_pixels, "rows": rows,
            "cells_refined": config.refine_sample_pixels // 16}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", default="320x256,1920x1080")
    parser.add_argument("--formats", default=",".join(TARGETS))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", default="/tmp/bgm-targets-speed", help="exported files (reused when present)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "targets_speed.json"))
    parser.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    parser.add_argument("--sample-pixels", default=None,
                        help="refine budgets for every size, comma-separated [4,000 at 320x256, 80,000 otherwise]; "
                             "16 refines one cell, leaving the backbone and decoder")
    parser.add_argument("--pause", type=float, default=INTERLEAVE_PAUSE_S,
                        help=f"idle seconds before each timed call [{INTERLEAVE_PAUSE_S}] "
                             "(bgm_deploy.bench.harness.INTERLEAVE_PAUSE_S); 0: none")
    args = parser.parse_args(argv)
    folder = Path(args.workdir)
    folder.mkdir(parents=True, exist_ok=True)
    formats = [f for f in args.formats.split(",") if f]
    load_before = os.getloadavg()
    shared: dict[str, Path] = {}
    budgets = [int(p) for p in args.sample_pixels.split(",")] if args.sample_pixels else [None]
    sizes = [bench_size(parse_size(s), folder, formats, args.rounds, args.threads, shared, pixels, args.pause)
             for s in args.resolutions.split(",") for pixels in budgets]
    environment = environment_info()
    report = {
        "schema_version": 1,
        "benchmark": "targets_speed",
        "command": "python -m benchmarks.targets_speed " + " ".join(argv if argv is not None else sys.argv[1:]),
        "baseline": BASELINE,
        "threads": args.threads,
        "rounds": args.rounds,
        "pause_s": args.pause,
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
                    "load_average_before": [round(v, 2) for v in load_before],
                    "load_average_after": [round(v, 2) for v in os.getloadavg()], "note": args.note},
        "versions": {"torch": environment["torch"], "onnxruntime": environment["onnxruntime"],
                     **{name: package_version(name) for name in ("executorch", "ai-edge-litert", "litert-torch")}},
        "sizes": sizes,
    }
    Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
