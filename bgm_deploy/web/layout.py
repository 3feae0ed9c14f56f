"""What an exported site holds, by name, and the check that a folder is one (torch-free:
``bgm-deploy web`` serves a site without loading the export machinery)."""

from __future__ import annotations

import json
from pathlib import Path

from model.errors import UsageError

SITE_MANIFEST = "bgm-site.json"
SITE_SCHEMA_VERSION = 1
STATIC_DIR = Path(__file__).with_name("static")
STATIC_FILES = ("index.html", "page.js", "style.css", "bgm.js", "bench.html")
MODEL_FILE = "model.onnx"
CONFIG_FILE = "model.json"
RUNTIME_DIR = "ort"
SAMPLE_PAIRS = ("astronaut_coffee_640x480",)


def check_site(folder: str | Path) -> Path:
    """``folder`` must be a site written by :func:`export_web` (its manifest and files present).

    Raises:
        UsageError: anything else, in one line.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"SITE {folder} is not a folder; export one with: bgm-deploy export --format web -o {folder}")
    manifest = folder / SITE_MANIFEST
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        files = [str(name) for name in data["files"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"SITE {folder} is not a site exported by bgm-deploy (no readable {SITE_MANIFEST}); export one "
                         f"with: bgm-deploy export --format web -o DIR") from None
    missing = [name for name in files if not (folder / name).is_file()]
    if missing:
        raise UsageError(f"SITE {folder} is incomplete: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} "
                         "missing; export it again")
    return folder
