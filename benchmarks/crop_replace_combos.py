"""Times the four ONNX patch crop/replace combinations in onnxruntime (CPU).

Exports MattingRefine with each of ``roi_align``/``gather`` × ``scatter_element``/``scatter_nd``
(per exporter), then times one image pair at ``--resolution`` in onnxruntime's CPU provider,
in sampling mode with ``prevent_oversampling`` off so that every frame refines the full
``--sample-pixels`` budget (as in the original project's speed test). Prints a markdown table.

Usage::

    python -m benchmarks.crop_replace_combos --resolution 1920x1080 --exporters legacy,dynamo
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import onnx
import torch

from bgm_deploy.environment import environment_info
from exporters.config import DEFAULT_OPSET, OnnxConfig
from exporters.onnx import onnx_from_torch
from model.checkpoint import build_model
from model.config import ModelConfig

COMBOS = (
    ("roi_align", "scatter_element"),
    ("roi_align", "scatter_nd"),
    ("gather", "scatter_element"),
    ("gather", "scatter_nd"),
)


def make_session(path: Path, threads: int | None) -> object:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_round_robin(
    sessions: list[object], width: int, height: int, warmup: int, iterations: int
) -> list[list[float]]:
    """Milliseconds per call of each session at ``width`` x ``height``, batch 1.

    The sessions take turns (one call each per round) so that load from other processes
    on a shared machine spreads over all rows instead of penalising whichever ran then.
    """
    generator = torch.Generator().manual_seed(0)
    feeds = {name: torch.rand(1, 3, height, width, generator=generator).numpy() for name in ("src", "bgr")}
    for session in sessions:
        for _ in range(warmup):
            session.run(None, feeds)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(iterations):
        for index, session in enumerate(sessions):
            start = time.perf_counter()
            session.run(None, feeds)
            times[index].append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", default="1920x1080", help="WxH to time at [1920x1080]")
    parser.add_argument("--backbone", default="mobilenetv2")
    parser.add_argument("--backbone-scale", type=float, default=0.25)
    parser.add_argument("--sample-pixels", type=int, default=80_000)
    parser.add_argument("--exporters", default="legacy,dynamo", help="comma-separated: legacy, dynamo")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads [its default]")
    args = parser.parse_args()
    width, height = (int(v) for v in args.resolution.lower().split("x"))

    exports: list[tuple[str, str, str, float, int, Path]] = []
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for exporter in args.exporters.split(","):
            for crop, replace in COMBOS:
                config = ModelConfig(
                    backbone=args.backbone,
                    backbone_scale=args.backbone_scale,
                    refine_mode="sampling",
                    refine_sample_pixels=args.sample_pixels,
                    refine_prevent_oversampling=False,
                    refine_patch_crop_method=crop,
                    refine_patch_replace_method=replace,
                )
                model = build_model(config)
                path = Path(workdir) / f"{exporter}_{crop}_{replace}.onnx"
                result = onnx_from_torch(
                    model, config, OnnxConfig(exporter=exporter, opset=DEFAULT_OPSET[exporter]), path
                )
                nodes = len(onnx.load(str(path)).graph.node)
                exports.append((exporter, crop, replace, result.seconds["export"], nodes, path))
                print(f"exported {exporter} {crop} {replace} in {result.seconds['export']:.1f} s", flush=True)
        sessions = [make_session(path, args.threads) for *_, path in exports]
        timings = time_round_robin(sessions, width, height, args.warmup, args.iterations)
        for (exporter, crop, replace, export_s, nodes, _), times in zip(exports, timings):
            rows.append((exporter, crop, replace, export_s, nodes, statistics.median(times), min(times)))

    env = environment_info()
    print()
    print(
        f"{args.backbone}, scale {args.backbone_scale}, sampling {args.sample_pixels} px (prevent_oversampling off), "
        f"{width}x{height}, batch 1, onnxruntime {env['onnxruntime']} CPUExecutionProvider, torch {env['torch']}, "
        f"{env['cpu']} ({env['cpu_count']} cores), {args.iterations} timed runs per row, round-robin, after {args.warmup} warmup"
    )
    print()
    print("| exporter | crop | replace | export (s) | nodes | median (ms) | min (ms) |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for exporter, crop, replace, export_s, nodes, median, best in rows:
        print(f"| {exporter} | {crop} | {replace} | {export_s:.1f} | {nodes} | {median:.1f} | {best:.1f} |")


if __name__ == "__main__":
    main()
