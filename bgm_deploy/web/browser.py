"""A served site in a headless Chromium driven by Playwright: what the browser tests, the
latency benchmark (benchmarks/web_speed.py) and the docs screenshot share.

The browser is the system's Chromium (Debian: ``apt-get install -y chromium``; elsewhere
``$BGM_CHROMIUM``); Playwright's Python package only drives it (``pip install playwright``;
never ``playwright install``, which downloads browsers of its own). Every page talks to the
site's server on loopback and nothing else: the flags below turn off Chromium's own network
traffic. WebGPU without a GPU runs on SwiftShader (the CPU's Vulkan): right, but far too slow
for timings.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model.errors import MissingExtraError, RuntimeUnavailableError

from ..images import BUNDLED_PAIRS_DIR
from .server import WebServer

CHROMIUM_ENV = "BGM_CHROMIUM"
DEFAULT_CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync")
SWIFTSHADER_FLAGS = ("--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-vulkan=swiftshader",
                     "--use-webgpu-adapter=swiftshader", "--enable-unsafe-swiftshader")
PAGE_TIMEOUT_MS = 180_000

# Loads the model on a backend, mattes each pair, returns the raw outputs (base64 float32).
_MATTE_JS = """
async ({backend, pairs, modelUrl}) => {
  const bgm = await import(new URL('bgm.js', location.href).href);
  const model = await bgm.loadModel(modelUrl, {backend});
  const decode = (text) => Uint8ClampedArray.from(atob(text), (c) => c.charCodeAt(0));
  const encode = (floats) => {
    const bytes = new Uint8Array(floats.buffer, floats.byteOffset, floats.byteLength);
    let text = '';
    for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return btoa(text);
  };
  const results = [];
  for (const pair of pairs) {
    const src = {data: decode(pair.src), width: pair.width, height: pair.height};
    const bgr = {data: decode(pair.bgr), width: pair.width, height: pair.height};
    const result = await model.run(src, bgr);
    const outputs = {};
    for (const [name, tensor] of Object.entries(result.outputs)) {
      outputs[name] = {data: encode(Float32Array.from(tensor.data)), dims: tensor.dims};
    }
    results.push(outputs);
  }
  const info = {backend: model.backend, fallbacks: model.fallbacks, version: model.version};
  await model.release();
  return {info, results};
}
"""


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def bundled_pairs_rgba(width: int, height: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The bundled real pairs resized (bilinear) to ``width`` x ``height``, as a canvas gives
    them to the page: ``(name, src, bgr)`` with HxWx4 uint8 RGBA images."""
    from PIL import Image

    pairs = []
    for folder in sorted(path for path in BUNDLED_PAIRS_DIR.iterdir() if path.is_dir()):
        images = [np.asarray(Image.open(folder / name).convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
                             .convert("RGBA")) for name in ("src.jpg", "bgr.jpg")]
        pairs.append((folder.name, images[0], images[1]))
    return pairs


def rgba_to_nchw(rgba: np.ndarray) -> np.ndarray:
    """What ``bgm.js``'s ``rgbaToPlanar`` computes: 1x3xHxW float32 in 0..1."""
    return np.ascontiguousarray(rgba[..., :3].transpose(2, 0, 1)[None].astype(np.float32) / 255)


def chromium_path() -> Path:
    """The Chromium executable: ``$BGM_CHROMIUM``, else ``/usr/bin/chromium``, else ``chromium`` on PATH.

    Raises:
        RuntimeUnavailableError: none found (the message says how to install it).
    """
    candidate = os.environ.get(CHROMIUM_ENV) or DEFAULT_CHROMIUM
    found = candidate if Path(candidate).is_file() else shutil.which(candidate) or shutil.which("chromium")
    if not found:
        raise RuntimeUnavailableError(f"no Chromium at {candidate}: apt-get install -y chromium (Debian/Ubuntu), or set "
                                      f"{CHROMIUM_ENV} to a Chromium/Chrome executable")
    return Path(found)


def import_playwright() -> Any:
    """Playwright's sync API.

    Raises:
        MissingExtraError: not installed.
    """
    try:
        from playwright import sync_api
    except ImportError:
        raise MissingExtraError("the browser tools need Playwright: pip install 'playwright>=1.65.2,<1.66' (then no "
                                "`playwright install`: the system's Chromium is used)") from None
    return sync_api


class HeadlessChromium:
    """Serves ``site`` on a free loopback port and opens ``path`` in a fresh headless Chromium.

    Attributes:
        server: the :class:`WebServer`.
        page: the Playwright page.
        console: ``(type, text)`` of every console message.
        page_errors: uncaught exceptions of the page.

    Args:
        site: an exported site folder.
        webgpu: start Chromium with WebGPU on SwiftShader (else ``--disable-gpu``).
        path: the page to open, relative to the site (``bench.html`` loads no model by itself).
        viewport: ``(width, height)`` of the page.
    """

    def __init__(self, site: str | Path, webgpu: bool = False, path: str = "bench.html",
                 viewport: tuple[int, int] = (1280, 900)) -> None:
        sync_api = import_playwright()
        self.executable = chromium_path()
        self.console: list[tuple[str, str]] = []
        self.page_errors: list[str] = []
        self.server = WebServer(site, port=0)  # first: a folder that is no site leaves no profile behind
        self._profile = tempfile.mkdtemp(prefix="bgm-chromium-profile-")
        self._playwright = None
        self._context = None
        try:
            self._playwright = sync_api.sync_playwright().start()
            flags = [*CHROMIUM_FLAGS, *(SWIFTSHADER_FLAGS if webgpu else ("--disable-gpu",))]
            self._context = self._playwright.chromium.launch_persistent_context(
                self._profile, executable_path=str(self.executable), headless=True, args=flags, timeout=60_000,
                viewport={"width": viewport[0], "height": viewport[1]})
            self.page = self._context.new_page()
            self.page.set_default_timeout(PAGE_TIMEOUT_MS)
            self.page.on("console", lambda message: self.console.append((message.type, message.text)))
            self.page.on("pageerror", lambda error: self.page_errors.append(str(error)))
            self.page.goto(self.server.url + path)
        except BaseException:
            self.close()
            raise

    @property
    def version(self) -> str:
        """The browser's version line (``Chromium 156.0...``)."""
        result = subprocess.run([str(self.executable), "--version"], capture_output=True, text=True, timeout=30, check=False)
        return result.stdout.strip()

    def console_errors(self) -> list[str]:
        """Console messages of type ``error`` so far."""
        return [text for kind, text in self.console if kind == "error"]

    def matte(self, backend: str, pairs: Sequence[tuple[np.ndarray, np.ndarray]],
              model_url: str = "./model.onnx") -> tuple[dict[str, Any], list[dict[str, np.ndarray]]]:
        """Mattes frame pairs through the site's module ``bgm.js`` on ``backend``.

        Args:
            backend: ``wasm``, ``webgpu``, ``webgpu-native`` or ``auto``.
            pairs: ``(src, bgr)`` HxWx4 uint8 RGBA images (what a canvas gives the page).
            model_url: the model, relative to the open page.

        Returns:
            ``(info, outputs)``: the backend that ran, its fallbacks and onnxruntime-web's
            version; per pair the raw model outputs as float32 arrays by name.
        """
        payload = [{"src": _b64(src), "bgr": _b64(bgr), "width": int(src.shape[1]), "height": int(src.shape[0])}
                   for src, bgr in pairs]
        run = self.page.evaluate(_MATTE_JS, {"backend": backend, "pairs": payload, "modelUrl": model_url})
        outputs = [{name: np.frombuffer(base64.b64decode(value["data"]), dtype=np.float32).reshape(value["dims"])
                    for name, value in result.items()} for result in run["results"]]
        return run["info"], outputs

    def close(self) -> None:
        """Closes the browser, Playwright and the server (idempotent)."""
        try:
            if self._context is not None:
                self._context.close()
                self._context = None
            if self._playwright is not None:
                self._playwright.stop()
                self._playwright = None
        finally:
            self.server.close()
            shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> HeadlessChromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
