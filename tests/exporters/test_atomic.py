"""exporters.atomic.replace_folder: a finished folder replaces what is there, and a failure
in between loses nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from exporters.atomic import TEMP_MARKER, replace_folder


def _folder(path: Path, text: str) -> Path:
    path.mkdir()
    (path / "file.txt").write_text(text)
    return path


def test_replaces_a_folder_or_a_file_and_leaves_no_temp(tmp_path: Path) -> None:
    output = _folder(tmp_path / "site", "old")
    replace_folder(_folder(tmp_path / ".staging1", "new"), output)
    assert (output / "file.txt").read_text() == "new"
    (tmp_path / "other").write_text("a file where the folder goes")
    replace_folder(_folder(tmp_path / ".staging2", "newer"), tmp_path / "other")
    assert (tmp_path / "other" / "file.txt").read_text() == "newer"
    replace_folder(_folder(tmp_path / ".staging3", "first"), tmp_path / "fresh")  # nothing there yet
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "other", "site"]


def test_a_failed_rename_puts_the_old_folder_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output = _folder(tmp_path / "site", "old")
    staging = _folder(tmp_path / ".staging", "new")
    real = os.replace

    def failing(src: str | Path, dst: str | Path) -> None:
        if Path(src) == staging:
            raise OSError("disk full")
        real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="disk full"):
        replace_folder(staging, output)
    assert (output / "file.txt").read_text() == "old"
    assert not [p for p in tmp_path.iterdir() if TEMP_MARKER in p.name]
