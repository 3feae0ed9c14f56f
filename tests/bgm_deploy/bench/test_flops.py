"""FLOP counting and the GEMM peak measurement."""

from __future__ import annotations

import torch
from torch import nn

from bgm_deploy.bench.flops import count_flops, measure_peak_gemm


def test_conv_flops_match_the_formula() -> None:
    conv = nn.Conv2d(6, 8, 3, bias=False)
    x = torch.rand(2, 6, 10, 12)
    # 2 FLOPs per multiply-add: 2 * N * Cout * Hout * Wout * Cin * k * k.
    assert count_flops(conv, x) == 2 * 2 * 8 * 8 * 10 * 6 * 3 * 3


def test_peak_gemm_is_positive() -> None:
    peak = measure_peak_gemm("cpu", size=128, repeats=2)
    assert peak.gflops > 0 and peak.size == 128 and peak.threads >= 1
    assert set(peak.to_dict()) == {"device", "size", "threads", "gflops"}
