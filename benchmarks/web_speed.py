"""In-browser latency (onnxruntime-web WASM, SIMD + threads) against native onnxruntime CPU.

Exports the web site of the default model (mobilenetv2 MattingRefine, synthetic seed 0, HD
preset: backbone scale 0.25, 80,000 refined pixels), then times the same file
(``site/model.onnx``) on the same inputs (the bundled HD pair, resized) with the same
thread count, interleaved round by round so that load from other processes falls on both,
each timed call after an idle ``--pause`` (onnxruntime's workers spin-wait after a run and would
take the other side's cores: ``bgm_deploy.bench.harness.INTERLEAVE_PAUSE_S``):

* browser: the site's own module (``bgm.js``) in a headless Chromium, WASM backend,
  ``numThreads`` = ``--threads``; the time of ``session.run`` measured in the page
  (``inference``) and of the whole ``Matter.run`` (adds RGBA to float32 planes);
* native: onnxruntime's CPUExecutionProvider in this Python process, ``intra_op_num_threads``
  = ``--threads``, through the onnxruntime runner.

    python -m benchmarks.web_speed --ort-dist bgm_deploy/web/node_modules/onnxruntime-web/dist
    python -m benchmarks.web_speed --refine-k 1 --json benchmarks/results/web_speed_k1.json   # backbone + decoder only

Writes ``benchmarks/results/web_speed.json`` (published in docs/web.md) with the machine's
load average before and after and any niced process using the CPU (a training job) at the
time. WebGPU is not timed: without a GPU it runs on SwiftShader, which measures the CPU's
Vulkan emulation, not a GPU; ``bench.html`` in any exported site times it on yours.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

from bgm_deploy.bench.harness import INTERLEAVE_PAUSE_S
from bgm_deploy.bench.stats import summarize
from bgm_deploy.environment import cpu_model
from bgm_deploy.web.browser import HeadlessChromium, bundled_pairs_rgba, rgba_to_nchw
from bgm_deploy.web.layout import MODEL_FILE
from bgm_deploy.web.site import export_web
from exporters.atomic import atomic_write_text
from exporters.metadata import read_metadata
from runtimes import create_runner

PAIR = "astronaut_rocket_1920x1080_shifted"
SIZES = ((640, 360), (1920, 1080))

# Loads the model once per page and keeps the inputs in the page; one call = one timed run.
SETUP_JS = """
async ({threads, src, bgr, width, height}) => {
  const bgm = await import(new URL('bgm.js', location.href).href);
  const decode = (text) => Uint8ClampedArray.from(atob(text), (c) => c.charCodeAt(0));
  if (!window.__bench) window.__bench = {model: await bgm.loadModel('./model.onnx', {backend: 'wasm', threads})};
  window.__bench.src = {data: decode(src), width, height};
  window.__bench.bgr = {data: decode(bgr), width, height};
  const model = window.__bench.model;
  return {backend: model.backend, threads: model.threads, version: model.version, isolated: crossOriginIsolated,
          refineK: model.defaultRefineK};
}
"""
RUN_JS = """
async (refineK) => {
  const {model, src, bgr} = window.__bench;
  const t0 = performance.now();
  const result = await model.run(src, bgr, {refineK});
  return {total: performance.now() - t0, inference: result.times.inference,
          refined: result.outputs.ref_sm.data.reduce((sum, v) => sum + (v > 0.5 ? 1 : 0), 0)};
}
"""


def machine_load() -> dict[str, Any]:
    """Load averages and the niced processes using the CPU now (e.g. a training job)."""
    one, five, fifteen = os.getloadavg()
    busy = []
    try:
        listing = subprocess.run(["ps", "-eo", "ni=,pcpu=,comm="], capture_output=True, text=True, timeout=10,
                                 check=False).stdout
        for line in listing.splitlines():
            parts = line.split(None, 2)
            if len(parts) == 3 and parts[0].lstrip("-").isdigit() and int(parts[0]) > 0 and float(parts[1]) >= 10:
                busy.append({"nice": int(parts[0]), "cpu_percent": float(parts[1]), "command": parts[2]})
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    return {"loadavg_1_5_15": [round(one, 2), round(five, 2), round(fifteen, 2)], "niced_busy_processes": busy}


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def measure(site: Path, threads: int, rounds: int, warmup: int, refine_k: int | None = None,
            pause: float = INTERLEAVE_PAUSE_S) -> dict[str, Any]:
    """Interleaved rounds per size: one native call, one browser call. ``refine_k``: the
    refine budget in cells (default: the model's, 5,000)."""
    model = site / MODEL_FILE
    default_k = read_metadata(model).export["web"]["refine_k_default"]
    k = default_k if refine_k is None else refine_k
    rows = []
    load_before = machine_load()
    with HeadlessChromium(site) as browser, \
            create_runner("onnxruntime", path=model, provider="cpu", threads=threads) as native:
        info: dict[str, Any] = {}
        for width, height in SIZES:
            src, bgr = next((s, b) for name, s, b in bundled_pairs_rgba(width, height) if name == PAIR)
            info = browser.page.evaluate(SETUP_JS, {"threads": threads, "src": _b64(src), "bgr": _b64(bgr),
                                                    "width": width, "height": height})
            if info["backend"] != "wasm" or not info["isolated"]:
                raise RuntimeError(f"the page did not run WASM with threads: {info}")
            feeds = {"src": rgba_to_nchw(src), "bgr": rgba_to_nchw(bgr), "refine_k": np.array([k], np.int64)}
            for _ in range(warmup):
                native.infer(feeds)
                browser.page.evaluate(RUN_JS, k)
            native_s, browser_s, browser_total_s, refined = [], [], [], set()
            for _ in range(rounds):
                time.sleep(pause)  # each side after an idle pause: the other's spinning threads park
                start = time.perf_counter()
                outputs = native.infer(feeds)
                native_s.append(time.perf_counter() - start)
                time.sleep(pause)
                result = browser.page.evaluate(RUN_JS, k)
                browser_s.append(result["inference"] / 1e3)
                browser_total_s.append(result["total"] / 1e3)
                refined.add((int(outputs["ref_sm"].sum()), int(result["refined"])))
            stats = {"native": summarize(native_s), "browser": summarize(browser_s),
                     "browser_run": summarize(browser_total_s)}
            rows.append({
                "size": [width, height],
                "refined_cells_native_browser": sorted(refined),
                **{name: value.to_dict() for name, value in stats.items()},
                "ratio_median": stats["browser"].median_ms / stats["native"].median_ms,
                "ratio_min": stats["browser"].min_ms / stats["native"].min_ms,
            })
            print(f"{width}x{height}: native {stats['native'].median_ms:.0f} ms, browser WASM "
                  f"{stats['browser'].median_ms:.0f} ms (x{rows[-1]['ratio_median']:.2f} median, "
                  f"x{rows[-1]['ratio_min']:.2f} min)", flush=True)
        chromium = browser.version
    return {
        "schema_version": 1,
        "what": "onnxruntime-web WASM (SIMD + threads) in headless Chromium vs native onnxruntime CPU, same model "
                "file, same inputs, same thread count, interleaved rounds, an idle pause before each timed call",
        "command": f"python -m benchmarks.web_speed --threads {threads} --rounds {rounds} --warmup {warmup}"
                   + ("" if refine_k is None else f" --refine-k {refine_k}"),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "model": "mobilenetv2 MattingRefine, synthetic seed 0, HD preset (backbone_scale 0.25, 80000 px = "
                 f"{default_k} cells), web export (padded convs, refine_k input)",
        "refine_k": k,
        "inputs": f"bundled pair {PAIR} resized (bilinear) per size",
        "threads": threads,
        "rounds": rounds,
        "pause_s": pause,
        "warmup": warmup,
        "chromium": chromium,
        "onnxruntime_web": info.get("version"),
        "onnxruntime": onnxruntime.__version__,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "load_before": load_before,
        "load_after": machine_load(),
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ort-dist", default=None, help="onnxruntime-web's dist folder [the pinned download]")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--refine-k", type=int, default=None,
                        help="refine budget in 4x4 cells on both sides [the model's: 5000]; 1 leaves the "
                             "backbone and decoder, to see where the gap is")
    parser.add_argument("--pause", type=float, default=INTERLEAVE_PAUSE_S,
                        help="idle seconds before each timed call (bgm_deploy.bench.harness.INTERLEAVE_PAUSE_S)")
    parser.add_argument("--json", default="benchmarks/results/web_speed.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bgm-web-speed-") as folder:
        site = Path(folder) / "site"
        export_web(output=site, ort_dist=args.ort_dist, progress=lambda message: print(message, flush=True))
        result = measure(site, args.threads, args.rounds, args.warmup, args.refine_k, args.pause)
    atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
