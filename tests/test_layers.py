"""The house stays a straight line of layers: model -> exporters -> runtimes -> bgm_deploy
-> benchmarks, no import cycles, the CLI on top of the API (contracts in pyproject.toml,
checked with import-linter), and project imports at module level except where the CLI defers
the torch-loading API for an instant ``--help``."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "exporters", "runtimes", "bgm_deploy", "benchmarks", "training")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"
    return subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_import_contracts_hold() -> None:
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    "module,line,contract",
    [
        ("exporters/config.py", "import bgm_deploy.verify", "layers"),
        ("bgm_deploy/verify.py", "import bgm_deploy.cli", "the CLI is the top"),
        ("bgm_deploy/images.py", "import bgm_deploy.matte", "no import cycles"),
    ],
)
def test_contracts_catch_a_violation(tmp_path: Path, module: str, line: str, contract: str) -> None:
    """The same contracts on a copy of the tree with one bad import added must fail."""
    for package in PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "data"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}  # injected by the test\n")
    result = _lint(tmp_path)
    assert result.returncode != 0, result.stdout
    broken = [row for row in result.stdout.splitlines() if row.endswith("BROKEN")]
    assert any(contract in row for row in broken), result.stdout


def _local_project_imports() -> list[tuple[str, int, bool]]:
    """(file, line, marked deferred) of every project import inside a function."""
    found = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            source = path.read_text()
            lines = source.splitlines()
            for function in ast.walk(ast.parse(source)):
                if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for node in ast.walk(function):
                    is_project = (isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").split(".")[0] in PACKAGES)) or (
                        isinstance(node, ast.Import) and any(a.name.split(".")[0] in PACKAGES for a in node.names))
                    if is_project:
                        above = lines[function.lineno - 1 : node.lineno]  # from the def to the import
                        found.append((str(path.relative_to(REPO)), node.lineno, any("# deferred" in text for text in above)))
    return found


# The CLI (cli.py and its option groups) defers the torch-loading API (instant --help); runner
# modules, read by --help for their target declarations, defer the torch they load only when a
# runner starts; the Python-backend model file is run by Triton's stub, which can import
# bgm_deploy only after initialize() extends sys.path; export recipe modules, read by --help for
# their --format choices, defer the torch.export step (exporters.static_export) to their export function.
DEFERRING_FILES = ("bgm_deploy/cli.py", "bgm_deploy/cli_options.py", "bgm_deploy/serve/triton_model.py",
                   "bgm_deploy/predictor.py", "bgm_deploy/model_spec.py",
                   "runtimes/pytorch.py", "runtimes/tensorrt.py",
                   "exporters/executorch.py", "exporters/aoti.py", "exporters/litert.py", "exporters/coreml.py")


def test_function_local_project_imports_only_defer_the_api_in_the_cli() -> None:
    found = _local_project_imports()
    assert found, "the CLI defers its API imports; the scan found none (is it still scanning?)"
    stray = [(path, line) for path, line, _ in found if path not in DEFERRING_FILES]
    assert not stray, f"project imports inside functions outside the CLI: {stray}"
    unmarked = [(path, line) for path, line, marked in found if not marked]
    assert not unmarked, f"imports inside functions without a '# deferred' comment: {unmarked}"
