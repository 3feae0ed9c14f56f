"""bgm-deploy: export, verify, benchmark and serve BackgroundMattingV2.

Public API (each CLI command is a thin layer over one of these)::

    from bgm_deploy import ModelConfig, ModelSpec, MatteOptions, export, verify, bench, matte, Predictor

The names are resolved on first use (PEP 562): importing the package, or its CLI for
``--help``/``--version``, must not import torch (several seconds).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from exporters.metadata import BGM_DEPLOY_VERSION as __version__  # noqa: N811 - the conventional name

# public name -> module that defines it
_EXPORTS = {
    "BenchConfig": ".bench",
    "bench": ".bench",
    "BgmDeployError": ".errors",
    "ModelConfig": ".config",
    "auto_backbone_scale": ".config",
    "export": ".export",
    "matte": ".matte",
    "MatteOptions": ".matte",
    "ModelSpec": ".model_spec",
    "Predictor": ".predictor",
    "VerifyConfig": ".verify",
    "verify": ".verify",
}

__all__ = [
    "BenchConfig",
    "BgmDeployError",
    "MatteOptions",
    "ModelConfig",
    "ModelSpec",
    "Predictor",
    "VerifyConfig",
    "__version__",
    "auto_backbone_scale",
    "bench",
    "export",
    "matte",
    "verify",
]

if TYPE_CHECKING:
    from model.config import ModelConfig, auto_backbone_scale
    from model.errors import BgmDeployError

    from .bench import BenchConfig, bench
    from .export import export
    from .matte import MatteOptions, matte
    from .model_spec import ModelSpec
    from .predictor import Predictor
    from .verify import VerifyConfig, verify


class _Package(types.ModuleType):
    """Keeps ``bgm_deploy.export`` (and verify, bench, matte) the public *function*: importing
    the submodule of the same name would otherwise rebind the package attribute to the
    module (the submodule itself stays reachable through ``sys.modules``)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bgm_deploy' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value
