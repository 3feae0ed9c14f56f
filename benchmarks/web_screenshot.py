"""The screenshot of the web page in docs/web.md: an exported site in headless Chromium
(WASM; WebGPU is not offered to the page, so it shows its fallback notice), matting the
bundled sample pair.

    python -m benchmarks.web_screenshot --site site --out docs/images/web_page.png

Export the site first (``bgm-deploy export --format web -o site``: the bundled demo weights
unless ``--checkpoint`` or ``--seed`` says otherwise).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bgm_deploy.web.browser import HeadlessChromium

WAIT_JS = "window.bgmPage && (window.bgmPage.frames > 0 || window.bgmPage.errors.length > 0)"


def screenshot(site: Path, out: Path, output_mode: str = "composite-color") -> dict[str, object]:
    """Opens the page, waits for its first matte, switches to ``output_mode`` and saves a PNG."""
    with HeadlessChromium(site, path="index.html", viewport=(1280, 920)) as browser:
        page = browser.page
        page.wait_for_function(WAIT_JS)
        page.select_option("#output", output_mode)
        page.wait_for_function("window.bgmPage.frames > 1 || window.bgmPage.errors.length > 0")
        state = page.evaluate("({errors: window.bgmPage.errors, banner: document.getElementById('banner').textContent})")
        if state["errors"]:
            raise RuntimeError(f"the page reported errors: {state['errors']}")
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))
        return {**state, "console_errors": browser.console_errors()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", required=True, type=Path)
    parser.add_argument("--out", default=Path("docs/images/web_page.png"), type=Path)
    parser.add_argument("--output", default="composite-color", help="the page's output mode")
    args = parser.parse_args()
    print(screenshot(args.site, args.out, args.output))


if __name__ == "__main__":
    main()
