"""Imports every export recipe module so that it registers (see :mod:`exporters.recipes`)."""

from __future__ import annotations

# Add a new recipe module here (one line); keep it import-light.
from . import executorch  # noqa: F401  - ExecuTorch .pte (XNNPACK)
from . import aoti  # noqa: F401  - AOTInductor .pt2
