"""Produces the published numbers: benchmarks/results/published.{json,png} and the results
section of benchmarks/README.md (between its ``results:start``/``results:end`` markers).

    python -m benchmarks.run_published            # ~6-8 minutes on a 2-core CPU
    python -m benchmarks.run_published --quick    # smoke test: tiny resolution, 1 iteration

Run it on a quiet machine (nothing else running): the report warns about rows whose
coefficient of variation exceeds 0.1. GPU backends are measured only when this machine
has a usable GPU; otherwise they are listed as skipped with the reason.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bgm_deploy.bench import BenchConfig, bench
from bgm_deploy.bench.backends import ORIGINAL_BACKEND, unavailable_reason
from bgm_deploy.bench.harness import TimingConfig
from bgm_deploy.bench.report import (
    BenchReport,
    SkippedBackend,
    render_markdown,
    render_table,
    write_atomic,
    write_json,
    write_plot,
)
from model.errors import BgmDeployError

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
RESULTS = HERE / "results"
START, END = "<!-- results:start -->", "<!-- results:end -->"
# The bars for the default ONNX export of mobilenetv2 at HD on onnxruntime CPU: latency at most
# half the original project's ONNX recipe, and at most 1.5x the arithmetic floor (the frame's
# FLOPs at the measured fp32 GEMM peak), both taken within one run.
TARGET_VS_ORIGINAL = 0.5
TARGET_VS_FLOOR = 1.5


@dataclass(frozen=True)
class Suite:
    """One ``bench`` call of the published run."""

    backbone: str
    resolution: tuple[int, int]
    backends: tuple[str, ...]
    timing: TimingConfig


def suites(quick: bool) -> list[Suite]:
    if quick:
        tiny = TimingConfig(warmup=0, iterations=1)
        return [Suite("mobilenetv2", (320, 256), ("eager", "onnx-cpu", ORIGINAL_BACKEND), tiny)]
    hd, uhd = (1920, 1080), (3840, 2160)
    cpu = ("eager", "onnx-cpu", ORIGINAL_BACKEND)
    gpu = ("onnx-cuda", "onnx-tensorrt", "tensorrt")
    return [
        # The headline comparison: more iterations, it carries the ratios.
        Suite("mobilenetv2", hd, ("eager", "torchscript", "onnx-cpu", ORIGINAL_BACKEND) + gpu,
              TimingConfig(warmup=3, iterations=20)),
        Suite("resnet50", hd, cpu + gpu, TimingConfig(warmup=2, iterations=8)),
        Suite("mobilenetv2", uhd, cpu + gpu, TimingConfig(warmup=2, iterations=6)),
        Suite("resnet50", uhd, cpu + gpu, TimingConfig(warmup=1, iterations=4)),
    ]


def run(quick: bool) -> BenchReport:
    """Runs every suite; usable backends only (GPU ones are reported as skipped here)."""
    merged: BenchReport | None = None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for suite in suites(quick):
        usable = tuple(b for b in suite.backends if unavailable_reason(b, "fp32") is None)
        print(f"== {suite.backbone} {suite.resolution[0]}x{suite.resolution[1]}: {', '.join(usable)}", file=sys.stderr)
        config = BenchConfig(backends=usable, backbones=(suite.backbone,), resolutions=(suite.resolution,), timing=suite.timing)
        report = bench(config, progress=lambda message: print(message, file=sys.stderr))
        skipped = [s for s in suite.backends if s not in usable]
        report.skipped.extend(SkippedBackend(b, "fp32", str(unavailable_reason(b, "fp32"))) for b in skipped)
        if merged is None:
            merged = report
            merged.settings = {**report.settings, "suites": []}
        else:
            merged.results.extend(report.results)
            merged.skipped.extend(s for s in report.skipped if s not in merged.skipped)
            merged.warnings.extend(report.warnings)
        merged.settings["suites"].append(
            {"backbone": suite.backbone, "resolution": f"{suite.resolution[0]}x{suite.resolution[1]}",
             "backends": list(usable), "timing": suite.timing.describe()}
        )
    if merged is None:
        raise BgmDeployError("no suite ran")
    merged.settings["timing"] = "per suite (see suites)"
    return merged


def headline(report: BenchReport) -> str:
    """The ratios the targets are about, from this run's mobilenetv2 HD rows."""
    rows = {r.backend: r for r in report.results
            if r.backbone == "mobilenetv2" and (r.width, r.height) == (1920, 1080) and r.scope == "compute"}
    onnx = rows.get("onnx-cpu")
    if onnx is None:
        return "The mobilenetv2 1920x1080 comparison was not part of this run."
    parts = [f"**mobilenetv2 1920x1080 (0.25, 80,000 px fixed), default ONNX export on onnxruntime CPU: median "
             f"{onnx.stats.median_ms:.1f} ms"]
    verdicts = []
    original = rows.get(ORIGINAL_BACKEND)
    if original is not None:
        ratio = onnx.stats.median_ms / original.stats.median_ms
        parts.append(f"{ratio:.3f}x the original project's ONNX recipe ({original.stats.median_ms:.1f} ms)")
        verdicts.append(f"{'meets' if ratio <= TARGET_VS_ORIGINAL else 'does NOT meet'} the ≤ {TARGET_VS_ORIGINAL}x "
                        "original target")
    if onnx.peak_fraction:
        floor_ratio = 1 / onnx.peak_fraction
        parts.append(f"{floor_ratio:.2f}x the FLOP floor ({onnx.stats.median_ms * onnx.peak_fraction:.1f} ms)")
        verdicts.append(f"{'meets' if floor_ratio <= TARGET_VS_FLOOR else 'does NOT meet'} the ≤ {TARGET_VS_FLOOR}x "
                        "floor target")
    if "eager" in rows:
        parts.append(f"{onnx.stats.median_ms / rows['eager'].stats.median_ms:.3f}x eager PyTorch "
                     f"({rows['eager'].stats.median_ms:.1f} ms)")
    text = ", ".join(parts) + "**"
    if verdicts:
        text += "; it " + " and ".join(verdicts) + "."
    compared = [onnx, *(rows[b] for b in (ORIGINAL_BACKEND, "eager") if b in rows)]
    if any(r.stats.is_noisy for r in compared):
        text += " **The run was noisy (CV > 0.1 in these rows): not a valid measurement; rerun on a quiet machine.**"
    return text


def section(report: BenchReport, seconds: float) -> str:
    env = report.environment
    gpu_note = (
        f"GPU: {env['gpu']} (driver/CUDA {env.get('cuda_version')})."
        if env.get("gpu")
        else "**No GPU was available on the machine that produced these numbers**: the onnx-cuda, onnx-tensorrt and "
        "tensorrt rows are absent (listed as skipped below), not estimated."
    )
    return "\n".join([
        START,
        f"Produced by `python -m benchmarks.run_published` on {time.strftime('%Y-%m-%d', time.gmtime())} in {seconds / 60:.1f} min "
        f"(raw data: `results/published.json`, chart: `results/published.png`).",
        "",
        f"Machine: {env.get('cpu')}, {env.get('cpu_count')} logical CPUs, {report.settings.get('threads')} threads; "
        f"{env.get('platform')}; Python {env.get('python')}, torch {env.get('torch')}, onnxruntime {env.get('onnxruntime')}; "
        f"1-minute load average at the start: {env.get('load_average_1min_at_start', 'n/a')}. "
        + gpu_note,
        "",
        headline(report),
        "",
        render_markdown(report).rstrip(),
        END,
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke test; writes to --out, never to README.md")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--readme", type=Path, default=README, help="README whose results section is replaced")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    try:
        report = run(args.quick)
    except BgmDeployError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    seconds = time.perf_counter() - start
    # Other processes' load when the run started: a quiet machine shows ~0.
    report.environment["load_average_1min_at_start"] = load
    print(render_table(report))
    print(headline(report))
    name = "quick" if args.quick else "published"
    write_json(report, args.out / f"{name}.json")
    write_plot(report, args.out / f"{name}.png")
    text = section(report, seconds)
    if args.quick:
        write_atomic(args.out / "quick.md", (text + "\n").encode())
        return 0
    readme = args.readme.read_text()
    if START not in readme or END not in readme:
        print(f"Error: {args.readme} lacks the {START} / {END} markers", file=sys.stderr)
        return 1
    readme = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: text, readme, flags=re.S)
    write_atomic(args.readme, readme.encode())
    print(f"wrote {args.readme} and {args.out}/{name}.json/.png ({seconds / 60:.1f} min)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
