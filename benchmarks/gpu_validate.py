"""Validates, on a machine with an NVIDIA GPU, exactly what ``bgm-deploy export`` ships; skips elsewhere.

Run: ``python -m benchmarks.gpu_validate --out gpu_validation`` (or ``benchmarks/gpu_validate.sh``).

For the HD preset (1920x1080, backbone_scale 0.25, 80k pixels) and the 4K preset
(3840x2160, 0.125, 320k), with synthetic seeded weights (or ``--checkpoint``), through the
public API only, so nothing is validated that the package does not ship:

1. ``bgm_deploy.export``: the default ONNX, the TensorRT-target ONNX (with its preflight)
   and TorchScript, each at the preset resolution, as ``bgm-deploy export --resolution``
   writes them; TensorRT engines (fp32, fp16) with ``bgm_deploy.export.export_engine``
   from the TensorRT-target ONNX, where TensorRT is installed;
2. ``bgm_deploy.verify.verify`` of every file on its GPU runtime (onnxruntime CUDA and
   TensorRT providers, TorchScript on CUDA, the native engine runner) against eager
   PyTorch: the same comparison, tolerances and tie analysis as ``bgm-deploy verify``;
3. ``bgm_deploy.bench.bench`` (CUDA-event timing) of every usable backend, fp32 and fp16.

Writes ``gpu_validation.json`` and ``gpu_validation.md`` to ``--out``. On a machine without
CUDA it prints what it skipped and exits 0. UNVERIFIED: it has not yet been run on a GPU
(none was available where it was written).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bgm_deploy.bench import NAMED_RESOLUTIONS, BenchConfig, bench
from bgm_deploy.bench.harness import TimingConfig
from bgm_deploy.environment import environment_info
from bgm_deploy.export import export, export_engine
from bgm_deploy.verify import VerifyConfig, verify
from exporters.atomic import atomic_write_text
from exporters.config import OnnxConfig
from exporters.tensorrt import EngineConfig
from model.config import ModelConfig
from model.errors import BgmDeployError

SCHEMA_VERSION = 2
PRESETS = ("hd", "4k")


def _skip_reasons() -> list[str]:
    if not torch.cuda.is_available():
        return ["no CUDA GPU (torch.cuda.is_available() is False)"]
    return []


def _attempt(name: str, results: dict[str, Any], say: Callable[[str], None], step: Callable[[], Any]) -> Any:
    """Runs one step; a failure is a result of the validation (recorded), not a crash."""
    try:
        return step()
    except (BgmDeployError, RuntimeError, OSError) as exc:
        results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        say(f"{name}: FAILED {type(exc).__name__}: {exc}")
        return None


def validate_preset(preset: str, workdir: Path, args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    """Export, verify and time one preset with the shipped API."""
    resolution = NAMED_RESOLUTIONS[preset]
    config = ModelConfig(backbone=args.backbone)  # scale and sample pixels: the preset's (auto)
    checkpoint = args.checkpoint
    files: dict[str, Path] = {}
    parity: dict[str, Any] = {}
    result: dict[str, Any] = {"preset": preset, "resolution": list(resolution), "files": {}, "parity": parity}
    progress = lambda message: say(f"[{preset}] {message}")  # noqa: E731
    exports = {
        "onnx": ("onnx", OnnxConfig()),
        "onnx_tensorrt_target": ("onnx", OnnxConfig(target="tensorrt")),
        "torchscript": ("torchscript", None),
    }
    for name, (fmt, onnx_config) in exports.items():
        path = workdir / f"{preset}_{name}.{'onnx' if fmt == 'onnx' else 'pt'}"
        report = _attempt(f"export {name}", parity, progress, lambda: export(
            config, path, fmt, onnx=onnx_config, checkpoint=checkpoint, progress=progress, resolution=resolution,
            overwrite=True))  # fmt: skip
        if report is not None:
            files[name] = path
            result["files"][name] = report.to_dict()
    if importlib.util.find_spec("tensorrt") is not None and "onnx_tensorrt_target" in files:
        for precision in ("fp32", "fp16"):
            engine = workdir / f"{preset}_{precision}.engine"
            info = _attempt(f"engine {precision}", parity, progress, lambda: export_engine(
                engine, EngineConfig(precision=precision, preset=preset, timing_cache=str(workdir / "timing.cache")),
                from_onnx=files["onnx_tensorrt_target"], progress=progress, overwrite=True))  # fmt: skip
            if info is not None:
                files[f"tensorrt_{precision}"] = engine
    else:
        result["engines_skipped"] = "TensorRT is not installed (pip install 'bgm-deploy[tensorrt]')"
    checks = {
        "onnx": ("cuda",), "onnx_tensorrt_target": ("tensorrt",), "torchscript": ("cuda",),
        "tensorrt_fp32": ("tensorrt",), "tensorrt_fp16": ("tensorrt",),
    }  # fmt: skip
    for name, providers in checks.items():
        if name not in files:
            continue
        for provider in providers:
            key = f"{name} on {provider}"
            settings = VerifyConfig(target=provider, resolutions=(resolution,), batch=2, checkpoint=checkpoint)
            report = _attempt(key, parity, progress, lambda: verify(files[name], settings, progress=progress))
            if report is not None:
                parity[key] = report.to_dict()
                progress(f"{key}: verify {report.verdict.upper()}")
    timing = TimingConfig(args.warmup, args.iters)
    bench_config = BenchConfig(backbones=(args.backbone,), resolutions=(resolution,), precisions=("fp32", "fp16"),
                               timing=timing, checkpoint=checkpoint, workdir=workdir / f"bench_{preset}")
    report = _attempt("bench", result, progress, lambda: bench(bench_config, progress=progress))
    if report is not None:
        result["bench"] = report.to_dict()
    return result


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = ["# GPU validation", "", f"Device: {env.get('gpu')}; TensorRT {env.get('tensorrt')}; torch {env.get('torch')}", ""]
    for preset in report["presets"]:
        width, height = preset["resolution"]
        lines += [f"## {preset['preset']} ({width}x{height})", "", "| file on runtime | verdict | worst pha | worst fgr |",
                  "|---|---|---|---|"]  # fmt: skip
        for name, parity in preset["parity"].items():
            if "error" in parity:
                lines.append(f"| {name} | failed: {parity['error'][:80]} | | |")
                continue
            worst = {out: max((o["max_abs"] for c in parity["cases"] for o in c["outputs"] if o["name"] == out), default=0.0)
                     for out in ("pha", "fgr")}  # fmt: skip
            lines.append(f"| {name} | {parity['verdict']} | {worst['pha']:.2e} | {worst['fgr']:.2e} |")
        lines.append("")
        for row in preset.get("bench", {}).get("results", []):
            lines.append(f"- {row.get('backend')} {row.get('precision')}: median {row.get('stats', {}).get('median_ms')} ms")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_validation"), help="report directory")
    parser.add_argument("--presets", default="hd,4k", help="comma-separated: hd, 4k")
    parser.add_argument("--backbone", default="mobilenetv2", choices=["mobilenetv2", "resnet50", "resnet101"])
    parser.add_argument("--checkpoint", default=None, help="weights (default: synthetic, seed 0)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=30)
    args = parser.parse_args(argv)
    presets = [p for p in args.presets.split(",") if p]
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        print(f"error: --presets {','.join(unknown)} not valid; valid: {', '.join(PRESETS)}", file=sys.stderr)
        return 2
    reasons = _skip_reasons()
    if reasons:
        print("gpu_validate: skipped everything: " + "; ".join(reasons))
        print("  skipped: HD/4K exports (default, TensorRT-target, TorchScript), fp32/fp16 engines, verify on "
              "ORT-CUDA / ORT-TensorRT / TorchScript-CUDA / native TensorRT, and the bench of every GPU backend")  # fmt: skip
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "environment": environment_info(), "presets": []}
    for preset in presets:
        report["presets"].append(validate_preset(preset, args.out, args, print))
    atomic_write_text(args.out / "gpu_validation.json", json.dumps(report, indent=2, default=str) + "\n")
    atomic_write_text(args.out / "gpu_validation.md", markdown(report))
    print(f"wrote {args.out / 'gpu_validation.json'} and {args.out / 'gpu_validation.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
