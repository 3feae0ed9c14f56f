"""Ray benchmark: ``matte --ray`` against plain ``matte`` on the same photos and the same clip.

One run, one machine, one model (mobilenetv2 HD export, synthetic weights, onnxruntime on the
CPU). Per input (a folder of photos; one clip split at keyframes) it times, back to back:

* ``plain``: the one-machine job (``matte(...)``, the runtime's default threads: every core);
* ``ray, 1 worker``: the same job on a local Ray instance, one actor with every core
  (``cpus_per_worker`` = cores, so the same intra-op threads as plain): the engine's overhead;
* ``ray, 2 workers``: two actors of one core each;

each setup twice, in the order A B C C B A (the machine's load drifts; the mirror cancels a
linear drift), compared by their mean times.

The Ray instance is started once before the runs (its start time is reported on its own: a
cluster outlives jobs); each Ray job's time includes starting its actors and loading the model
in each. The report (from the jobs' own ``cluster`` sections) splits the Ray time into worker
start, segment split, task run and join, with per-worker throughput, and the load average
before and after (the machine is shared).

Run: ``python -m benchmarks.ray_bench`` (~15-20 minutes on 2 cores); writes
``benchmarks/results/ray.json`` and prints a markdown summary.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from statistics import fmean
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.make_video_clips import ClipSpec, make_clip
from bgm_deploy.environment import environment_info
from bgm_deploy.export import export
from bgm_deploy.matte import ClusterOptions, MatteOptions, matte
from bgm_deploy.matte.cluster import connect
from bgm_deploy.model_spec import ModelSpec
from exporters.atomic import atomic_write_text
from exporters.config import OnnxConfig
from model.config import ModelConfig

SCHEMA_VERSION = 1
PAIR = Path(__file__).resolve().parents[1] / "bgm_deploy" / "data" / "pairs" / "astronaut_rocket_1920x1080_shifted"
MODEL = ModelConfig(backbone="mobilenetv2", backbone_scale=0.25, refine_mode="sampling", refine_sample_pixels=80_000,
                    refine_patch_crop_method="roi_align", refine_patch_replace_method="scatter_element", seed=0)
PHOTO_OPTIONS = MatteOptions(outputs=("pha", "fgr"))
VIDEO_OPTIONS = MatteOptions(outputs=("pha", "fgr"))  # H.264 ultrafast, the default


def _photos(folder: Path, count: int) -> tuple[Path, Path]:
    """``count`` distinct HD photos (the bundled pair's subject shifted) and their plate."""
    folder.mkdir(parents=True)
    source = np.asarray(Image.open(PAIR / "src.jpg").convert("RGB"))
    for index in range(count):
        Image.fromarray(np.roll(source, 8 * index, axis=1)).save(folder / f"{index:04d}.jpg", quality=95)
    plate = folder.parent / "photo_plate.jpg"
    shutil.copy(PAIR / "bgr.jpg", plate)
    return folder, plate


def _run(label: str, src: Path, bgr: Path, out: Path, spec: ModelSpec, options: MatteOptions,
         cluster: ClusterOptions | None) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    report = matte(src, bgr, out, spec, options, cluster=cluster)
    wall = time.perf_counter() - started
    units = report.count("ok") if report.kind == "photos" else report.counts.get("matted", 0)
    row = {"label": label, "wall_s": wall, "units": units, "units_per_s": units / wall, "cluster": report.cluster,
           "load_1min_after": os.getloadavg()[0]}
    print(f"  {label}: {wall:.1f} s, {units / wall:.2f} units/s", flush=True)
    return row


def _compare(name: str, src: Path, bgr: Path, work: Path, spec: ModelSpec, options: MatteOptions,
             cores: int, segment_seconds: float) -> dict[str, Any]:
    """Each setup twice, in the order A B C C B A: the load of a shared machine drifts, and a
    mirrored order cancels a linear drift; the ratio is of the means."""
    print(name, flush=True)
    setups = {
        "plain": None,
        "ray, 1 worker": ClusterOptions("local", workers=1, cpus_per_worker=cores, segment_seconds=segment_seconds),
        "ray, 2 workers": ClusterOptions("local", workers=2, cpus_per_worker=1, segment_seconds=segment_seconds),
    }
    order = [*setups, *reversed(setups)]
    runs = [_run(label, src, bgr, work / f"{name}-{number}", spec, options, setups[label])
            for number, label in enumerate(order)]
    summary: dict[str, Any] = {}
    for label in setups:
        mine = [row for row in runs if row["label"] == label]
        summary[label] = {"wall_s": sum(row["wall_s"] for row in mine) / len(mine),
                          "units_per_s": sum(row["units_per_s"] for row in mine) / len(mine),
                          "walls_s": [row["wall_s"] for row in mine]}
    plain = summary["plain"]["wall_s"]
    for label in setups:
        summary[label]["time_vs_plain"] = summary[label]["wall_s"] / plain
        if label == "plain":
            continue
        clusters = [row["cluster"] for row in runs if row["label"] == label]
        busiest = [max(w["busy_seconds"] for w in c["per_worker"].values()) for c in clusters]
        # What the runs spent outside the workers' tasks: placing/starting actors (process,
        # imports, model load), planning, the scheduling round trips and result transfer, the join.
        summary[label]["overhead_s"] = {
            "start_workers": fmean([c["seconds"].get("start_workers", 0.0) for c in clusters]),
            "split": fmean([c["seconds"].get("split", 0.0) for c in clusters]),
            "join": fmean([c["seconds"].get("join", 0.0) for c in clusters]),
            "scheduling_and_transfer": fmean([max(0.0, c["seconds"].get("run", 0.0) - b)
                                             for c, b in zip(clusters, busiest)]),
            "total_vs_plain": summary[label]["wall_s"] - plain,
        }
        summary[label]["per_worker_units_per_s"] = [
            [round(w["units_per_second"], 3) for w in c["per_worker"].values()] for c in clusters]
        summary[label]["tasks"] = [c["tasks"] for c in clusters]
    return {"order": order, "runs": runs, "summary": summary}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=96, help="HD photos")
    parser.add_argument("--frames", type=int, default=240, help="frames of the 1280x720 clip")
    parser.add_argument("--gop", type=int, default=30, help="keyframe interval of the clip")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "ray.json"))
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 2
    load = os.getloadavg()
    results: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "environment": environment_info(), "model": MODEL.to_dict(),
        "load_before": {"1min": load[0], "5min": load[1], "15min": load[2]}, "cores": cores,
        "inputs": {"photos": f"{args.photos} x 1920x1080 JPEG, one plate",
                   "video": f"{args.frames} frames 1280x720 H.264, keyframe every {args.gop}, AAC audio"},
    }
    with tempfile.TemporaryDirectory(prefix="bgm-ray-bench-") as folder:
        root = Path(folder)
        model = root / "mobilenetv2_hd.onnx"
        export(MODEL, model, "onnx", onnx=OnnxConfig(outputs=("pha", "fgr")))
        spec = ModelSpec(model=str(model))
        photos, photo_plate = _photos(root / "photos", args.photos)
        clip, _, plate = make_clip(root / "clip.mp4", spec=ClipSpec(size=(1280, 720), frames=args.frames, audio=True,
                                                                     gop=args.gop))
        Image.fromarray(plate).save(root / "plate.png")
        started = time.perf_counter()
        with connect(ClusterOptions("local"), print):
            results["ray_start_s"] = time.perf_counter() - started
            results["photos"] = _compare("photos", photos, photo_plate, root, spec, PHOTO_OPTIONS, cores, 10.0)
            results["video"] = _compare("video", clip, root / "plate.png", root, spec, VIDEO_OPTIONS, cores,
                                        args.frames / 30 / 4)
    load = os.getloadavg()
    results["load_after"] = {"1min": load[0], "5min": load[1], "15min": load[2]}
    atomic_write_text(args.json, json.dumps(results, indent=2, default=str))
    print(render_markdown(results))
    return results


def render_markdown(results: dict[str, Any]) -> str:
    lines = [(f"Load average (1 min) before/after: {results['load_before']['1min']:.2f} / "
              f"{results['load_after']['1min']:.2f} on {results['cores']} cores; Ray instance start "
              f"{results['ray_start_s']:.1f} s (once, not in the times below). Each setup ran twice (A B C C B A)."),
             "",
             ("| input | setup | wall s (mean; runs) | × plain time | worker start s | split s | join s | "
              "scheduling+transfer s | per-worker units/s |"),
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for name in ("photos", "video"):
        for label, row in results[name]["summary"].items():
            over = row.get("overhead_s", {})
            walls = ", ".join(f"{wall:.1f}" for wall in row["walls_s"])
            workers = "; ".join(", ".join(f"{value:.2f}" for value in run) for run in row.get("per_worker_units_per_s", []))
            lines.append(f"| {name} | {label} | {row['wall_s']:.1f} ({walls}) | {row['time_vs_plain']:.2f} | "
                         f"{over.get('start_workers', 0):.1f} | {over.get('split', 0):.2f} | {over.get('join', 0):.2f} | "
                         f"{over.get('scheduling_and_transfer', 0):.2f} | {workers or '-'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
