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
DEMO_SHA256 = "4d478ed6e4826b6ea08e76b27e49dbaf380b5e91da45768f12f440ca08dd25c3"


def demo_available() -> bool:
    """True when the demo weights file is present and intact (its sha256 matches)."""
    try:
        data = DEMO_WEIGHTS_PATH.read_bytes()
    except OSError:
        return False
    return hashlib.sha256(data).hexdigest() == DEMO_SHA256
