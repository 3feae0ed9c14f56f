"""bgm_deploy.web.site: what ``export --format web`` writes, and what it refuses to destroy.

The site writer is tested with placeholder onnxruntime-web files (no npm, no network); the
pages are loaded in a real browser by test_chromium.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bgm_deploy.cli import cli
from bgm_deploy.web import site as site_module
from bgm_deploy.web.layout import CONFIG_FILE, MODEL_FILE, SITE_MANIFEST, STATIC_FILES, check_site
from bgm_deploy.web.runtime import DIST_FILES, runtime_pin
from bgm_deploy.web.site import export_web
from exporters.config import OnnxConfig
from exporters.metadata import read_metadata
from model.checkpoint import build_model
from model.config import ModelConfig
from model.errors import ExportError, UsageError

SMALL = ModelConfig(refine_sample_pixels=4000)
RESOLUTION = (160, 128)


@pytest.fixture(scope="module")
def placeholder_dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dist")
    for name in DIST_FILES:
        (folder / name).write_text(f"// placeholder {name}\n")
    return folder


@pytest.fixture(scope="module")
def exported(placeholder_dist: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    folder = tmp_path_factory.mktemp("site-writer") / "site"
    report = export_web(SMALL, folder, resolution=RESOLUTION, ort_dist=placeholder_dist)
    return folder, report


def _leftovers(parent: Path) -> list[str]:
    return [path.name for path in parent.iterdir() if "bgm-deploy-tmp" in path.name]


def test_the_site_holds_page_module_model_runtime_and_sample(exported: tuple[Path, object]) -> None:
    folder, report = exported
    assert check_site(folder) == folder
    manifest = json.loads((folder / SITE_MANIFEST).read_text())
    files = set(manifest["files"])
    assert set(STATIC_FILES) | {MODEL_FILE, CONFIG_FILE} <= files
    assert {f"ort/{name}" for name in DIST_FILES} | {"ort/NOTICE.txt"} <= files
    assert {"samples/astronaut_coffee_640x480/src.jpg", "samples/astronaut_coffee_640x480/bgr.jpg"} <= files
    assert not any(name.endswith((".map", "ort.all.min.mjs")) for name in files)  # only what the page loads
    pin = runtime_pin()
    assert manifest["runtime"] == {"package": "onnxruntime-web", "version": pin.version, "integrity": pin.integrity,
                                   "bundles": {"jsep": list(DIST_FILES[:3]), "webgpu": list(DIST_FILES[3:])}}
    # The config is embedded in the model and written next to it, with the web rewrites.
    metadata = read_metadata(folder / MODEL_FILE)
    assert json.loads((folder / CONFIG_FILE).read_text()) == json.loads(metadata.to_json())
    assert metadata.export["web"]["refine_k_default"] == 250 and metadata.export["inputs"][-1] == "refine_k"
    assert metadata.model_config.refine_sample_pixels == 4000
    assert report.recheck_max_abs_diff and max(report.recheck_max_abs_diff.values()) <= 1e-5
    assert report.files == sorted(manifest["files"] + [SITE_MANIFEST])
    assert "1.31.1" in (folder / "ort" / "NOTICE.txt").read_text()
    assert _leftovers(folder.parent) == []
    # The module and page the site serves are the package's.
    for name in STATIC_FILES:
        assert (folder / name).read_bytes() == (site_module.STATIC_DIR / name).read_bytes()


def test_folders_that_are_not_sites_and_inputs_are_never_destroyed(placeholder_dist: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "keep.txt").write_text("mine\n")
    with pytest.raises(UsageError, match="not a bgm-deploy site; it is never replaced, even with --overwrite"):
        export_web(SMALL, notes, ort_dist=placeholder_dist, overwrite=True)
    checkpoint = notes / "weights.pth"
    torch.save(build_model(SMALL).state_dict(), checkpoint)
    with pytest.raises(UsageError, match="contains --checkpoint"):
        export_web(SMALL, notes, checkpoint=checkpoint, ort_dist=placeholder_dist, overwrite=True)
    with pytest.raises(UsageError, match="is inside --ort-dist"):
        export_web(SMALL, placeholder_dist / "site", ort_dist=placeholder_dist)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UsageError, match="is a file; --format web writes a folder"):
        export_web(SMALL, tmp_path / "afile", ort_dist=placeholder_dist)
    with pytest.raises(UsageError, match="fp32 only"):
        export_web(SMALL, tmp_path / "site", onnx=OnnxConfig(precision="fp16"), ort_dist=placeholder_dist)
    assert (notes / "keep.txt").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "notes"]


def test_a_failure_after_the_export_leaves_nothing(placeholder_dist: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ExportError("the web rewrites failed (test)")

    monkeypatch.setattr(site_module, "export", broken)  # fails inside the staging folder
    with pytest.raises(ExportError, match="test"):
        export_web(SMALL, tmp_path / "site", resolution=RESOLUTION, ort_dist=placeholder_dist)
    assert list(tmp_path.iterdir()) == []


def _cli(*args: str) -> tuple[int, list[str]]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output.strip().splitlines()


def test_cli_bad_inputs_are_one_line_and_write_nothing(placeholder_dist: Path, tmp_path: Path) -> None:
    site = str(tmp_path / "site")
    for args, message in [
        (["export", "--format", "web", "-o", site, "--ort-dist", str(tmp_path / "nothing")], "is not a folder"),
        (["export", "--format", "onnx", "-o", str(tmp_path / "m.onnx"), "--ort-dist", str(placeholder_dist)],
         "--ort-dist only applies with --format web"),
        (["export", "--format", "web", "-o", site, "--ort-dist", str(placeholder_dist), "--verify"],
         "--verify does not apply to --format web"),
        (["export", "--format", "web", "-o", site, "--ort-dist", str(placeholder_dist), "--precision", "fp16"],
         "fp32 only"),
        (["web", str(tmp_path)], "not a site exported by bgm-deploy"),
    ]:
        code, lines = _cli(*args)
        assert code == 2, (args, lines)
        assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], (args, lines)
    assert list(tmp_path.iterdir()) == []


def test_cli_replaces_an_existing_site_only_with_overwrite(exported: tuple[Path, object], placeholder_dist: Path,
                                                            tmp_path: Path) -> None:
    site = tmp_path / "site"
    shutil.copytree(exported[0], site)
    (site / "stray.txt").write_text("from the old site\n")
    args = ["-q", "export", "--format", "web", "-o", str(site), "--resolution", "160x128", "--refine-sample-pixels",
            "4000", "--ort-dist", str(placeholder_dist), "--json", str(tmp_path / "report.json")]
    code, lines = _cli(*args)
    assert code == 2 and lines == [(f"Error: -o/--output {site} already exists; pass --overwrite to replace it, "
                                    "or choose another folder")]
    code, lines = _cli(*args, "--overwrite")
    assert code == 0, lines
    assert lines[-1].startswith(f"{site}: ") and lines[-1].endswith(f"serve it with: bgm-deploy web {site}")
    assert not (site / "stray.txt").exists() and check_site(site) == site
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["schema_version"] == 1 and report["web"]["refine_k_default"] == 250
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "site"]  # no staging or old folder left
