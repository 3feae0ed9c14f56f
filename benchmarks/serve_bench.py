"""Serving benchmark: ``bgm-deploy serve`` (a real tritonserver) against the local predictor.

One run, one machine, one model: mobilenetv2 at 1920x1080 (what ``bgm-deploy export --format
onnx`` makes for HD: backbone 0.25, sampling up to 80,000 pixels, synthetic weights, outputs
pha and fgr), exported once to ONNX and run by onnxruntime on
the CPU both locally and inside the server. The input is the bundled 1920x1080 photo pair
(uint8, as decoded). Measured:

* local throughput: ``Predictor.predict`` called back to back on one thread;
* server throughput at concurrency 4 (fixed request count, after warmup) per server setup
  (1 instance with/without dynamic batching) and transport (HTTP, gRPC, HTTP + system shared
  memory); earlier runs also measured 2 instances of 1 thread (0.78x), not repeated;
* latency p50/p95/p99 at concurrency 1, 4 and 8 for the headline setup, which is what
  ``bgm-deploy serve MODEL`` and ``matte --server`` pick by themselves ("serve's defaults"); the
  load average before and after is recorded (the machine is shared).

Run: ``python -m benchmarks.serve_bench [--setups "NAME;NAME"]`` (about 6-10 minutes on 2 busy cores); writes
``benchmarks/results/serve.json`` and prints the markdown section of benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from bgm_deploy.bench.stats import summarize
from bgm_deploy.environment import environment_info
from bgm_deploy.export import export
from bgm_deploy.images import load_image
from bgm_deploy.model_spec import ModelSpec
from bgm_deploy.predictor import Predictor
from bgm_deploy.serve.client import TritonMatteClient
from bgm_deploy.serve.repository import TritonModelOptions
from bgm_deploy.serve.server import ServeConfig, TritonServer, default_dynamic_batching, with_free_ports
from exporters.atomic import atomic_write_text
from exporters.config import OnnxConfig
from model.config import ModelConfig

SCHEMA_VERSION = 1
PAIR = Path(__file__).resolve().parents[1] / "bgm_deploy" / "data" / "pairs" / "astronaut_rocket_1920x1080_shifted"
MODEL = ModelConfig(
    backbone="mobilenetv2", backbone_scale=0.25, refine_mode="sampling", refine_sample_pixels=80_000,
    refine_patch_crop_method="roi_align",
    refine_patch_replace_method="scatter_element", seed=0,
)
OUTPUTS = ("pha", "fgr")
DEFAULTS = "serve's defaults"
SETUPS = {
    # What `bgm-deploy serve MODEL` picks on this CPU (dynamic batching from the target's device:
    # off) and what `matte --server` to 127.0.0.1 picks (shared memory: auto, on): filled in by main().
    DEFAULTS: None,
    "1 instance, dynamic batching": TritonModelOptions(outputs=OUTPUTS, max_batch_size=4, max_queue_delay_us=2000),
    "1 instance, no dynamic batching": TritonModelOptions(outputs=OUTPUTS, max_batch_size=4, dynamic_batching=False),
}
TRANSPORTS = ("http", "grpc", "http+shm")
AUTO = "auto"  # the client's own choice (shared memory when the server is on this machine)


def _load_pair() -> tuple[np.ndarray, np.ndarray]:
    return load_image(PAIR / "src.jpg"), load_image(PAIR / "bgr.jpg")


def _local_block(predictor: Predictor, src: np.ndarray, bgr: np.ndarray, frames: int) -> tuple[float, list[float]]:
    """``frames`` back-to-back predictions: (wall seconds, per-frame seconds)."""
    times = []
    started = time.perf_counter()
    for _ in range(frames):
        begin = time.perf_counter()
        predictor.predict(src, bgr, OUTPUTS)
        times.append(time.perf_counter() - begin)
    return time.perf_counter() - started, times


class _Load:
    """One client and one long-lived thread pool per concurrency level: the threads keep their
    connections and shared-memory regions, so no timed block pays for opening them."""

    def __init__(self, client: TritonMatteClient, src: np.ndarray, bgr: np.ndarray, levels: tuple[int, ...]) -> None:
        self.client, self.src, self.bgr = client, src, bgr
        self.pools = {level: ThreadPoolExecutor(level) for level in levels}
        for level, pool in self.pools.items():  # warm every thread of every pool
            barrier = threading.Barrier(level)  # every task waits for the others: `level` threads exist
            list(pool.map(lambda _, wait=barrier.wait: (wait(), self._one(0)), range(level)))

    def _one(self, _: int) -> float:
        begin = time.perf_counter()
        self.client.predict(self.src, self.bgr, OUTPUTS)
        return time.perf_counter() - begin

    def block(self, concurrency: int, requests: int) -> tuple[float, list[float]]:
        """``requests`` requests with ``concurrency`` in flight: (wall seconds, per-request seconds)."""
        started = time.perf_counter()
        times = list(self.pools[concurrency].map(self._one, range(requests)))
        return time.perf_counter() - started, times

    def close(self) -> None:
        for pool in self.pools.values():
            pool.shutdown()


def _batch_stats(metrics_url: str, name: str) -> dict[str, float]:
    """Inferences and executions from Triton's Prometheus metrics: their ratio is the mean batch."""
    import urllib.request

    with urllib.request.urlopen(metrics_url, timeout=10) as response:  # our loopback server
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        for key in ("nv_inference_count", "nv_inference_exec_count", "nv_inference_request_success"):
            if line.startswith(key + "{") and f'model="{name}"' in line:
                values[key] = float(line.rsplit(" ", 1)[1])
    return values


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (local block, server block) pairs per setup/transport")
    parser.add_argument("--requests", type=int, default=8, help="requests per server block (concurrency 4)")
    parser.add_argument("--local-frames", type=int, default=4, help="frames per local block (before each server block)")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "serve.json"))
    parser.add_argument("--setups", default=";".join(SETUPS),
                        help="server setups to run, separated by ';' (the first is the headline)")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.setups.split(";") if name.strip()]
    unknown = [name for name in names if name not in SETUPS]
    if unknown:
        parser.error(f"unknown setups {unknown}; known: {', '.join(SETUPS)}")

    src, bgr = _load_pair()
    load = os.getloadavg()
    results: dict[str, Any] = {
        "load_before": {"1min": load[0], "5min": load[1], "15min": load[2]},
        "schema_version": SCHEMA_VERSION, "environment": environment_info(), "model": MODEL.to_dict(),
        "resolution": [src.shape[1], src.shape[0]], "outputs": list(OUTPUTS), "server_io": "uint8",
        "protocol": (f"{args.rounds} rounds; in each, per server setup/transport: {args.local_frames} local frames, "
                     f"then {args.requests} requests at concurrency 4; ratio = server fps / the adjacent local fps, "
                     "median over rounds; throughput = count / wall time"),
    }
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bgm-serve-bench-") as folder:
        model = Path(folder) / "mobilenetv2_hd.onnx"
        export(MODEL, model, "onnx", onnx=OnnxConfig(outputs=OUTPUTS))
        spec = ModelSpec(model=str(model))
        batching, why = default_dynamic_batching(spec)
        setups = {name: SETUPS[name] or TritonModelOptions(outputs=OUTPUTS, max_batch_size=4, dynamic_batching=batching)
                  for name in names}
        transports = {name: (AUTO,) if name == DEFAULTS else TRANSPORTS for name in names}
        results["setups"] = {name: {"options": asdict(options)} for name, options in setups.items()}
        if DEFAULTS in setups:
            results["setups"][DEFAULTS]["chosen"] = {"dynamic_batching": why, "client_shared_memory": None}
        combos = [(name, transport) for name in names for transport in transports[name]]
        predictor = stack.enter_context(Predictor.from_spec(spec))
        servers, clients = {}, {}
        for name, options in setups.items():
            started = time.perf_counter()
            servers[name] = stack.enter_context(TritonServer(with_free_ports(ServeConfig(spec=spec, options=options))))
            results["setups"][name]["startup_s"] = time.perf_counter() - started
        for name, transport in combos:
            protocol, _, shm = transport.partition("+")
            url = servers[name].grpc_url if protocol == "grpc" else servers[name].http_url
            client = stack.enter_context(TritonMatteClient(url, concurrency=8,
                                                           shared_memory=None if transport == AUTO else bool(shm)))
            if transport == AUTO:
                results["setups"][name]["chosen"]["client_shared_memory"] = client.shared_memory_note
            levels = (1, 4, 8) if name == names[0] else (4,)  # the headline setup: latency at 1, 4, 8
            clients[name, transport] = load = _Load(client, src, bgr, levels)
            stack.callback(load.close)
        _local_block(predictor, src, bgr, 2)  # warm-up
        local_wall, local_times, local_frames = 0.0, [], 0
        walls: dict[tuple[str, str], float] = {combo: 0.0 for combo in combos}
        times: dict[tuple[str, str], list[float]] = {combo: [] for combo in combos}
        ratios: dict[tuple[str, str], list[float]] = {combo: [] for combo in combos}
        before = {name: _batch_stats(server.metrics_url, name="bgm") for name, server in servers.items()}
        for round_index in range(args.rounds):
            print(f"round {round_index + 1}", flush=True)
            for combo in combos:
                # Each server block is paired with a local block right before it: the machine's
                # load drifts (other users), and a ratio of adjacent blocks cancels most of it.
                wall, block = _local_block(predictor, src, bgr, args.local_frames)
                local_wall, local_frames = local_wall + wall, local_frames + args.local_frames
                local_times += block
                local_fps = args.local_frames / wall
                wall, block = clients[combo].block(4, args.requests)
                walls[combo] += wall
                times[combo] += block
                ratios[combo].append(args.requests / wall / local_fps)
                print(f"  {combo[0]} / {combo[1]}: {args.requests / wall:.2f} fps, local {local_fps:.2f} fps "
                      f"({ratios[combo][-1]:.2f}x)", flush=True)
        after = {name: _batch_stats(server.metrics_url, name="bgm") for name, server in servers.items()}
        results["local"] = {"frames": local_frames, "throughput_fps": local_frames / local_wall,
                            "latency": asdict(summarize(local_times))}
        for name in setups:
            delta = {key: after[name].get(key, 0.0) - before[name].get(key, 0.0) for key in after[name]}
            executions = delta.get("nv_inference_exec_count", 0.0)
            results["setups"][name]["mean_batch_size_c4"] = delta.get("nv_inference_count", 0.0) / executions if executions else None
            results["setups"][name]["transports"] = {
                transport: {
                    "concurrency": 4, "requests": len(times[name, transport]), "failed": 0,
                    "throughput_fps": len(times[name, transport]) / walls[name, transport],
                    "ratio_to_local_per_round": ratios[name, transport],
                    "ratio_to_local": float(np.median(ratios[name, transport])),
                    "latency": asdict(summarize(times[name, transport])),
                }
                for transport in transports[name]
            }
        headline = names[0]
        setup = results["setups"][headline]
        best = max(transports[headline], key=lambda key: setup["transports"][key]["ratio_to_local"])
        setup["latency_transport"] = best
        setup["latency_by_concurrency"] = {}
        for concurrency in (1, 4, 8):
            count = {1: 8, 4: 16, 8: 24}[concurrency]
            wall, block = clients[headline, best].block(concurrency, count)
            setup["latency_by_concurrency"][str(concurrency)] = {
                "requests": count, "failed": 0, "throughput_fps": count / wall, "latency": asdict(summarize(block))}
            lat = setup["latency_by_concurrency"][str(concurrency)]["latency"]
            print(f"latency {best} c={concurrency}: p50 {lat['median_ms']:.0f} p95 {lat['p95_ms']:.0f} p99 {lat['p99_ms']:.0f} ms", flush=True)
    load = os.getloadavg()
    results["load_after"] = {"1min": load[0], "5min": load[1], "15min": load[2]}
    atomic_write_text(args.json, json.dumps(results, indent=2))
    print(render_markdown(results))
    return results


def render_markdown(results: dict[str, Any]) -> str:
    local = results["local"]
    lines = [
        f"Load average before/after (1 min, 2 cores): {results['load_before']['1min']:.2f} / "
        f"{results['load_after']['1min']:.2f}.",
        "",
        f"Local predictor: **{local['throughput_fps']:.2f} fps** (p50 {local['latency']['median_ms']:.0f} ms per frame).",
        "",
        "| server setup | transport | fps at concurrency 4 | × local (median of rounds) | mean batch | p50 ms | p95 ms |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, setup in results["setups"].items():
        batch = setup.get("mean_batch_size_c4")
        for transport, run in setup["transports"].items():
            lat = run["latency"]
            lines.append(f"| {name} | {transport} | {run['throughput_fps']:.2f} | {run['ratio_to_local']:.2f} "
                         f"| {batch:.2f} | {lat['median_ms']:.0f} | {lat['p95_ms']:.0f} |" if batch else
                         f"| {name} | {transport} | {run['throughput_fps']:.2f} | {run['ratio_to_local']:.2f} "
                         f"| - | {lat['median_ms']:.0f} | {lat['p95_ms']:.0f} |")
    for name, setup in results["setups"].items():
        if setup.get("latency_by_concurrency"):
            lines += ["", f"Latency, {name}, {setup['latency_transport']}:", "",
                      "| concurrency | requests | fps | p50 ms | p95 ms | p99 ms |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
            for concurrency, run in setup["latency_by_concurrency"].items():
                lat = run["latency"]
                lines.append(f"| {concurrency} | {run['requests']} | {run['throughput_fps']:.2f} | {lat['median_ms']:.0f} "
                             f"| {lat['p95_ms']:.0f} | {lat['p99_ms']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
