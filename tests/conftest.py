"""Shared fixtures, markers and tolerances for the test suite.

Markers (registered in pyproject.toml): ``slow`` runs only with ``--runslow``; ``gpu``
is skipped without CUDA; ``tensorrt`` is skipped when TensorRT cannot be imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from bgm_deploy.images import BUNDLED_PAIRS_DIR
from bgm_deploy.verify import DEFAULT_ATOL

REPO = Path(__file__).resolve().parents[1]
PAIRS_DIR = BUNDLED_PAIRS_DIR

# Parity tolerances: verify's own (defined once, in bgm_deploy.verify), by export precision.
TOLERANCES = {"fp32": DEFAULT_ATOL["float32"], "fp16": DEFAULT_ATOL["float16"]}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")
    parser.addoption("--regen-golden", action="store_true", help="rewrite golden files instead of comparing")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_cuda = torch.cuda.is_available()
    has_trt = importlib.util.find_spec("tensorrt") is not None
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(pytest.mark.skip(reason="slow: run with --runslow"))
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="gpu: no CUDA device on this machine"))
        # get_closest_marker, not keywords: a test folder named tensorrt/ is a keyword too.
        if item.get_closest_marker("tensorrt") is not None and not (has_trt and has_cuda):
            item.add_marker(pytest.mark.skip(reason="tensorrt: TensorRT and a GPU are not available"))


@pytest.fixture(scope="session")
def pairs_dir() -> Path:
    """The bundled real photo pairs (src.jpg, bgr.jpg, alpha.png per folder)."""
    return PAIRS_DIR


@pytest.fixture()
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
