"""Bench rows come from the target registry; unusable rows say why instead of running on something else."""

from __future__ import annotations

import pytest
import torch

from bgm_deploy.bench.backends import ORIGINAL_BACKEND, bench_rows, get_row, row_names, unavailable_reason
from model.errors import UsageError
from runtimes.targets import targets


def test_every_target_with_a_bench_name_is_a_row() -> None:
    declared = {t.bench: t.name for t in targets() if t.bench is not None}
    rows = {row.name: row.target.name for row in bench_rows()}
    assert {name: rows[name] for name in declared} == declared
    assert rows[ORIGINAL_BACKEND] == "onnxruntime-cpu" and get_row(ORIGINAL_BACKEND).recipe == ORIGINAL_BACKEND
    assert get_row("onnxruntime-cpu").name == "onnx-cpu"  # a target name picks its row


def test_cpu_rows_are_usable_in_fp32() -> None:
    for row in ("eager", "torchscript", "onnx-cpu", ORIGINAL_BACKEND):
        assert unavailable_reason(row, "fp32") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("row", [r.name for r in bench_rows() if r.target.device == "cuda"])
def test_gpu_rows_are_skipped_without_a_gpu(row: str) -> None:
    reason = unavailable_reason(row, "fp32")
    assert reason is not None and ("no GPU" in reason or "not installed" in reason)


@pytest.mark.parametrize("row", ["eager", "torchscript", "onnx-cpu"])
def test_fp16_on_cpu_has_a_reason(row: str) -> None:
    assert "fp16" in (unavailable_reason(row, "fp16") or "")


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(UsageError, match="valid: " + ", ".join(row_names())):
        unavailable_reason("onnx-gpu", "fp32")
    with pytest.raises(UsageError, match="precision='int8'"):
        unavailable_reason("eager", "int8")
