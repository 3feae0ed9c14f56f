"""The parity table of docs/web.md: browser outputs against the PyTorch reference, per backend.

Exports a site (synthetic seed 0, 4,000 refined pixels, traced at 320x256), mattes the three
bundled real pairs through the site's module ``bgm.js`` in headless Chromium on WASM (at
320x256) and on WebGPU through onnxruntime-web's JavaScript kernels and through its native
execution provider (both on SwiftShader, at 160x128), and compares every raw output with the
eager PyTorch model through verify's ``compare_case`` (tie-aware). The native EP also runs
the model without the zero-padded convolutions, to show the bug the padding works around.

    python -m benchmarks.web_parity --ort-dist bgm_deploy/web/node_modules/onnxruntime-web/dist

Writes ``benchmarks/results/web_parity.json``. The same checks, as assertions, are
tests/bgm_deploy/web/test_chromium.py.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bgm_deploy.export import export
from bgm_deploy.verify import VerifyConfig, compare_case
from bgm_deploy.web.browser import HeadlessChromium, bundled_pairs_rgba, rgba_to_nchw
from bgm_deploy.web.layout import CONFIG_FILE, MODEL_FILE
from bgm_deploy.web.site import export_web
from exporters.atomic import atomic_write_text
from exporters.metadata import read_config_file
from exporters.web import web_from_onnx_file
from model.config import ModelConfig
from runtimes import create_runner

SIZES = {"wasm": (320, 256), "webgpu": (160, 128), "webgpu-native": (160, 128)}
ATOL = 1e-4


def run_backend(site: Path, backend: str, label: str, config: Any) -> list[dict[str, Any]]:
    width, height = SIZES[backend]
    pairs = bundled_pairs_rgba(width, height)
    start = time.perf_counter()
    with HeadlessChromium(site, webgpu=backend != "wasm") as browser:
        info, outputs = browser.matte(backend, [(src, bgr) for _, src, bgr in pairs])
        errors = browser.console_errors()
    seconds = time.perf_counter() - start
    rows = []
    with create_runner("pytorch", model_config=config.model_config) as reference:
        for (name, src, bgr), got in zip(pairs, outputs):
            feeds = {"src": rgba_to_nchw(src), "bgr": rgba_to_nchw(bgr)}
            case = compare_case(name, list(feeds["src"].shape), reference.infer(feeds), got, config.model_config,
                                "float32", VerifyConfig(default_atol=ATOL))
            rows.append({
                "backend": label, "ran_on": info["backend"], "fallbacks": info["fallbacks"], "pair": name,
                "size": [width, height], "verdict": case.verdict, "notes": case.notes,
                "max_abs": {o.name: o.max_abs for o in case.outputs},
                "max_abs_outside_differing_cells": {o.name: o.max_abs_outside for o in case.outputs},
                "refined_cells": [case.selection.refined_reference, case.selection.refined_runtime],
                "differing_cells": case.selection.differing, "console_errors": errors,
            })
            print(f"{label:<28} {name:<36} {case.verdict:<5} pha {rows[-1]['max_abs']['pha']:.2g} "
                  f"fgr {rows[-1]['max_abs']['fgr']:.2g}", flush=True)
    print(f"{label}: {seconds:.0f} s", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ort-dist", default=None)
    parser.add_argument("--json", default="benchmarks/results/web_parity.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bgm-web-parity-") as folder:
        site = Path(folder) / "site"
        export_web(ModelConfig(refine_sample_pixels=4000), site, resolution=(320, 256), ort_dist=args.ort_dist)
        config = read_config_file(site / CONFIG_FILE)
        rows = []
        for backend in ("wasm", "webgpu", "webgpu-native"):
            rows += run_backend(site, backend, backend, config)
        # The native EP on the same model without the channel padding (onnxruntime #29651).
        plain = Path(folder) / "plain.onnx"
        export(ModelConfig(refine_sample_pixels=4000), plain, "onnx", resolution=(320, 256))
        unpadded = Path(folder) / "unpadded"
        shutil.copytree(site, unpadded)
        web_from_onnx_file(plain, unpadded / MODEL_FILE, multiple=1)
        rows += run_backend(unpadded, "webgpu-native", "webgpu-native, no padding", config)
    result = {
        "schema_version": 1,
        "what": "raw outputs of the site's model in headless Chromium vs eager PyTorch (verify's compare_case, "
                f"atol {ATOL}, tie-aware)",
        "command": "python -m benchmarks.web_parity",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "model": "mobilenetv2 MattingRefine, synthetic seed 0, backbone_scale 0.25, 4000 px (250 cells)",
        "rows": rows,
    }
    atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
