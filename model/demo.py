"""The demo weights shipped with the package: a mobilenetv2 MattingRefine trained from scratch
on CPU by ``python -m training.train`` on run-time synthetic composites (see
``model/weights/README.md`` for how, and for its scores). They let the CLI and the examples
run on real images without downloading the official checkpoints; they are far less accurate
than the official ``pytorch_mobilenetv2.pth``.

Torch-free: importing this module only names the file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

DEMO_BACKBONE = "mobilenetv2"
DEMO_WEIGHTS_PATH = Path(__file__).resolve().parent / "weights" / "demo_mobilenetv2.pth"
DEMO_SHA256 = "d341c57c11a0fd34bb6f3da441046b444a171053ed24f81208ec48e5e873166f"


def demo_available() -> bool:
    """True when the demo weights file is present and intact (its sha256 matches)."""
    try:
        data = DEMO_WEIGHTS_PATH.read_bytes()
    except OSError:
        return False
    return hashlib.sha256(data).hexdigest() == DEMO_SHA256


def demo_fits(config: object) -> bool:
    """Whether the demo weights fit a model config (a mobilenetv2 MattingRefine, kernel 3)."""
    return (getattr(config, "backbone", None) == DEMO_BACKBONE and getattr(config, "model_type", None) == "refine"
            and getattr(config, "refine_kernel_size", None) == 3)


def demo_checkpoint_for(sha256: str | None) -> Path | None:
    """The demo weights file when ``sha256`` is theirs (a file exported from them records it),
    so verifying such a file needs no ``--checkpoint``; None otherwise."""
    if sha256 == DEMO_SHA256 and DEMO_WEIGHTS_PATH.is_file():
        return DEMO_WEIGHTS_PATH
    return None


DEMO_NOTE = ("demo weights (trained here on synthetic composites, not the official weights: far less accurate; pass "
             "--checkpoint pytorch_mobilenetv2.pth for real mattes, --seed N for synthetic test weights)")
