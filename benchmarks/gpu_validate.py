"""Validates the TensorRT path on a machine with an NVIDIA GPU and TensorRT; skips elsewhere.

Run: ``python -m benchmarks.gpu_validate --out gpu_validation`` (or ``benchmarks/gpu_validate.sh``).

On a GPU box, for the HD preset (1920x1080, backbone_scale 0.25, 80k pixels) and the 4K
preset (3840x2160, 0.125, 320k), with synthetic seeded weights (or ``--checkpoint``):

1. exports the TensorRT-safe ONNX (``target="tensorrt"``) and runs the preflight on it;
2. builds fp32 and fp16 engines (``engine_from_onnx``);
3. verifies every backend against eager PyTorch on the same inputs (max/mean abs diff of
   pha and fgr, agreement of the refined-cell map ``ref_sm``);
4. times eager PyTorch, TorchScript, ORT-CUDA, ORT-TensorRT and the native engines.

Writes ``gpu_validation.json`` and ``gpu_validation.md`` to ``--out``. On a machine without
CUDA or TensorRT it prints what it skipped and exits 0. UNVERIFIED: it has not yet been run
on a GPU (none was available where it was written).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from exporters.atomic import atomic_write_text

SCHEMA_VERSION = 1
PRESETS = {"hd": ((1080, 1920), 0.25, 80_000), "4k": ((2160, 3840), 0.125, 320_000)}


def _skip_reasons() -> list[str]:
    import torch

    reasons = []
    if not torch.cuda.is_available():
        reasons.append("no CUDA GPU (torch.cuda.is_available() is False)")
    if importlib.util.find_spec("tensorrt") is None:
        reasons.append("TensorRT is not installed (pip install 'bgm-deploy[tensorrt]')")
    return reasons


def _time(fn: Callable[[], Any], warmup: int, iters: int) -> dict[str, float]:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "fps": 1000 / statistics.median(times)}


def _compare(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, float]:
    result: dict[str, float] = {}
    for name in ("pha", "fgr"):
        diff = np.abs(outputs[name].astype(np.float32) - reference[name])
        result[f"{name}_max_abs"] = float(diff.max())
        result[f"{name}_mean_abs"] = float(diff.mean())
    result["ref_sm_agreement"] = float((outputs["ref_sm"] == reference["ref_sm"]).mean())
    return result



def validate_preset(preset: str, workdir: Path, args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    """Export, build, verify and time one preset; every step's failure is recorded, not raised."""
    import onnx
    import torch

    from exporters.metadata import METADATA_KEY, ExportMetadata
    from exporters.patcher import EXPORT_PATCHES, ModelPatcher
    from exporters.preflight import preflight_onnx
    from exporters.tensorrt import EngineConfig, engine_from_onnx
    from exporters.tensorrt_safe import TENSORRT_PATCHES
    from model.checkpoint import build_model
    from model.config import ModelConfig
    from runtimes import create_runner

    (height, width), scale, pixels = PRESETS[preset]
    config = ModelConfig(
        backbone=args.backbone, backbone_scale=scale, refine_sample_pixels=pixels, seed=0,
        refine_patch_crop_method="roi_align", refine_patch_replace_method="scatter_element",
        refine_prevent_oversampling=False,  # as the original speed test: refine the full budget
    )  # fmt: skip
    result: dict[str, Any] = {"preset": preset, "resolution": [width, height], "model_config": config.to_dict()}
    model = build_model(config, None).cuda().eval()
    generator = torch.Generator().manual_seed(0)
    src = torch.rand(1, 3, height, width, generator=generator).cuda()
    bgr = (src * 0.9 + 0.05 * torch.rand(1, 3, height, width, generator=generator).cuda()).clamp(0, 1)
    feeds = {"src": src.cpu().numpy(), "bgr": bgr.cpu().numpy()}
    names = ("pha", "fgr", "pha_sm", "fgr_sm", "err_sm", "ref_sm")
    with torch.no_grad():
        reference = {n: t.float().cpu().numpy() for n, t in zip(names, model(src, bgr))}

    onnx_path = workdir / f"{preset}.onnx"
    say(f"[{preset}] exporting TensorRT-safe ONNX")
    cpu_model = build_model(config, None)
    with ModelPatcher(cpu_model, EXPORT_PATCHES + TENSORRT_PATCHES), torch.no_grad():
        torch.onnx.export(
            cpu_model, (src[:, :, :256, :320].cpu(), bgr[:, :, :256, :320].cpu()), str(onnx_path),
            input_names=["src", "bgr"], output_names=list(names),
            dynamic_axes={n: {0: "batch", 2: "height", 3: "width"} for n in ("src", "bgr")}, opset_version=17,
            dynamo=False,
        )  # fmt: skip
    proto = onnx.load(str(onnx_path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, ExportMetadata(config, "onnx", {"target": "tensorrt"}).to_json()
    onnx.save(proto, str(onnx_path))
    result["preflight"] = preflight_onnx(onnx_path).to_dict()

    timings: dict[str, Any] = {}
    parity: dict[str, Any] = {}

    def record(name: str, run: Callable[[], dict[str, np.ndarray]], timed: Callable[[], Any]) -> None:
        try:
            parity[name] = _compare(run(), reference)
            timings[name] = _time(timed, args.warmup, args.iters)
            say(f"[{preset}] {name}: {timings[name]['median_ms']:.2f} ms, {parity[name]}")
        except Exception as exc:  # noqa: BLE001 - a failing backend is a result of the validation
            parity[name] = {"error": f"{type(exc).__name__}: {exc}"}
            say(f"[{preset}] {name}: FAILED {type(exc).__name__}: {exc}")

    with torch.no_grad():
        record("pytorch_eager", lambda: reference, lambda: model(src, bgr))
        scripted = torch.jit.script(build_model(config, None).cuda().eval())
        record("torchscript", lambda: {n: t.float().cpu().numpy() for n, t in zip(names, scripted(src, bgr))},
               lambda: scripted(src, bgr))  # fmt: skip
    for provider in ("cuda", "tensorrt"):
        options: dict[str, Any] = {"provider": provider}
        if provider == "tensorrt":
            options["cache_dir"] = str(workdir / "ort_trt_cache")
        try:
            runner = create_runner("onnxruntime", path=str(onnx_path), **options)
            runner.activate()
        except Exception as exc:  # noqa: BLE001
            parity[f"ort_{provider}"] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        record(f"ort_{provider}", lambda: runner.infer(feeds), lambda: runner.infer(feeds))
        runner.deactivate()
    for precision in ("fp32", "fp16"):
        engine = workdir / f"{preset}_{precision}.engine"
        try:
            say(f"[{preset}] building {precision} engine")
            start = time.perf_counter()
            engine_from_onnx(onnx_path, EngineConfig(precision=precision, preset=preset,
                                                     timing_cache=str(workdir / "timing.cache")), engine, say)  # fmt: skip
            result[f"engine_build_s_{precision}"] = time.perf_counter() - start
            runner = create_runner("tensorrt", path=str(engine))
            runner.activate()
        except Exception as exc:  # noqa: BLE001
            parity[f"tensorrt_{precision}"] = {"error": f"{type(exc).__name__}: {exc}"}
            say(f"[{preset}] tensorrt {precision}: FAILED {type(exc).__name__}: {exc}")
            continue
        record(f"tensorrt_{precision}", lambda: runner.infer(feeds), lambda: runner.infer(feeds))
        runner.deactivate()
    result["parity"], result["timings"] = parity, timings
    return result


def markdown(report: dict[str, Any]) -> str:
    lines = ["# GPU validation", "", f"Device: {report['environment'].get('gpu')}; TensorRT "
             f"{report['environment'].get('tensorrt')}; torch {report['environment'].get('torch')}", ""]  # fmt: skip
    for preset in report["presets"]:
        width, height = preset["resolution"]
        lines += [f"## {preset['preset']} ({width}x{height})", "", f"Preflight ok: {preset['preflight']['ok']}", "",
                  "| backend | median ms | fps | pha max abs | pha mean abs | ref_sm agreement |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for name, parity in preset["parity"].items():
            timing = preset["timings"].get(name)
            if "error" in parity:
                lines.append(f"| {name} | failed: {parity['error'][:80]} | | | | |")
                continue
            lines.append(
                f"| {name} | {timing['median_ms']:.2f} | {timing['fps']:.1f} | {parity['pha_max_abs']:.2e} | "
                f"{parity['pha_mean_abs']:.2e} | {parity['ref_sm_agreement']:.4f} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_validation"), help="report directory")
    parser.add_argument("--presets", default="hd,4k", help="comma-separated: hd, 4k")
    parser.add_argument("--backbone", default="mobilenetv2", choices=["mobilenetv2", "resnet50", "resnet101"])
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
        print("  skipped: TensorRT-safe HD/4K exports, fp32/fp16 engine builds, parity vs PyTorch, and timings of "
              "eager / TorchScript / ORT-CUDA / ORT-TensorRT / native TensorRT")  # fmt: skip
        return 0
    from bgm_deploy.environment import environment_info

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
