"""How far an fp16 ONNX export is from the fp32 one on onnxruntime's CPU provider.

Exports the default model (mobilenetv2 MattingRefine, synthetic seed 0, HD preset) at fp32
and fp16, runs both through the onnxruntime runner on the bundled photo pairs and one random
640x480 frame, and reports the error of every output of the fp16 file against the fp32 file
(mean and max abs; for ``ref_sm`` the count of cells the two select differently).

    python -m benchmarks.fp16_cpu_error [--json benchmarks/results/fp16_cpu_error.json]

Published in docs/export.md ("fp16"). Not a timing: the numbers depend on the kernels of the
installed onnxruntime, which is recorded with them.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime

from bgm_deploy import ModelConfig, export
from bgm_deploy.images import BUNDLED_PAIRS_DIR, load_image
from exporters.atomic import atomic_write_text
from exporters.config import OnnxConfig
from runtimes import create_runner

SIZE = (640, 480)


def _frames() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, src, bgr)`` NCHW float32, height and width cropped to multiples of 4."""
    frames = []
    for folder in sorted(p for p in BUNDLED_PAIRS_DIR.iterdir() if p.is_dir()):
        src, bgr = (load_image(folder / name).astype(np.float32) / 255.0 for name in ("src.jpg", "bgr.jpg"))
        height, width = src.shape[0] // 4 * 4, src.shape[1] // 4 * 4
        frames.append((folder.name, *(x[:height, :width].transpose(2, 0, 1)[None].copy() for x in (src, bgr))))
    rng = np.random.default_rng(0)
    src = rng.random((1, 3, SIZE[1], SIZE[0]), dtype=np.float32)
    frames.append(("random 640x480", src, np.clip(src + rng.normal(0, 0.05, src.shape).astype(np.float32), 0, 1)))
    return frames


def measure(folder: Path) -> dict[str, object]:
    paths = {}
    for precision in ("fp32", "fp16"):
        paths[precision] = folder / f"{precision}.onnx"
        export(ModelConfig(), paths[precision], "onnx", onnx=OnnxConfig(precision=precision), resolution=SIZE)
    rows = []
    with create_runner("onnxruntime", path=paths["fp32"]) as fp32, create_runner("onnxruntime", path=paths["fp16"]) as fp16:
        for name, src, bgr in _frames():
            want = fp32.infer({"src": src, "bgr": bgr})
            got = fp16.infer({"src": src.astype(np.float16), "bgr": bgr.astype(np.float16)})
            row: dict[str, object] = {"case": name, "size": [int(src.shape[3]), int(src.shape[2])]}
            for output, expected in want.items():
                diff = np.abs(got[output].astype(np.float32) - expected)
                if output == "ref_sm":
                    row["ref_sm_cells_differing"] = int((diff > 0).sum())
                    row["ref_sm_cells_refined"] = int(expected.sum())
                else:
                    row[output] = {"mean_abs": float(diff.mean()), "max_abs": float(diff.max())}
            rows.append(row)
    return {
        "schema_version": 1,
        "what": "fp16 ONNX vs fp32 ONNX, onnxruntime CPUExecutionProvider, default model (synthetic seed 0)",
        "command": "python -m benchmarks.fp16_cpu_error",
        "onnxruntime": onnxruntime.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cases": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="benchmarks/results/fp16_cpu_error.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bgm-fp16-") as folder:
        result = measure(Path(folder))
    atomic_write_text(args.json, json.dumps(result, indent=2))
    for row in result["cases"]:
        print(f"{row['case']:<40} pha_sm mean {row['pha_sm']['mean_abs']:.2e} max {row['pha_sm']['max_abs']:.2e}  "
              f"pha mean {row['pha']['mean_abs']:.2e} max {row['pha']['max_abs']:.2e}  "
              f"ref cells differing {row['ref_sm_cells_differing']}/{row['ref_sm_cells_refined']}")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
