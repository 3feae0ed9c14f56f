"""bgm-deploy: export, verify, benchmark and serve BackgroundMattingV2.

Public API (each CLI command is a thin layer over one of these)::

    from bgm_deploy import ModelConfig, export, verify, bench, matte, matte_video, Predictor
"""

from __future__ import annotations

__version__ = "0.1.0"

from .config import ModelConfig, auto_backbone_scale  # noqa: E402
from .errors import BgmDeployError  # noqa: E402
from .export import export  # noqa: E402
from .verify import VerifyConfig, verify  # noqa: E402
from .bench import BenchConfig, bench  # noqa: E402
from .matte import matte  # noqa: E402
from .video import matte_video  # noqa: E402
from .predictor import Predictor  # noqa: E402

__all__ = [
    "BenchConfig",
    "BgmDeployError",
    "ModelConfig",
    "Predictor",
    "VerifyConfig",
    "__version__",
    "auto_backbone_scale",
    "bench",
    "export",
    "matte",
    "matte_video",
    "verify",
]
