"""Environment fingerprint: versions, providers, CPU and GPU (for `info` and reports)."""

from __future__ import annotations

import importlib
import os
import platform
from typing import Any

from runtimes.targets import targets


def _version(module: str) -> str | None:
    try:
        return str(importlib.import_module(module).__version__)
    except Exception:  # noqa: BLE001 - any import failure means "not usable here"
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_simd_flags() -> list[str]:
    """The x86 vector extensions the CPU reports (what native kernels can use), from
    ``/proc/cpuinfo``; empty where it cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return []
    have = set(flags.split(":", 1)[-1].split())
    wanted = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
    return [flag for flag in wanted if flag in have]


def onnxruntime_providers() -> list[str]:
    try:
        import onnxruntime

        return list(onnxruntime.get_available_providers())
    except ImportError:
        return []


def target_table() -> list[dict[str, Any]]:
    """Every registered target: what it runs, where, and whether it is usable here (and why not).

    onnxruntime-gpu compiles its CUDA and TensorRT providers in on every machine; a target
    says "compiled in, not usable: no GPU" rather than listing them as available."""
    rows = []
    for target in targets():
        reason = target.why_unusable()
        rows.append({"name": target.name, "runner": target.runner, "device": target.device,
                     "formats": list(target.formats), "usable": reason is None, "why_not": reason,
                     "verified_on_hardware": target.verified, "summary": target.summary})
    return rows


def environment_info() -> dict[str, Any]:
    """A JSON-serialisable description of this machine and the libraries in use."""
    import torch

    cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name(0) if cuda else None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "onnx": _version("onnx"),
        "onnxruntime": _version("onnxruntime"),
        "onnxruntime_providers_compiled_in": onnxruntime_providers(),
        "onnxsim": _version("onnxsim"),
        "tensorrt": _version("tensorrt"),
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "gpu": gpu,
        "device": "cuda" if cuda else "cpu",
    }
