"""What a precision or a runtime costs in matte quality: the bundled pairs' SAD, MSE, Grad and
Conn (``bgm-deploy evaluate``) for the demo weights on every CPU path that runs here, next to
synthetic weights (what a pipeline check scores, not a matte).

Rows, each one ``bgm-deploy`` command line (printed with the table, so that any row can be rerun
alone):

- synthetic weights (seed 0), PyTorch eager;
- demo weights, PyTorch eager (the reference);
- demo weights, ONNX fp32 on onnxruntime-cpu; ONNX fp16 on onnxruntime-cpu;
- demo weights, ONNX fp32 on openvino-cpu at f32 and at OpenVINO's default precision (bf16 where
  the CPU has it, as here).

int8 is not in the table: no export offers it yet. The static-shape targets (ExecuTorch, LiteRT,
AOTInductor) run one fixed frame size and the three pairs have three sizes: they are verified
against PyTorch instead (docs/targets.md).

    python -m benchmarks.quality_matrix [--json benchmarks/results/quality_matrix.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
METRICS = ("sad", "mse", "grad", "conn")


def _bgm(*args: str) -> None:
    """Runs one ``bgm-deploy`` command in this interpreter; a failure stops the benchmark with its output."""
    done = subprocess.run([sys.executable, "-m", "bgm_deploy", "--quiet", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bgm-deploy {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")


def rows(work: Path) -> list[tuple[str, list[str], list[str]]]:
    """(label, export command or [], evaluate command) per row; paths under ``work``."""
    fp32, fp16 = str(work / "demo_fp32.onnx"), str(work / "demo_fp16.onnx")
    return [
        ("synthetic seed 0, PyTorch eager", [], ["evaluate", "--seed", "0"]),
        ("demo, PyTorch eager", [], ["evaluate"]),
        ("demo, ONNX fp32, onnxruntime-cpu", ["export", "--format", "onnx", "-o", fp32], ["evaluate", "--model", fp32]),
        ("demo, ONNX fp16, onnxruntime-cpu", ["export", "--format", "onnx", "--precision", "fp16", "-o", fp16],
         ["evaluate", "--model", fp16]),
        ("demo, ONNX fp32, openvino-cpu f32", [], ["evaluate", "--model", fp32, "--target", "openvino-cpu"]),
        ("demo, ONNX fp32, openvino-cpu default precision", [],
         ["evaluate", "--model", fp32, "--target", "openvino-cpu", "--openvino-precision", "default"]),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality_matrix", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    args = parser.parse_args(argv)
    import onnxruntime
    import openvino

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bgm_quality_") as tmp:
        work = Path(tmp)
        for label, export_args, evaluate_args in rows(work):
            if export_args:
                _bgm(*export_args)
            report = work / "scores.json"
            _bgm(*evaluate_args, "--json", str(report))
            data = json.loads(report.read_text())
            results.append({
                "row": label,
                "commands": [" ".join(["bgm-deploy", *a]).replace(tmp, "WORK") for a in (export_args, evaluate_args) if a],
                "mean": {metric: data["mean"][metric] for metric in METRICS},
                "mse_per_pair": {item["name"]: item["mse"] for item in data["items"]},
                "model": {key: data["model"].get(key) for key in ("target", "weights")},
            })
            print(f"{label:50s} " + "  ".join(f"{metric} {data['mean'][metric]:.4f}" for metric in METRICS), flush=True)
    reference = next(r for r in results if r["row"] == "demo, PyTorch eager")["mean"]
    for result in results:
        result["mse_vs_reference"] = result["mean"]["mse"] - reference["mse"]
    if args.json:
        args.json.write_text(json.dumps({
            "schema_version": SCHEMA_VERSION,
            "what": "mean scores on the 3 bundled pairs, full size, plates as given, HD preset; SAD/Grad/Conn /1000",
            "command": "python -m benchmarks.quality_matrix",
            "onnxruntime": onnxruntime.__version__,
            "openvino": openvino.__version__,
            "machine": platform.machine(),
            "int8": "not offered by any export yet",
            "rows": results,
        }, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
