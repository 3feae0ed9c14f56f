"""Video matting throughput: model-only vs the pipelined runner vs a plain sequential loop.

Writes ``benchmarks/results/video.json``; the numbers are copied into benchmarks/README.md
("Video matting"). One run, one clip, one model, so the ratios are taken within one run::

    python -m benchmarks.video_bench                  # ~6-8 minutes on 2 cores
    python -m benchmarks.video_bench --frames 8 --rss-frames 12,4 --size 640x360 --out /tmp/v.json   # smoke

What is measured, on an H.264 clip made from the bundled 1920x1080 pair by
``benchmarks/make_video_clips.py`` (real content moving with camera shake):

- **model-only**: ``Predictor.predict`` on frames already decoded into memory, one at a time
  (mobilenetv2, backbone 0.25, 80,000 refined pixels, exported ONNX, onnxruntime CPU, 2 threads, no
  spinning: as the footage job runs it);
- **pipelined**: ``bgm_deploy.matte`` (the footage job) from the file to pha + fgr H.264 videos
  (the defaults: veryfast, CRF 18), decode → predict → encode on separate threads; and the
  same with ``--preset ultrafast`` (cheaper encoding, larger files);
- **sequential**: the same work in one loop, one frame at a time (decode, predict, encode);
- **encode cost** of each output kind and format, per frame, on the frames' real predictions;
- **peak RSS** of the footage job in fresh subprocesses on a long and a short clip.
"""

from __future__ import annotations

import argparse
import fractions
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.make_video_clips import ClipSpec, make_clip
from bgm_deploy.environment import environment_info
from bgm_deploy.export import export
from bgm_deploy.images import save_image
from bgm_deploy.predictor import Predictor
from bgm_deploy.matte import MatteOptions, matte
from bgm_deploy.matte.options import LAYOUTS
from bgm_deploy.matte.render import render_output
from bgm_deploy.matte.video_io import FORMATS, Frame, SequenceWriter, StreamInfo, VideoWriter, import_av
from exporters.atomic import atomic_write_text
from model.config import ModelConfig

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "video.json"
PAIR = "astronaut_rocket_1920x1080_shifted"
# The CLI's ONNX export settings (cli.py export_command): roi_align crop, scatter_element replace.
MODEL = ModelConfig(backbone="mobilenetv2", backbone_scale=0.25, refine_sample_pixels=80_000,
                    refine_patch_crop_method="roi_align", refine_patch_replace_method="scatter_element", seed=0)
ENCODE_CASES = (("pha", "h264"), ("fgr", "h264"), ("com", "h264"), ("err", "h264"), ("ref", "h264"),
                ("pha", "ffv1"), ("rgba", "png"), ("rgba", "ffv1"), ("rgba", "vp9"), ("rgba", "prores"))
SCHEMA_VERSION = 1

_RSS_CHILD = """
import json, os, resource, sys, threading
import numpy as np
from PIL import Image
from bgm_deploy.predictor import Predictor
from bgm_deploy.matte import MatteOptions, matte
clip, plate, model, out = sys.argv[1:5]
page = os.sysconf("SC_PAGE_SIZE")
def current_mib():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * page / 2**20
with Predictor.load(model, threads=2, shared_cores=True) as predictor:
    width, height = Image.open(plate).size
    frame = np.zeros((1, 3, height, width), np.uint8)
    predictor.predict(frame, frame, ("pha", "fgr"))  # the runtime's buffers allocated before measuring
    before = current_mib()
    peak = [before]
    done = threading.Event()
    def sample():
        while not done.wait(0.005):
            peak[0] = max(peak[0], current_mib())
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    report = matte(clip, plate, out, predictor, MatteOptions(outputs=("pha", "fgr")))
    done.set()
    sampler.join()
print(json.dumps({"frames": report.counts["matted"], "rss_before_run_mib": before, "rss_peak_during_run_mib": peak[0],
                  "run_growth_mib": peak[0] - before,
                  "process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _decode_all(path: Path) -> list[np.ndarray]:
    av = import_av()
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def model_only(predictor: Predictor, frames: list[np.ndarray], plate: np.ndarray) -> dict[str, Any]:
    predictor.predict(frames[0], plate, ("pha", "fgr"))  # warmup (not timed)
    infer = 0.0
    started = time.perf_counter()
    for frame in frames:
        infer += predictor.predict(frame, plate, ("pha", "fgr")).seconds
    seconds = time.perf_counter() - started
    return {"frames": len(frames), "seconds": seconds, "fps": len(frames) / seconds, "infer_seconds": infer}


def pipelined(predictor: Predictor, clip: Path, plate_path: Path, out: Path,
              preset: str = "veryfast") -> dict[str, Any]:
    report = matte(clip, plate_path, out, predictor, MatteOptions(outputs=("pha", "fgr"), preset=preset, overwrite=True))
    data = report.to_dict()
    frames = report.counts["matted"]
    return {"frames": frames, "seconds": report.seconds, "fps": frames / report.seconds if report.seconds else 0.0,
            "dropped": report.counts["read"] - frames - report.counts["skipped"], "stages": data["stages"],
            "formats": report.formats}


def sequential(predictor: Predictor, clip: Path, plate: np.ndarray, out: Path) -> dict[str, Any]:
    """Decode, predict, encode one frame at a time in one thread (the original project's way)."""
    av = import_av()
    stages = {"decode": 0.0, "predict": 0.0, "encode": 0.0}
    started = time.perf_counter()
    with av.open(str(clip)) as source:
        stream = source.streams.video[0]
        info = StreamInfo(str(clip), "video", stream.codec_context.width, stream.codec_context.height,
                          stream.average_rate, stream.time_base, stream.frames)
        writers = {kind: VideoWriter(out / f"seq_{kind}.mp4", FORMATS["h264"], LAYOUTS[kind], info, 18, "veryfast")
                   for kind in ("pha", "fgr")}
        count = 0
        frames = source.decode(stream)
        while True:
            begun = time.perf_counter()
            frame = next(frames, None)
            if frame is None:
                break
            rgb = frame.to_ndarray(format="rgb24")
            stages["decode"] += time.perf_counter() - begun
            begun = time.perf_counter()
            prediction = predictor.predict(rgb[None].transpose(0, 3, 1, 2), plate[None].transpose(0, 3, 1, 2),
                                           ("pha", "fgr"))
            stages["predict"] += time.perf_counter() - begun
            begun = time.perf_counter()
            meta = Frame(count, frame.pts, 0.0, rgb)
            for kind, writer in writers.items():
                writer.write(meta, render_output(kind, prediction, 0, None))
            stages["encode"] += time.perf_counter() - begun
            count += 1
        begun = time.perf_counter()
        for writer in writers.values():
            writer.flush()
            writer.finish(None)
        stages["encode"] += time.perf_counter() - begun
    seconds = time.perf_counter() - started
    return {"frames": count, "seconds": seconds, "fps": count / seconds, "stages": stages}


def encode_costs(predictor: Predictor, frames: list[np.ndarray], plate: np.ndarray, out: Path) -> dict[str, Any]:
    """Milliseconds per frame to render and encode each output kind in each format."""
    count = len(frames)
    height, width = plate.shape[:2]
    predictions = [predictor.predict(frame, plate, ("pha", "fgr", "err", "ref")) for frame in frames]
    batched = [_batch_of_one(p) for p in predictions]
    backdrop = np.empty_like(plate)
    backdrop[:] = (120, 255, 155)
    info = StreamInfo("bench", "video", width, height, None, fractions.Fraction(1, 30), count)
    results = {}
    for kind, fmt_name in ENCODE_CASES:
        fmt = FORMATS[fmt_name]
        images = [render_output(kind, prediction, 0, backdrop) for prediction in batched]
        started = time.perf_counter()
        writer = (SequenceWriter(out / f"{kind}_{fmt_name}", skip_existing=False) if fmt.is_sequence else
                  VideoWriter(out / f"{kind}_{fmt_name}{fmt.suffix}", fmt, LAYOUTS[kind], info, 18, "veryfast"))
        for index, image in enumerate(images):
            writer.write(Frame(index, index, index / 30, plate, f"{index:06d}"), image)
        writer.flush()
        writer.finish(None)
        seconds = time.perf_counter() - started
        results[f"{kind}:{fmt_name}"] = {"ms_per_frame": 1000 * seconds / count, "frames": count}
        print(f"  encode {kind:>4} {fmt_name:<7} {1000 * seconds / count:7.1f} ms/frame", file=sys.stderr)
    return results


class CpuMeter:
    """This process's CPU seconds and the whole machine's busy CPU seconds over a block, from
    ``getrusage`` and ``/proc/stat``: what the others sharing the machine took meanwhile."""

    def __enter__(self) -> CpuMeter:
        self._own, self._machine, self._wall = _own_cpu(), _machine_busy(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._wall
        own, machine = _own_cpu() - self._own, _machine_busy() - self._machine
        self.result = {"wall": wall, "own_cpu": own, "machine_busy_cpu": machine,
                       "others_cpu_share": max(machine - own, 0.0) / (wall * (os.cpu_count() or 1))}


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _machine_busy() -> float:
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _measured(function: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    with CpuMeter() as meter:
        row = function(*args, **kwargs)
    row["cpu"] = meter.result
    row["own_cpu_ms_per_frame"] = 1000 * meter.result["own_cpu"] / row["frames"]
    return row


def _ratios(row: dict[str, Any]) -> dict[str, float]:
    model, pipe, seq = (row[mode]["fps"] for mode in ("model_only", "pipelined", "sequential"))
    return {"pipelined_over_model_only": pipe / model, "sequential_over_model_only": seq / model,
            "pipelined_over_sequential": pipe / seq,
            "pipelined_ultrafast_over_model_only": row["pipelined_ultrafast"]["fps"] / model}


def _batch_of_one(prediction: Any) -> Any:
    for key in ("pha", "fgr", "err", "ref"):
        value = getattr(prediction, key)
        if value is not None:
            setattr(prediction, key, value[None])
    return prediction


def peak_rss(clips: dict[int, Path], plate_path: Path, model: Path, out: Path) -> dict[str, Any]:
    results = {}
    env = {**os.environ, "PYTHONPATH": str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for frames, clip in clips.items():
        completed = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(clip), str(plate_path), str(model),
                                    str(out / f"rss_{frames}")], capture_output=True, text=True, env=env, check=False)
        if completed.returncode != 0:
            raise RuntimeError(f"RSS child failed: {completed.stderr[-2000:]}")
        results[str(frames)] = json.loads(completed.stdout.strip().splitlines()[-1])
        row = results[str(frames)]
        print(f"  {frames} frames: RSS {row['rss_before_run_mib']:.0f} MiB before the run, peak "
              f"{row['rss_peak_during_run_mib']:.0f} MiB during it", file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=12, help="frames of the HD clip")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds of the modes")
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--encode-frames", type=int, default=10)
    parser.add_argument("--rss-frames", default="300,30", help="long,short clip lengths for peak RSS")
    parser.add_argument("--rss-size", default="640x480")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    rss_width, rss_height = (int(v) for v in args.rss_size.split("x"))
    av = import_av()
    with tempfile.TemporaryDirectory(prefix="bgm_video_bench_") as temp:
        work = Path(temp)
        print("making clips and exporting the model ...", file=sys.stderr)
        clip, _, plate = make_clip(work / "hd.mp4", PAIR, ClipSpec(size=(width, height), frames=args.frames))
        plate_path = work / "plate.png"
        save_image(plate_path, plate)
        model = work / "mobilenetv2.onnx"
        export(MODEL, model, format="onnx")
        rss_clips = {}
        for count in (int(v) for v in args.rss_frames.split(",")):
            rss_clips[count], _, rss_plate = make_clip(work / f"rss_{count}.mp4", PAIR,
                                                       ClipSpec(size=(rss_width, rss_height), frames=count))
        save_image(work / "rss_plate.png", rss_plate)
        frames = _decode_all(clip)
        load_before = os.getloadavg()
        rounds: list[dict[str, Any]] = []
        with Predictor.load(model, threads=2, shared_cores=True) as predictor:
            # The three modes alternate, round after round, so that a change in the machine's
            # load (it is shared) hits all of them alike; ratios are taken within each round.
            for number in range(args.rounds):
                row = {"model_only": _measured(model_only, predictor, frames, plate),
                       "pipelined": _measured(pipelined, predictor, clip, plate_path, work / "pipe"),
                       "sequential": _measured(sequential, predictor, clip, plate, work),
                       "pipelined_ultrafast": _measured(pipelined, predictor, clip, plate_path, work / "pipe",
                                                        "ultrafast")}
                row["ratios"] = _ratios(row)
                rounds.append(row)
                print(f"round {number + 1}: " + ", ".join(
                    f"{mode} {row[mode]['fps']:.3f} fps (others {row[mode]['cpu']['others_cpu_share']:.0%})"
                    for mode in ("model_only", "pipelined", "sequential", "pipelined_ultrafast"))
                    + f"; pipelined/model-only {row['ratios']['pipelined_over_model_only']:.3f}", file=sys.stderr)
            print("encode cost per output ...", file=sys.stderr)
            encode_rows = encode_costs(predictor, frames[: args.encode_frames], plate, work / "enc")
        del frames
        load_after = os.getloadavg()
        print("peak RSS ...", file=sys.stderr)
        rss_rows = peak_rss(rss_clips, work / "rss_plate.png", model, work)
    long_count, short_count = (str(v) for v in args.rss_frames.split(","))
    rss_ratio = rss_rows[long_count]["rss_peak_during_run_mib"] / rss_rows[short_count]["rss_peak_during_run_mib"]
    result = {
        "schema_version": SCHEMA_VERSION,
        "machine": "2-core AMD EPYC, no GPU (load per mode: median_others_cpu_share)",
        "environment": environment_info(),
        "pyav": av.__version__,
        "ffmpeg": str(getattr(av, "ffmpeg_version_info", "")) or None,
        "clip": {"pair": PAIR, "size": [width, height], "frames": args.frames, "codec": "h264 crf 18 veryfast"},
        "model": {**MODEL.to_dict(), "format": "onnx", "runtime": "onnxruntime CPUExecutionProvider, 2 threads, allow_spinning off"},
        "load_average_1_5_15": {"before": load_before, "after": load_after},
        "rounds": rounds,
        "median_own_cpu_ms_per_frame": {mode: statistics.median(r[mode]["own_cpu_ms_per_frame"] for r in rounds)
                                        for mode in ("model_only", "pipelined", "sequential", "pipelined_ultrafast")},
        "median_others_cpu_share": {mode: statistics.median(r[mode]["cpu"]["others_cpu_share"] for r in rounds)
                                    for mode in ("model_only", "pipelined", "sequential", "pipelined_ultrafast")},
        "median_fps": {mode: statistics.median(r[mode]["fps"] for r in rounds)
                       for mode in ("model_only", "pipelined", "sequential", "pipelined_ultrafast")},
        "ratios": {key: statistics.median(r["ratios"][key] for r in rounds) for key in rounds[0]["ratios"]},
        "target": {"pipelined_over_model_only": 0.85, "rss_long_over_short": 1.10},
        "encode_ms_per_frame": encode_rows,
        "peak_rss": {"size": [rss_width, rss_height], "runs": rss_rows, "long_over_short": rss_ratio},
    }
    atomic_write_text(args.out, json.dumps(result, indent=2, sort_keys=True, default=str))
    print(json.dumps({"ratios": result["ratios"], "rss_long_over_short": rss_ratio}, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
