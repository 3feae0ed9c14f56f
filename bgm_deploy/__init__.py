"""bgm-deploy: export, verify, benchmark and serve BackgroundMattingV2."""

from __future__ import annotations

__version__ = "0.1.0"
