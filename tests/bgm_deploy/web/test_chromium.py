"""The exported site in a real headless Chromium (Playwright), on loopback only.

* the page loads, mattes the sample pair and logs no console error;
* through the page's own module (bgm.js), on WASM, on WebGPU through onnxruntime-web's
  JavaScript kernels and on onnxruntime's native WebGPU execution provider (both on
  SwiftShader, the CPU's Vulkan: correctness only), the raw outputs on the bundled real
  pairs equal the PyTorch reference within 1e-4, tie-aware (verify's ``compare_case``);
* the native WebGPU backend is wrong on the same model without the zero-padded
  convolutions (onnxruntime #29651): the padding is what makes it right.

Bounded: every page wait has a timeout (bgm_deploy.web.browser.PAGE_TIMEOUT_MS); WebGPU runs at 160x128.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bgm_deploy.verify import VerifyConfig, compare_case
from bgm_deploy.web.browser import bundled_pairs_rgba, rgba_to_nchw
from bgm_deploy.web.layout import MODEL_FILE
from exporters.web import web_from_onnx_file
from runtimes import create_runner

# The parity claim of the issue: max abs diff per output, outside tie-flipped patches.
WEB_ATOL = 1e-4
# size per backend: WASM is fast enough for 320x256; SwiftShader's WebGPU takes seconds a frame.
SIZES = {"wasm": (320, 256), "webgpu": (160, 128), "webgpu-native": (160, 128)}


def _compare(site_config: Any, pairs: list[tuple[str, np.ndarray, np.ndarray]],
             browser_outputs: list[dict[str, np.ndarray]], label: str) -> list[Any]:
    """Each pair's browser outputs against the PyTorch reference (verify's comparison)."""
    cases = []
    with create_runner("pytorch", model_config=site_config.model_config) as reference:
        for (name, src, bgr), got in zip(pairs, browser_outputs):
            feeds = {"src": rgba_to_nchw(src), "bgr": rgba_to_nchw(bgr)}
            expected = reference.infer(feeds)
            cases.append(compare_case(f"{label} {name}", list(feeds["src"].shape), expected, got,
                                      site_config.model_config, "float32", VerifyConfig(default_atol=WEB_ATOL)))
    return cases


def test_page_loads_and_mattes_without_console_errors(web_site: Path, make_browser: Any) -> None:
    browser = make_browser(web_site)
    page = browser.page
    page.goto(browser.server.url)  # index.html: loads the model and mattes the sample pair by itself
    page.wait_for_function("window.bgmPage && (window.bgmPage.frames > 0 || window.bgmPage.errors.length > 0)")
    state = page.evaluate("({errors: window.bgmPage.errors, frames: window.bgmPage.frames, isolated: crossOriginIsolated,"
                          " banner: document.getElementById('banner').textContent,"
                          " backend: document.getElementById('stat-backend').textContent,"
                          " size: document.getElementById('stat-size').textContent,"
                          " inference: document.getElementById('stat-infer').textContent})")
    assert state["errors"] == [] and state["frames"] >= 1, state
    assert state["isolated"] is True  # the server's COOP/COEP: WASM threads are possible
    # --disable-gpu: no WebGPU adapter, and the page says so (never a silent fallback).
    assert state["banner"].startswith("Running on WASM") and "fallback: webgpu" in state["banner"], state
    assert state["backend"].endswith("(fallback)")
    assert state["size"] == "640x480" and state["inference"].endswith("ms")
    assert browser.console_errors() == []
    assert browser.page_errors == []


@pytest.mark.parametrize(("backend", "which"), [
    ("wasm", (0, 1, 2)),
    # SwiftShader takes ~20 s a pair: one pair each by default, every pair with --runslow.
    ("webgpu", (1,)),
    ("webgpu-native", (2,)),
    pytest.param("webgpu", (0, 1, 2), marks=pytest.mark.slow),
    pytest.param("webgpu-native", (0, 1, 2), marks=pytest.mark.slow),
])
def test_browser_outputs_equal_pytorch_on_real_pairs(web_site: Path, site_config: Any, make_browser: Any,
                                                     backend: str, which: tuple[int, ...]) -> None:
    width, height = SIZES[backend]
    pairs = [bundled_pairs_rgba(width, height)[index] for index in which]
    browser = make_browser(web_site, webgpu=backend != "wasm")
    info, outputs = browser.matte(backend, [(src, bgr) for _, src, bgr in pairs])
    assert info["backend"] == backend and info["fallbacks"] == [], info
    cases = _compare(site_config, pairs, outputs, backend)
    for case in cases:
        assert case.verdict in ("pass", "warn"), (case.name, case.notes, [(o.name, o.max_abs) for o in case.outputs])
        for output in case.outputs:
            if output.name in ("pha", "fgr"):
                worst = output.max_abs if case.verdict == "pass" else output.max_abs_outside
                assert worst <= WEB_ATOL, (case.name, output.name, worst)
    assert browser.console_errors() == []


def test_native_webgpu_needs_the_channel_padding(web_site: Path, plain_model: Path, tmp_path: Path,
                                                 make_browser: Any, site_config: Any) -> None:
    """The same site with an unpadded web model (``multiple=1``: budget input only) is
    wrong on the native WebGPU EP: onnxruntime #29651 is live in the pinned release, and
    the padding is what makes the site right (test above)."""
    site = tmp_path / "unpadded"
    shutil.copytree(web_site, site)
    unpadded = tmp_path / "unpadded.onnx"
    report, _ = web_from_onnx_file(plain_model, unpadded, multiple=1)
    assert report.padded_convs == [] and report.refine_k == site_config.export["web"]["refine_k_default"]
    shutil.copyfile(unpadded, site / MODEL_FILE)
    width, height = SIZES["webgpu-native"]
    pairs = bundled_pairs_rgba(width, height)[:1]
    browser = make_browser(site, webgpu=True)
    info, outputs = browser.matte("webgpu-native", [(src, bgr) for _, src, bgr in pairs])
    assert info["backend"] == "webgpu-native"
    # Right on onnxruntime's CPU kernels ...
    src, bgr = rgba_to_nchw(pairs[0][1]), rgba_to_nchw(pairs[0][2])
    with create_runner("onnxruntime", path=unpadded, provider="cpu") as cpu:
        expected = cpu.infer({"src": src, "bgr": bgr, "refine_k": np.array([report.refine_k], np.int64)})
    # ... and wrong on the native WebGPU EP (the first conv reads the 6 channels of src+bgr).
    assert float(np.abs(outputs[0]["pha_sm"] - expected["pha_sm"]).max()) > 1e-2
