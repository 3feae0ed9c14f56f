"""The dependency policy the README promises: ranges with an upper bound, a constraints file
that pins a version inside every range, CI installing exactly what the README says, and the
README's list of tested versions equal to the pins."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


def _requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(text) for text in [*project["dependencies"], *project["optional-dependencies"]["test"]]]


def _pins(name: str = "constraints.txt") -> dict[str, str]:
    pins = {}
    for line in (REPO / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{name}: {line!r} is not an exact pin (name==version)"
            pins[_normal(name)] = version
    return pins


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_requirement_has_lower_and_upper_bound() -> None:
    for requirement in _requirements():
        operators = {spec.operator for spec in requirement.specifier}
        assert operators & {">=", "=="} and operators & {"<", "<=", "=="}, f"{requirement} needs both bounds"


def test_constraints_pin_a_version_inside_every_range_that_applies_here() -> None:
    pins = _pins()
    for requirement in _requirements():
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue  # e.g. onnxruntime (CPU wheel) on platforms other than Linux x86_64
        name = _normal(requirement.name)
        assert name in pins, f"constraints.txt does not pin {requirement.name}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {requirement.name}=={pins[name]}, outside the range {requirement.specifier}"
        )


def test_ci_installs_what_the_readme_says() -> None:
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    install = 'pip install -c constraints.txt -e ".[test]"'
    assert install in readme and install in ci
    assert "python -m pytest -q" in readme and "python -m pytest -q" in ci
    assert "BGM_DEPS" in ci and "BGM_DEPS=latest bash .ci/run" in readme
    for extra in ("requirements-serve.txt", "requirements-litert.txt"):
        line = f"pip install --no-deps -r {extra}"
        assert line in readme and line in ci, line


def test_readme_lists_the_pinned_versions() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Dependencies", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"([A-Za-z][A-Za-z0-9_.-]+) (\d+(?:\.\d+)+)", section)
    assert len(listed) >= 10, listed
    pins = {**_pins(), **_pins("requirements-serve.txt")}
    for name, version in listed:
        if _normal(name) in pins:
            assert pins[_normal(name)] == version, f"README says {name} {version}, the pins say {pins[_normal(name)]}"
