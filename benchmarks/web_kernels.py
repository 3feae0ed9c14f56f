"""Single convolutions of the HD model, onnxruntime-web WASM against native onnxruntime CPU.

Where the browser's time goes (docs/web.md, "Latency"). Each row is one ``Conv`` node in a
one-node ONNX file; the same file and the same input run natively (``CPUExecutionProvider``,
``intra_op_num_threads`` = ``--threads``) and in headless Chromium (onnxruntime-web, WASM
with SIMD, ``numThreads`` = ``--threads``, cross-origin isolated), alternating call by call,
each after an idle pause (``bgm_deploy.bench.harness.INTERLEAVE_PAUSE_S``: onnxruntime's workers
spin-wait after a run and would take the other side's cores); each timed call runs the node
``--inner`` times. GFLOP/s counts a multiply-add as 2 FLOPs.

* default: eight representative shapes of the HD model (backbone at 480x270, ASPP, decoder,
  the refiner's patch batch) with seeded weights;
* ``--model``: **every** ``Conv`` of the exported web model (default model, HD, 5,000 refined
  cells), with its own weights and attributes at the input shape it gets on the bundled HD
  pair, plus the whole model on both sides in the same run: the sum of the WASM convolutions
  is a lower bound of the browser's time, to set against native onnxruntime's whole model.

    python -m benchmarks.web_kernels --ort-dist bgm_deploy/web/node_modules/onnxruntime-web/dist
    python -m benchmarks.web_kernels --model --json benchmarks/results/web_kernels_model.json

Writes ``benchmarks/results/web_kernels.json`` with the machine's load before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

from bgm_deploy.bench.harness import INTERLEAVE_PAUSE_S
from bgm_deploy.bench.stats import summarize
from bgm_deploy.environment import cpu_model, cpu_simd_flags
from bgm_deploy.web.browser import HeadlessChromium, bundled_pairs_rgba, rgba_to_nchw
from bgm_deploy.web.layout import MODEL_FILE, RUNTIME_DIR, SITE_MANIFEST
from bgm_deploy.web.runtime import DIST_FILES, runtime_files
from bgm_deploy.web.site import export_web
from exporters.atomic import atomic_write_text
from exporters.metadata import read_metadata

from .web_speed import PAIR, _b64, machine_load
from .web_speed import RUN_JS as MODEL_RUN_JS
from .web_speed import SETUP_JS as MODEL_SETUP_JS

# name, (batch, in channels, height, width), out channels, kernel, groups, stride, dilation,
# what it is in the HD model (1920x1080, backbone scale 0.25: the backbone sees 480x270).
CONVS: tuple[tuple[str, tuple[int, int, int, int], int, int, int, int, int, str], ...] = (
    ("stem", (1, 8, 270, 480), 32, 3, 1, 2, 1, "backbone features.0 (src+bgr, padded 6->8 channels)"),
    ("depthwise", (1, 144, 68, 120), 144, 3, 144, 1, 1, "backbone features.4 depthwise"),
    ("pointwise", (1, 144, 68, 120), 32, 1, 1, 1, 1, "backbone features.4 projection"),
    ("dilated_depthwise", (1, 960, 17, 30), 960, 3, 960, 1, 2, "backbone features.17 depthwise, dilation 2"),
    ("aspp", (1, 320, 17, 30), 256, 3, 1, 1, 6, "ASPP 3x3, dilation 6"),
    ("decoder", (1, 152, 68, 120), 64, 3, 1, 1, 1, "decoder conv2"),
    ("decoder_conv4", (1, 56, 270, 480), 37, 3, 1, 1, 1, "decoder conv4 (54 channels padded to 56)"),
    ("refiner", (5000, 42, 8, 8), 24, 3, 1, 1, 1, "refiner conv1 on 5,000 8x8 patches (no padding)"),
)

SETUP_JS = """
async ({threads, models}) => {
  const ort = await import(new URL('ort/ort.min.mjs', location.href).href);
  ort.env.wasm.wasmPaths = new URL('ort/', location.href).href;
  ort.env.wasm.numThreads = threads;
  ort.env.logLevel = 'error';
  window.__kernels = {};
  for (const [name, shape] of models) {
    const session = await ort.InferenceSession.create(name + '.onnx', {executionProviders: ['wasm'],
                                                                      graphOptimizationLevel: 'all'});
    const size = shape.reduce((a, b) => a * b, 1);
    const data = Float32Array.from({length: size}, (_, i) => ((i * 7919) % 1000) / 1000);
    window.__kernels[name] = {session, feeds: {x: new ort.Tensor('float32', data, shape)}};
  }
  return {isolated: crossOriginIsolated, version: ort.env.versions.web || ort.env.versions.common};
}
"""
RUN_JS = """
async ({name, inner}) => {
  const {session, feeds} = window.__kernels[name];
  const t0 = performance.now();
  for (let i = 0; i < inner; i++) await session.run(feeds);
  return (performance.now() - t0) / inner;
}
"""


def conv_file(folder: Path, name: str, shape: tuple[int, int, int, int], out_channels: int, kernel: int,
              groups: int, stride: int, dilation: int) -> tuple[Path, float]:
    """A one-Conv ONNX file (seeded weights, the padding a same-size conv uses; the refiner's
    patch conv is unpadded) and its GFLOP count."""
    batch, channels, height, width = shape
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((out_channels, channels // groups, kernel, kernel)).astype(np.float32)
    pad = 0 if name == "refiner" else dilation * (kernel // 2)
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=groups, pads=[pad] * 4, strides=[stride] * 2,
                            dilations=[dilation] * 2, kernel_shape=[kernel] * 2)
    graph = helper.make_graph([node], name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / f"{name}.onnx"
    onnx.save(model, path)
    out_h = (height + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
    out_w = (width + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
    gflop = 2 * batch * out_channels * out_h * out_w * (channels // groups) * kernel * kernel / 1e9
    return path, gflop


def measure(folder: Path, threads: int, rounds: int, inner: int) -> dict[str, Any]:
    files = {}
    for name, shape, out_channels, kernel, groups, stride, dilation, _ in CONVS:
        files[name] = conv_file(folder, name, shape, out_channels, kernel, groups, stride, dilation)
    (folder / "bench.html").write_text("<!doctype html><title>kernels</title>\n", encoding="utf-8")
    listing = ["bench.html", *(f"{name}.onnx" for name in files), *(f"{RUNTIME_DIR}/{n}" for n in DIST_FILES)]
    (folder / SITE_MANIFEST).write_text(json.dumps({"files": listing}), encoding="utf-8")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    load_before = machine_load()
    rows = []
    with HeadlessChromium(folder) as browser:
        info = browser.page.evaluate(SETUP_JS, {"threads": threads,
                                                "models": [[name, list(shape)] for name, shape, *_ in CONVS]})
        if not info["isolated"]:
            raise RuntimeError("the page is not cross-origin isolated: WASM would run on one thread")
        for name, shape, *_, what in CONVS:
            path, gflop = files[name]
            rows.append({"conv": name, "what": what, **time_conv(browser, path, name, shape, gflop, options, rounds,
                                                                   inner)})
        chromium = browser.version
    return {
        "schema_version": 1,
        "what": "single Conv nodes with the HD model's shapes: onnxruntime-web WASM (SIMD + threads) in headless "
                "Chromium vs native onnxruntime CPU, same file and input, same thread count, interleaved rounds",
        "command": f"python -m benchmarks.web_kernels --threads {threads} --rounds {rounds} --inner {inner}",
        **_header(threads, rounds, inner, chromium, info, load_before),
        "rows": rows,
    }


def _header(threads: int, rounds: int, inner: int, chromium: str, info: dict[str, Any],
            load_before: dict[str, Any]) -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "threads": threads, "rounds": rounds, "inner": inner, "pause_s": INTERLEAVE_PAUSE_S,
        "chromium": chromium,
        "onnxruntime_web": info.get("version"),
        "onnxruntime": onnxruntime.__version__,
        "cpu": cpu_model(),
        "cpu_flags": cpu_simd_flags(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "load_before": load_before,
        "load_after": machine_load(),
    }


def time_conv(browser: HeadlessChromium, path: Path, name: str, shape: tuple[int, ...], gflop: float,
              options: onnxruntime.SessionOptions, rounds: int, inner: int) -> dict[str, Any]:
    """One node's row: native and WASM medians over interleaved rounds (2 warm-up calls each)."""
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    size = int(np.prod(shape))
    feeds = {"x": (((np.arange(size) * 7919) % 1000) / 1000).astype(np.float32).reshape(shape)}
    for _ in range(2):  # warm-up, both sides
        session.run(None, feeds)
        browser.page.evaluate(RUN_JS, {"name": name, "inner": 1})
    native_s, browser_s = [], []
    for _ in range(rounds):
        time.sleep(INTERLEAVE_PAUSE_S)  # each side after an idle pause: the other's spinning threads park
        start = time.perf_counter()
        for _ in range(inner):
            session.run(None, feeds)
        native_s.append((time.perf_counter() - start) / inner)
        time.sleep(INTERLEAVE_PAUSE_S)
        browser_s.append(browser.page.evaluate(RUN_JS, {"name": name, "inner": inner}) / 1e3)
    native, web = summarize(native_s), summarize(browser_s)
    row = {"input": list(shape), "gflop": round(gflop, 4),
           "native_median_ms": round(native.median_ms, 3), "browser_median_ms": round(web.median_ms, 3),
           "native_gflops": round(gflop / (native.median_ms / 1e3), 1),
           "browser_gflops": round(gflop / (web.median_ms / 1e3), 1),
           "ratio_median": round(web.median_ms / native.median_ms, 2)}
    print(f"{name[:40]:40s} {gflop:7.3f} GFLOP  native {native.median_ms:8.2f} ms ({row['native_gflops']:6.1f} "
          f"GFLOP/s)  WASM {web.median_ms:8.2f} ms ({row['browser_gflops']:6.1f} GFLOP/s)  x{row['ratio_median']:.2f}",
          flush=True)
    return row


def model_conv_files(site: Path, size: tuple[int, int]) -> tuple[list[tuple[str, tuple[int, ...], float]], dict]:
    """One file per ``Conv`` of ``site``'s model, with its weights and attributes, at the input shape
    it gets on the bundled pair at ``size`` (read by running the model once with every Conv's input
    and output as extra outputs; the output gives the FLOP count); also the native feeds of the
    whole model."""
    model = onnx.load(site / MODEL_FILE)
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {output.name for output in probe.graph.output}
    for name in (tensor for node in convs for tensor in (node.input[0], node.output[0])):
        if name not in known:
            probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
            known.add(name)
    src, bgr = next((s, b) for name, s, b in bundled_pairs_rgba(*size) if name == PAIR)
    k = read_metadata(site / MODEL_FILE).export["web"]["refine_k_default"]
    feeds = {"src": rgba_to_nchw(src), "bgr": rgba_to_nchw(bgr), "refine_k": np.array([k], np.int64)}
    session = onnxruntime.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    shapes = {name: value.shape for name, value in zip(names, session.run(None, feeds))}
    weights = {init.name: init for init in model.graph.initializer}
    files = []
    for index, node in enumerate(convs):
        shape = tuple(int(d) for d in shapes[node.input[0]])
        inputs = ["x", *node.input[1:]]
        inits = [weights[name] for name in node.input[1:] if name]
        one = helper.make_node("Conv", inputs, ["y"], **{a.name: helper.get_attribute_value(a) for a in node.attribute})
        graph = helper.make_graph([one], f"conv{index}", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                        list(shape))],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
        single = helper.make_model(graph, opset_imports=model.opset_import)
        single.ir_version = model.ir_version
        name = f"conv{index:02d}"
        onnx.save(single, site / f"{name}.onnx")
        weight = numpy_helper.to_array(weights[node.input[1]])
        gflop = 2 * int(np.prod(shapes[node.output[0]])) * int(np.prod(weight.shape[1:])) / 1e9
        files.append((name, shape, gflop, node.name))
    return files, {"feeds": feeds, "src": src, "bgr": bgr, "k": k}


def measure_model(site: Path, threads: int, rounds: int, inner: int, size: tuple[int, int]) -> dict[str, Any]:
    """Every Conv of the model, and the whole model, both sides, one run."""
    files, whole = model_conv_files(site, size)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    load_before = machine_load()
    rows = []
    width, height = size
    with HeadlessChromium(site) as browser:
        info = browser.page.evaluate(SETUP_JS, {"threads": threads,
                                                "models": [[name, list(shape)] for name, shape, *_ in files]})
        if not info["isolated"]:
            raise RuntimeError("the page is not cross-origin isolated: WASM would run on one thread")
        for name, shape, gflop, node in files:
            rows.append({"conv": name, "node": node, **time_conv(browser, site / f"{name}.onnx", name, shape, gflop,
                                                                 options, rounds, inner)})
        # The whole model: the site's module (bgm.js, WASM) against native onnxruntime, interleaved.
        browser.page.evaluate(MODEL_SETUP_JS, {"threads": threads, "src": _b64(whole["src"]), "bgr": _b64(whole["bgr"]),
                                               "width": width, "height": height})
        native_model = onnxruntime.InferenceSession(str(site / MODEL_FILE), options, providers=["CPUExecutionProvider"])
        for _ in range(2):
            native_model.run(None, whole["feeds"])
            browser.page.evaluate(MODEL_RUN_JS, whole["k"])
        native_s, browser_s = [], []
        for _ in range(rounds):
            time.sleep(INTERLEAVE_PAUSE_S)
            start = time.perf_counter()
            native_model.run(None, whole["feeds"])
            native_s.append(time.perf_counter() - start)
            time.sleep(INTERLEAVE_PAUSE_S)
            browser_s.append(browser.page.evaluate(MODEL_RUN_JS, whole["k"])["inference"] / 1e3)
        chromium = browser.version
    native, web = summarize(native_s), summarize(browser_s)
    convs_native = sum(row["native_median_ms"] for row in rows)
    convs_browser = sum(row["browser_median_ms"] for row in rows)
    summary = {
        "convs": len(rows), "gflop": round(sum(row["gflop"] for row in rows), 3),
        "convs_native_ms": round(convs_native, 1), "convs_browser_ms": round(convs_browser, 1),
        "model_native_median_ms": round(native.median_ms, 1), "model_browser_median_ms": round(web.median_ms, 1),
        "model_ratio_median": round(web.median_ms / native.median_ms, 2),
        "browser_convs_over_native_model": round(convs_browser / native.median_ms, 2),
    }
    print(json.dumps(summary), flush=True)
    return {
        "schema_version": 1,
        "what": "every Conv node of the web export (default model, HD preset, 5,000 refined cells) alone at the input "
                "shape it gets on the bundled HD pair, and the whole model, onnxruntime-web WASM (SIMD + threads) in "
                "headless Chromium vs native onnxruntime CPU, same files, same thread count, interleaved rounds",
        "command": f"python -m benchmarks.web_kernels --model --threads {threads} --rounds {rounds} --inner {inner}",
        "resolution": [width, height],
        "summary": summary,
        **_header(threads, rounds, inner, chromium, info, load_before),
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ort-dist", default=None, help="onnxruntime-web's dist folder [the pinned download]")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--inner", type=int, default=3, help="runs of the node per timed call")
    parser.add_argument("--model", action="store_true",
                        help="every Conv of the exported HD web model, and the whole model (default: 8 shapes)")
    parser.add_argument("--json", default="benchmarks/results/web_kernels.json")
    args = parser.parse_args()
    say = lambda message: print(message, flush=True)
    with tempfile.TemporaryDirectory(prefix="bgm-web-kernels-") as name:
        folder = Path(name)
        if args.model:
            site = folder / "site"
            export_web(output=site, ort_dist=args.ort_dist, progress=say)
            result = measure_model(site, args.threads, args.rounds, args.inner, (1920, 1080))
        else:
            _, dist = runtime_files(args.ort_dist, progress=say)
            (folder / RUNTIME_DIR).mkdir()
            for file in DIST_FILES:
                shutil.copy2(dist / file, folder / RUNTIME_DIR / file)
            result = measure(folder, args.threads, args.rounds, args.inner)
    atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
