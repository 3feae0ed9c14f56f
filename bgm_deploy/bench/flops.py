"""Work done per frame and the machine's measured matrix-multiply peak.

FLOPs are counted with :class:`torch.utils.flop_counter.FlopCounterMode` on the eager
model (convolutions and matrix products; a multiply-add counts as 2 FLOPs). Counting in
the fixed-sampling configuration makes the number a property of the model and the
resolution alone: exactly ``sample_pixels // 16`` patches are refined every frame.
The peak is measured, not taken from a data sheet: a large float32 ``torch.matmul`` on
all of torch's threads, best of a few repeats.
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_flops(model: nn.Module, *inputs: torch.Tensor) -> int:
    """FLOPs of one forward call of ``model`` on ``inputs`` (convolutions, matmuls)."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(*inputs)
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class PeakGemm:
    """Measured float32 GEMM throughput of one device."""

    device: str
    size: int
    threads: int
    gflops: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.lru_cache(maxsize=None)
def measure_peak_gemm(device: str = "cpu", size: int = 2048, repeats: int = 8) -> PeakGemm:
    """Times ``size x size`` float32 matmuls on ``device``; returns the best GFLOP/s.

    The best of ``repeats`` rather than the median: a peak is an upper bound, and other
    processes can only make a repeat slower. Cached per process, so that every row of one
    run (and of the several ``bench`` calls of the published script) divides by the same
    peak. The FLOP count assumes direct convolution; a runtime using Winograd/FFT kernels,
    or a peak measured while the machine was busy, can push a row's fraction above 1.
    """
    torch_device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(size, size, generator=generator).to(torch_device)
    b = torch.rand(size, size, generator=generator).to(torch_device)
    cuda = torch_device.type == "cuda"
    with torch.inference_mode():
        for _ in range(2):  # warm the BLAS thread pool / cuBLAS handles
            torch.matmul(a, b)
        best = float("inf")
        for _ in range(repeats):
            if cuda:
                torch.cuda.synchronize(torch_device)
            start = time.perf_counter()
            torch.matmul(a, b)
            if cuda:
                torch.cuda.synchronize(torch_device)
            best = min(best, time.perf_counter() - start)
    return PeakGemm(device=device, size=size, threads=torch.get_num_threads(), gflops=2 * size**3 / best / 1e9)
