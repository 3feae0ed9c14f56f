"""Up-front checks of the files a command reads and writes, before any long work starts.

A result must never be lost at the end of a long run (unwritable report path), and an
output must never replace one of the inputs or an earlier file without being asked.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable
from pathlib import Path

from model.errors import UsageError


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _writable_parent(path: Path, label: str) -> None:
    """The nearest existing ancestor of ``path`` must be a writable directory."""
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{label} {path}: {ancestor} is a file, not a directory; choose a path in a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{label} {path}: directory {ancestor} is not writable; choose another location")


def check_input_file(path: str | Path, label: str, hint: str = "") -> Path:
    """``path`` must be an existing file; ``label`` names it in the message (e.g. ``--checkpoint``)."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise UsageError(f"{label} {path} {what}{'; ' + hint if hint else ''}")
    return path


def check_output_file(
    path: str | Path,
    label: str,
    inputs: Iterable[tuple[str, str | Path | None]] = (),
    overwrite: bool = True,
) -> Path:
    """Raises :class:`UsageError` unless ``path`` can be written without destroying anything.

    Args:
        path: the file to be written.
        label: how the caller calls it (``-o``, ``--json``).
        inputs: ``(label, path)`` of every file the command reads; ``path`` must differ
            from each (None entries are skipped).
        overwrite: if False, an existing ``path`` is refused (pass ``--overwrite``).
    """
    path = Path(path)
    for input_label, other in inputs:
        if other is not None and (_same(path, Path(other)) or path.absolute() == Path(other).absolute()):
            raise UsageError(f"{label} {path} is the same file as {input_label}; writing it would destroy that input; "
                             "choose another path")
    if path.is_dir():
        raise UsageError(f"{label} {path} is a directory; pass a file path")
    _writable_parent(path, label)
    if path.exists() and not overwrite:
        raise UsageError(f"{label} {path} already exists; pass --overwrite to replace it, or choose another path")
    return path


def check_output_dir(path: str | Path, label: str, input_trees: Iterable[tuple[str, str | Path]] = ()) -> Path:
    """``path`` must be (or become) a writable directory outside every input tree."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{label} {path} is a file, not a directory; choose a folder")
    resolved = path.resolve()
    for input_label, tree in input_trees:
        tree_path = Path(tree).resolve()
        if tree_path.is_dir() and (resolved == tree_path or tree_path in resolved.parents):
            raise UsageError(f"{label} {path} is inside {input_label} {tree}: later runs would read their own outputs "
                             "as inputs; choose a folder outside it")
    _writable_parent(path / "x", label)
    return path


CHECKPOINT_SUFFIXES = (".pth", ".ckpt", ".bin", ".tar")


def looks_like_checkpoint(path: str | Path) -> bool:
    """True if ``path`` is a ``torch.save`` file rather than an exported model.

    TorchScript archives are zip files too, but carry a ``code/`` folder; a plain
    ``torch.save`` zip has only ``data.pkl`` and tensor data. Legacy (non-zip) files go by suffix.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return path.suffix.lower() in CHECKPOINT_SUFFIXES and path.suffix.lower() != ".onnx"
    return any(n.endswith("/data.pkl") for n in names) and not any("/code/" in n for n in names)
