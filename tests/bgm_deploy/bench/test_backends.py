"""Backend availability: unusable backends say why instead of running on something else."""

from __future__ import annotations

import pytest
import torch

from bgm_deploy.bench.backends import BACKENDS, GPU_BACKENDS, unavailable_reason
from model.errors import UsageError


def test_cpu_backends_are_usable_in_fp32() -> None:
    for backend in ("eager", "torchscript", "onnx-cpu"):
        assert unavailable_reason(backend, "fp32", "cpu") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_backends_are_skipped_without_cuda(backend: str) -> None:
    reason = unavailable_reason(backend, "fp32", "cpu")
    assert reason is not None and "CUDA" in reason


@pytest.mark.parametrize("backend", ["eager", "torchscript", "onnx-cpu"])
def test_fp16_on_cpu_has_a_reason(backend: str) -> None:
    assert "fp16" in (unavailable_reason(backend, "fp16", "cpu") or "")


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(UsageError, match="valid: " + ", ".join(BACKENDS)):
        unavailable_reason("onnx-gpu", "fp32", "cpu")
    with pytest.raises(UsageError, match="precision='int8'"):
        unavailable_reason("eager", "int8", "cpu")
