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

from bgm_deploy.checkpoint import build_model
from bgm_deploy.config import ModelConfig
from bgm_deploy.environment import environment_info
from exporters.config import DEFAULT_OPSET, OnnxConfig
from exporters.onnx import onnx_from_torch

COMBOS = (
    ("roi_align", "scatter_element"),
    ("roi_align", "scatter_nd"),
    ("gather", "scatter_element"),
    ("gather", "scatter_nd"),
)


def time_session(path: Path, width: int, height: int, warmup: int, iterations: int, threads: int | None) -> list[float]:
    """Milliseconds per call of the ONNX model at ``width`` x ``height``, batch 1."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    feeds = {name: torch.rand(1, 3, height, width, generator=generator).numpy() for name in ("src", "bgr")}
    for _ in range(warmup):
        session.run(None, feeds)
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - start) * 1e3)
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
                times = time_session(path, width, height, args.warmup, args.iterations, args.threads)
                rows.append(
                    (exporter, crop, replace, result.seconds["export"], nodes, statistics.median(times), min(times))
                )
                print(f"done {exporter} {crop} {replace}: median {statistics.median(times):.1f} ms", flush=True)

    env = environment_info()
    print()
    print(
        f"{args.backbone}, scale {args.backbone_scale}, sampling {args.sample_pixels} px (prevent_oversampling off), "
        f"{width}x{height}, batch 1, onnxruntime {env['onnxruntime']} CPUExecutionProvider, torch {env['torch']}, "
        f"{env['cpu']} ({env['cpu_count']} cores), {args.iterations} timed runs after {args.warmup} warmup"
    )
    print()
    print("| exporter | crop | replace | export (s) | nodes | median (ms) | min (ms) |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for exporter, crop, replace, export_s, nodes, median, best in rows:
        print(f"| {exporter} | {crop} | {replace} | {export_s:.1f} | {nodes} | {median:.1f} | {best:.1f} |")


if __name__ == "__main__":
    main()
