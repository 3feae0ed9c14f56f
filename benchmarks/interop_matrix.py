"""Runs our exported files through the tools deployers use; writes the table of docs/interop.md.

Files (default model, synthetic seed 0, traced at 160x128, 4,000 sample pixels): ONNX legacy,
ONNX dynamo, ONNX fp16, ONNX ``--target tensorrt``, TorchScript (unfold crop). Each tool's
output file is run in onnxruntime (CPU) on a random batch of 2 at 320x256 and compared with
the original file there (max abs difference over every output; ``ref_sm`` included, so a
different refined-cell selection shows as 1.0) with verify's default tolerance: 1e-4 for fp32
files, 2e-2 for the fp16 file.

    python -m benchmarks.interop_matrix [--json benchmarks/results/interop_matrix.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from bgm_deploy import ModelConfig, export
from exporters.atomic import atomic_write_text
from exporters.config import OnnxConfig
from runtimes import create_runner

CONFIG = ModelConfig(refine_sample_pixels=4_000)
SIZE = (160, 128)
FILES: dict[str, tuple[str, OnnxConfig | None]] = {
    "onnx legacy": ("onnx", OnnxConfig()),
    "onnx dynamo": ("onnx", OnnxConfig(exporter="dynamo")),
    "onnx fp16": ("onnx", OnnxConfig(precision="fp16")),
    "onnx --target tensorrt": ("onnx", OnnxConfig(target="tensorrt")),
    "torchscript": ("torchscript", None),
}


def _feeds(dtype: np.dtype) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    src = rng.random((2, 3, 256, 320), dtype=np.float32)
    bgr = np.clip(src + rng.normal(0, 0.05, src.shape).astype(np.float32), 0, 1)
    return {"src": src.astype(dtype), "bgr": bgr.astype(dtype)}


def _ort(path: Path) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    dtype = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32
    return [np.asarray(a, dtype=np.float32) for a in session.run(None, _feeds(np.dtype(dtype)))]


def _diff(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    return max(float(np.abs(a - b).max()) for a, b in zip(got, want))


def _tolerance(path: Path) -> float:
    return 2e-2 if "fp16" in path.name else 1e-4


def _tool_file(name: str, make: Callable[[Path], None], source: Path, want: list[np.ndarray]) -> dict[str, Any]:
    out = source.with_name(f"{source.stem}.{name}.onnx")
    try:
        make(out)
        diff = _diff(_ort(out), want)
    except Exception as exc:  # noqa: BLE001 - the table records any tool failure as data
        return {"ok": False, "result": f"FAIL: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}"}
    kept = any(p.key == "bgm_deploy" for p in onnx.load(str(out), load_external_data=False).metadata_props)
    ok = diff <= _tolerance(source)
    return {"ok": ok, "max_abs_diff": diff, "metadata_kept": kept,
            "result": f"{'runs, matches' if ok else 'runs, DIFFERS'} (max {diff:.1e})"}


def _onnx_rows(path: Path) -> dict[str, Any]:
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    want = _ort(path)
    rows: dict[str, Any] = {}
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, strict_mode=True)
        rows["onnx full_check + strict shape inference"] = {"ok": True, "result": "pass"}
    except Exception as exc:  # noqa: BLE001
        rows["onnx full_check + strict shape inference"] = {"ok": False, "result": f"FAIL: {exc}"[:200]}
    rows["onnxruntime symbolic_shape_infer"] = _tool_file(
        "ssi", lambda out: onnx.save(SymbolicShapeInference.infer_shapes(onnx.load(str(path)), auto_merge=True), str(out)),
        path, want)
    import onnxsim

    rows["onnxsim again"] = _tool_file("sim", lambda out: onnx.save(onnxsim.simplify(onnx.load(str(path)))[0], str(out)),
                                       path, want)
    polygraphy = shutil.which("polygraphy", path=str(Path(sys.executable).parent)) or "polygraphy"
    for label, extra in (("polygraphy surgeon sanitize", []), ("polygraphy surgeon sanitize --fold-constants", ["--fold-constants"])):
        rows[label] = _tool_file(
            "poly" + str(len(extra)),
            lambda out, extra=extra: subprocess.run([polygraphy, "surgeon", "sanitize", str(path), *extra, "-o", str(out)],
                                                    check=True, capture_output=True, timeout=600),
            path, want)
    for label, precision in (("OpenVINO (runner, f32 hint)", "f32"), ("OpenVINO defaults (no hint)", "default")):
        try:
            with create_runner("openvino", path=path, precision=precision) as runner:
                dtype = runner.input_metadata()["src"].dtype
                got = runner.infer(_feeds(np.dtype(dtype)))
                diff = _diff([np.asarray(got[k], np.float32) for k in got], want)
                ok = diff <= _tolerance(path)
                rows[label] = {"ok": ok, "max_abs_diff": diff, "provider": runner.provider,
                               "result": f"{'matches' if ok else 'DIFFERS'} at {runner.provider} (max {diff:.1e})"}
        except Exception as exc:  # noqa: BLE001
            rows[label] = {"ok": False, "result": f"FAIL: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
    return rows


_BARE = (
    "import sys, torch\n"
    "m = torch.jit.load(sys.argv[1]); out = m(torch.rand(2, 3, 256, 320), torch.rand(2, 3, 256, 320))\n"
    "assert 'torchvision' not in sys.modules; print('ok', len(out))\n"
)


def _torchscript_rows(path: Path) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-I", "-c", _BARE, str(path)], capture_output=True, text=True, timeout=600)
    rows: dict[str, Any] = {
        "bare torch.jit.load (no torchvision)": {
            "ok": done.returncode == 0,
            "result": "loads and runs" if done.returncode == 0 else f"FAIL: {done.stderr.strip().splitlines()[-1][:160]}",
        }
    }
    try:
        import openvino as ov
        import torch

        ov.convert_model(torch.jit.load(str(path)), example_input=tuple(torch.from_numpy(v) for v in _feeds(np.dtype(np.float32)).values()))
        rows["openvino.convert_model"] = {"ok": True, "result": "converts"}
    except Exception as exc:  # noqa: BLE001
        rows["openvino.convert_model"] = {"ok": False, "result": f"FAIL: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}"}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="benchmarks/results/interop_matrix.json")
    args = parser.parse_args()
    import openvino
    import polygraphy

    table: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bgm-interop-") as folder:
        for label, (fmt, onnx_config) in FILES.items():
            path = Path(folder) / (label.replace(" ", "_").replace("-", "") + (".onnx" if fmt == "onnx" else ".pt"))
            print(f"exporting {label} ...", flush=True)
            export(CONFIG, path, fmt, onnx=onnx_config, resolution=SIZE)
            table[label] = _onnx_rows(path) if fmt == "onnx" else _torchscript_rows(path)
            for tool, row in table[label].items():
                print(f"  {tool:<48} {row['result']}", flush=True)
    result = {
        "schema_version": 1,
        "command": "python -m benchmarks.interop_matrix",
        "versions": {"onnx": onnx.__version__, "onnxruntime": ort.__version__, "openvino": openvino.__version__,
                     "polygraphy": polygraphy.__version__},
        "machine": platform.machine(),
        "files": table,
    }
    atomic_write_text(args.json, json.dumps(result, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
