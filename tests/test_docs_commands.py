"""Every command shown in README.md and docs/*.md runs, as written, in a test.

Commands are read from the files themselves, so an example is tested the day it is written:
every line of a ```bash (or ```sh) block, with ``\\`` continuations joined, runs with bash in a
workspace per document (blocks in order, so a later example uses the file an earlier one
made). The workspace holds what the examples name: synthetic ``pytorch_<backbone>.pth``
checkpoints, small photo pairs (``shot.jpg``/``plate.jpg``, ``photos/``+``backgrounds/``,
``shots/``+``plates/``), a clip (``clip.mp4``) and its frames (``frames/``).

A block can be annotated by an HTML comment on the line before its fence (invisible in the
rendered page):

* ``<!-- doc-test: skip REASON -->`` — not run here (needs a GPU, a camera, the network);
  the reason is the skip message.
* ``<!-- doc-test: slow REASON -->`` — run with ``--runslow`` only (an HD or 4K export).
* ``<!-- doc-test: background UNTIL -->`` — the block's single command runs until the rest of
  the document's blocks have run (a server), after printing a line containing ``UNTIL``;
  then it gets SIGINT and must exit 0.

A ``text`` block is prose (a command list); a fence without a language that holds a
``bgm-deploy`` line is an error here, so no example escapes the test by its fence.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^\s*```(\S*)\s*$")
DIRECTIVE = re.compile(r"^\s*<!--\s*doc-test:\s*(skip|slow|background)\s*(.*?)\s*-->\s*$")
RUNNABLE = ("bash", "sh", "shell", "console")
COMMAND_TIMEOUT = 900


@dataclass
class Block:
    """One runnable code block."""

    doc: Path
    line: int
    commands: list[str]
    kind: str = "run"  # run, skip, slow, background
    note: str = ""

    @property
    def id(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"


@dataclass
class Document:
    path: Path
    blocks: list[Block] = field(default_factory=list)
    unlabeled: list[int] = field(default_factory=list)


def _commands(lines: list[str]) -> list[str]:
    """The block's commands: continuations joined, comment-only and empty lines dropped."""
    joined, current = [], ""
    for raw in lines:
        text = raw.rstrip()
        if text.endswith("\\"):
            current += text[:-1] + " "
            continue
        current += text
        if current.strip() and not current.strip().startswith("#"):
            joined.append(current.strip())
        current = ""
    return joined


def parse(path: Path) -> Document:
    document = Document(path)
    lines = path.read_text().splitlines()
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        language, start = match.group(1).lower(), index
        end = next(i for i in range(index + 1, len(lines)) if lines[i].strip().startswith("```"))
        body = lines[start + 1:end]
        previous = lines[start - 1] if start > 0 else ""
        directive = DIRECTIVE.match(previous)
        if language in RUNNABLE:
            block = Block(path, start + 1, _commands(body))
            if directive:
                block.kind, block.note = directive.group(1), directive.group(2)
            document.blocks.append(block)
        elif not language and any(line.strip().startswith("bgm-deploy ") for line in body):
            document.unlabeled.append(start + 1)
        index = end + 1
    return document


DOCUMENTS = [parse(path) for path in DOCS]


def test_every_example_is_in_a_runnable_block() -> None:
    unlabeled = [f"{d.path.relative_to(REPO)}:{line}" for d in DOCUMENTS for line in d.unlabeled]
    assert not unlabeled, f"label these code fences ```bash (or ```text for prose): {unlabeled}"
    assert sum(len(b.commands) for d in DOCUMENTS for b in d.blocks) > 20


# -- the workspace ---------------------------------------------------------------------------------
def _pair(name: str) -> tuple[Image.Image, Image.Image]:
    root = REPO / "bgm_deploy" / "data" / "pairs" / name
    return (Image.open(root / "src.jpg").convert("RGB").resize((320, 240)),
            Image.open(root / "bgr.jpg").convert("RGB").resize((320, 240)))


def make_workspace(root: Path) -> None:
    """What the examples name, small."""
    from benchmarks.make_video_clips import ClipSpec, make_clip
    from model.checkpoint import build_model
    from model.config import ModelConfig

    for backbone in ("mobilenetv2", "resnet50", "resnet101"):
        torch.save(build_model(ModelConfig(backbone=backbone, seed=5)).state_dict(), root / f"pytorch_{backbone}.pth")
    src, bgr = _pair("astronaut_coffee_640x480")
    src.save(root / "shot.jpg")
    bgr.save(root / "plate.jpg")
    bgr.save(root / "plate.png")
    for sources, backgrounds in (("photos", "backgrounds"), ("shots", "plates")):
        for index, name in enumerate(("astronaut_coffee_640x480", "cat_rocket_1001x667")):
            pair = _pair(name)
            for folder, image in ((sources, pair[0]), (backgrounds, pair[1])):
                (root / folder).mkdir(exist_ok=True)
                image.save(root / folder / f"shot{index}.jpg")
    clip, _, plate = make_clip(root / "clip.mp4", spec=ClipSpec(size=(320, 240), frames=8))
    Image.fromarray(plate).save(root / "plate.png")  # the clip's plate (same pair as plate.jpg)
    (root / "frames").mkdir()
    import av

    with av.open(str(clip)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            frame.to_image().save(root / "frames" / f"frame_{index:04d}.png")


@pytest.fixture(scope="module")
def workspaces(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, Path]:
    template = tmp_path_factory.mktemp("doc-template")
    make_workspace(template)
    spaces = {}
    for document in DOCUMENTS:
        if document.blocks:
            target = tmp_path_factory.mktemp(f"doc-{document.path.stem}")
            shutil.copytree(template, target, dirs_exist_ok=True)
            spaces[document.path] = target
    return spaces


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


class _Background:
    """A command left running while the rest of its document runs."""

    def __init__(self, command: str, cwd: Path, until: str) -> None:
        self.command = command
        self.process = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=cwd, env=_env(), text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.lines: list[str] = []
        deadline = time.monotonic() + COMMAND_TIMEOUT
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if until in line:
                return
        self.stop()
        raise AssertionError(f"{command!r} never printed {until!r}:\n{''.join(self.lines)}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _run(command: str, cwd: Path) -> None:
    result = subprocess.run(["bash", "-ec", command], cwd=cwd, env=_env(), text=True, capture_output=True,
                            timeout=COMMAND_TIMEOUT)
    assert result.returncode == 0, f"{command}\nexit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("document", [d for d in DOCUMENTS if d.blocks], ids=lambda d: str(d.path.relative_to(REPO)))
def test_the_commands_of(document: Document, workspaces: dict[Path, Path], request: pytest.FixtureRequest) -> None:
    cwd = workspaces[document.path]
    runslow = request.config.getoption("--runslow")
    background: list[_Background] = []
    skipped: list[str] = []
    ran = 0
    try:
        for block in document.blocks:
            if block.kind == "skip" or (block.kind == "slow" and not runslow):
                skipped.append(f"{block.id} ({block.kind}: {block.note})")
                continue
            if block.kind == "background":
                assert len(block.commands) == 1, f"{block.id}: a background block holds one command"
                background.append(_Background(block.commands[0], cwd, block.note.strip('"')))
                continue
            for command in block.commands:
                _run(command, cwd)
                ran += 1
    finally:
        for server in reversed(background):
            server.stop()
    for server in background:
        assert server.process.returncode == 0, f"{server.command} exited {server.process.returncode}"
    if skipped:
        print(f"{document.path.name}: ran {ran} commands; not run here: {'; '.join(skipped)}")
