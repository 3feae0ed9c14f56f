"""The Triton Python-backend model that serves a bgm-deploy :class:`~bgm_deploy.predictor.Predictor`.

This file is copied as ``<repository>/<name>/1/model.py`` by
:func:`bgm_deploy.serve.repository.write_python_repository`; Triton's Python backend stub imports
it in its own process, one process per model instance. Everything it needs comes from the
``parameters`` of ``config.pbtxt`` (written by :func:`bgm_deploy.serve.repository.python_config_text`):
``model_spec`` (a :class:`~bgm_deploy.model_spec.ModelSpec` as JSON), ``io_dtype``, ``max_pixels``,
``pad`` and ``python_path``.

Tensors (per request, with the batch axis in front):

* inputs ``src``, ``bgr``: ``(N, H, W, 3)`` UINT8 (0..255) or FP32 (0..1), the layout image
  decoders produce, so a client sends its decoded frames without a transpose.
* outputs ``pha`` ``(N, H, W)``, ``fgr`` ``(N, H, W, 3)`` in the input's type (uint8 rounded
  like :func:`bgm_deploy.images.to_uint8`, or float32 0..1), ``rgba`` ``(N, H, W, 4)`` uint8 RGBA.

Every bad request gets its own error response; the other requests of the same batch and
the server are unaffected.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by the Python backend stub


def _parameters(model_config: dict[str, Any]) -> dict[str, str]:
    return {key: value.get("string_value", "") for key, value in model_config.get("parameters", {}).items()}


def _error(message: str) -> Any:
    code = getattr(getattr(pb_utils, "TritonError", None), "INVALID_ARG", None)
    error = pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """The numbers of :func:`bgm_deploy.images.to_uint8` (``rint(x * 255)`` clipped) with one
    float temporary instead of four: on an HD frame the fresh allocations cost more than the math."""
    work = np.multiply(values, np.float32(255), dtype=np.float32)
    np.rint(work, out=work)
    np.clip(work, 0, 255, out=work)
    return work.astype(np.uint8)


def _tensor(name: str, array: np.ndarray) -> Any:
    """An output tensor handed over through DLPack.

    ``pb_utils.Tensor(name, ndarray)`` reads numpy's C structs with the layout of numpy 1 and
    returns empty tensors under numpy 2; the DLPack route does not depend on that layout.
    A torch tensor is used as the DLPack producer because the stub consumes the capsule in a
    way numpy's own capsule destructor reports as an error (torch's does not).
    """
    import torch  # a dependency of bgm-deploy; only the stub process needs it here

    return pb_utils.Tensor.from_dlpack(name, torch.from_numpy(np.ascontiguousarray(array)))


class TritonPythonModel:
    """Triton's Python-backend entry point (the class name is fixed by Triton)."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = _parameters(config)
        if params.get("python_path"):
            # `serve` points the stub at the bgm-deploy it runs itself (a checkout, a venv).
            sys.path.insert(0, params["python_path"])
        # deferred: bgm_deploy is importable in the stub only once python_path is on sys.path
        from bgm_deploy.model_spec import ModelSpec
        from bgm_deploy.predictor import _MULTIPLE, Predictor

        # The spec `serve`/`export --format triton` wrote: the same model on the same target
        # (a GPU target for GPU instances); a relative model path is in the version folder.
        spec = ModelSpec.from_json(params["model_spec"])
        if spec.model is not None and not Path(spec.model).is_absolute():
            version_dir = Path(args["model_repository"]) / args["model_version"]
            spec = dataclasses.replace(spec, model=str(version_dir / spec.model))
        self.predictor = Predictor.from_spec(spec)
        self.outputs = tuple(item["name"] for item in config["output"])
        self.io_dtype = np.dtype(params.get("io_dtype", "uint8"))
        self.max_pixels = int(params.get("max_pixels", "0")) or None
        self.pad = params.get("pad", "false") == "true"
        self.multiple = _MULTIPLE[self.predictor.model_type]

    def finalize(self) -> None:
        self.predictor.close()

    # -- validation ----------------------------------------------------------------------
    def _check(self, src: np.ndarray, bgr: np.ndarray) -> str | None:
        """Why this request cannot be served, or None. Dtype and rank were checked by Triton."""
        if src.shape != bgr.shape:
            return (
                f"src and bgr must have the same shape, got src {list(src.shape)} and bgr {list(bgr.shape)} "
                "(N, H, W, 3); send a background of the same size as the source"
            )
        batch, height, width = src.shape[:3]
        if batch == 0 or height == 0 or width == 0:
            return f"empty request: src has shape {list(src.shape)}; send at least one image of at least 1x1 pixels"
        if self.max_pixels is not None and height * width > self.max_pixels:
            return (
                f"image {width}x{height} has {height * width} pixels, over this server's limit of {self.max_pixels} "
                "(max_pixels); resize it or start the server with a larger --max-pixels"
            )
        if not self.pad and (height % self.multiple or width % self.multiple):
            return (
                f"image size {width}x{height} is not a multiple of {self.multiple}; pad it (the bgm-deploy client "
                "does, replicating the border) or start the server with --pad"
            )
        return None

    # -- inference -----------------------------------------------------------------------
    def execute(self, requests: list[Any]) -> list[Any]:
        # deferred: importable once initialize() has put python_path on sys.path
        from bgm_deploy.errors import BgmDeployError

        responses: list[Any] = [None] * len(requests)
        groups: dict[tuple[int, ...], list[tuple[int, np.ndarray, np.ndarray]]] = {}
        for index, request in enumerate(requests):
            # Zero-copy views of the request tensors (DLPack, see _tensor for why not as_numpy).
            src = np.from_dlpack(pb_utils.get_input_tensor_by_name(request, "src"))
            bgr = np.from_dlpack(pb_utils.get_input_tensor_by_name(request, "bgr"))
            problem = self._check(src, bgr)
            if problem is not None:
                responses[index] = _error(problem)
            else:
                groups.setdefault(src.shape[1:], []).append((index, src, bgr))
        # Requests of one size that the dynamic batcher put together run as one batch.
        for members in groups.values():
            src = np.concatenate([item[1] for item in members]) if len(members) > 1 else members[0][1]
            bgr = np.concatenate([item[2] for item in members]) if len(members) > 1 else members[0][2]
            try:
                prediction = self.predictor.predict(src.transpose(0, 3, 1, 2), bgr.transpose(0, 3, 1, 2), self.outputs)
            except BgmDeployError as exc:
                for index, _, _ in members:
                    responses[index] = _error(str(exc))
                continue
            start = 0
            for index, item_src, _ in members:
                count = item_src.shape[0]
                tensors = []
                for name in self.outputs:
                    value = getattr(prediction, name)[start : start + count]
                    if name != "rgba" and self.io_dtype == np.uint8:
                        value = _to_uint8(value)
                    tensors.append(_tensor(name, value))
                responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
                start += count
        return responses
