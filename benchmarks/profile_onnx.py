"""Where the time goes in the exported ONNX graph: onnxruntime's per-node profile, by op type.

Exports the default model (fixed sampling: exactly ``sample_pixels`` refined) with the
real exporter, or takes an existing ``.onnx``, runs it with onnxruntime profiling on the
CPU provider and prints total kernel time per op type per run (and the top nodes).

    python -m benchmarks.profile_onnx --resolution hd --runs 3
    python -m benchmarks.profile_onnx --onnx model.onnx --resolution 1280x720 --json profile.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

import runtimes
from bgm_deploy.bench import BenchConfig, _inputs, _model_config, parse_resolution
from bgm_deploy.bench.backends import ArtifactCache
from bgm_deploy.bench.report import write_atomic
from model.errors import BgmDeployError


@dataclass(frozen=True)
class OpTime:
    """Kernel time of one op type (or node), per run."""

    name: str
    ms_per_run: float
    share: float
    calls_per_run: float


def aggregate(events: list[dict[str, Any]], runs: int, by: str = "op") -> list[OpTime]:
    """Sums onnxruntime profile kernel events by op type (``by="op"``) or node name.

    Args:
        events: the trace (list of Chrome-trace events) onnxruntime wrote.
        runs: how many profiled runs the trace covers (to report per-run times).
    """
    totals: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        key = event.get("args", {}).get("op_name", "?") if by == "op" else event["name"][: -len("_kernel_time")]
        totals[key] += float(event.get("dur", 0)) / 1e3
        counts[key] += 1
    grand = sum(totals.values()) or 1.0
    rows = [OpTime(k, v / runs, v / grand, counts[k] / runs) for k, v in totals.items()]
    return sorted(rows, key=lambda r: r.ms_per_run, reverse=True)


def profile(onnx_path: Path, feeds: dict[str, np.ndarray], runs: int, threads: int | None, workdir: Path) -> list[dict[str, Any]]:
    """Runs ``onnx_path`` once untimed, then ``runs`` times profiled; returns the trace events."""

    options = {"enable_profiling": True, "profile_file_prefix": str(workdir / "ort_profile")}
    runner = runtimes.create_runner("onnxruntime", path=onnx_path, provider="cpu", threads=threads, session_options=options)
    with runner:
        for _ in range(runs + 1):
            runner.infer(feeds)
        trace = Path(runner.session.end_profiling())
    events = json.loads(trace.read_text())
    # The first run allocates and tunes: drop its node events (they precede the second
    # run's first node, so split on the per-run "model_run" events).
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    if len(starts) > 1:
        events = [e for e in events if e.get("ts", 0) >= starts[1]]
    return events


def _table(rows: list[OpTime], limit: int) -> str:
    lines = [f"{'op':<28} {'ms/run':>9} {'share':>7} {'calls/run':>10}"]
    lines += [f"{r.name[:28]:<28} {r.ms_per_run:9.1f} {100 * r.share:6.1f}% {r.calls_per_run:10.0f}" for r in rows[:limit]]
    lines.append(f"{'total':<28} {sum(r.ms_per_run for r in rows):9.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", type=Path, help="profile this file instead of exporting the default model")
    parser.add_argument("--backbone", default="mobilenetv2")
    parser.add_argument("--resolution", default="hd", help="hd, 4k or WxH")
    parser.add_argument("--exporter", choices=("legacy", "dynamo"), default=None, help="default: the exporter's")
    parser.add_argument("--runs", type=int, default=3, help="profiled runs (after one untimed run)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: onnxruntime's)")
    parser.add_argument("--top-nodes", type=int, default=12, help="also list the slowest individual nodes")
    parser.add_argument("--json", type=Path, help="write the per-op table as JSON")
    args = parser.parse_args(argv)
    try:
        size = parse_resolution(args.resolution)
        with tempfile.TemporaryDirectory(prefix="bgm-profile-") as tmp:
            workdir = Path(tmp)
            path = args.onnx
            if path is None:
                config = _model_config(BenchConfig(backbones=(args.backbone,), resolutions=(size,)), args.backbone, size)
                artifacts = ArtifactCache(workdir, lambda message: print(message, file=sys.stderr), onnx_exporter=args.exporter)
                path = artifacts.path(config, "onnx", size)
            feeds = _inputs("fixed", size, 1)[0].feeds()  # the bundled pair bench's fixed mode times
            print(f"profiling {path.name} at {size[0]}x{size[1]}, {args.runs} runs…", file=sys.stderr)
            events = profile(path, feeds, args.runs, args.threads, workdir)
    except BgmDeployError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    by_op = aggregate(events, args.runs, "op")
    print(_table(by_op, 40))
    if args.top_nodes:
        print()
        print(_table(aggregate(events, args.runs, "node"), args.top_nodes))
    if args.json:

        data = {"schema_version": 1, "resolution": f"{size[0]}x{size[1]}", "runs": args.runs, "ops": [asdict(r) for r in by_op]}
        write_atomic(args.json, (json.dumps(data, indent=2) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
