"""The lock files: every dependency pinned with hashes, and installed from them everywhere.

Before, nothing was locked: the Dockerfile resolved its dependencies afresh at every build.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.service import REPO

RUNTIME = REPO / "requirements" / "runtime.lock"
DEV = REPO / "requirements" / "dev.lock"


def _pins(path: Path) -> dict[str, list[tuple[str, str]]]:
    """name -> [(version, marker)], and every pin carries at least one hash."""
    pins: dict[str, list[tuple[str, str]]] = {}
    blocks = re.split(r"\n(?=\S)", path.read_text())
    for block in blocks:
        first = block.splitlines()[0]
        if first.startswith("#"):
            continue
        requirement = Requirement(first.rstrip(" \\"))
        assert "--hash=sha256:" in block, f"{requirement.name} has no hash in {path.name}"
        (specifier,) = requirement.specifier
        assert specifier.operator == "=="
        pins.setdefault(canonicalize_name(requirement.name), []).append(
            (specifier.version, str(requirement.marker or ""))
        )
    return pins


def _project() -> dict[str, object]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("lock", "groups"), [(RUNTIME, ["dependencies"]), (DEV, ["dependencies", "dev"])]
)
def test_every_declared_dependency_is_pinned_within_its_range(
    lock: Path, groups: list[str]
) -> None:
    project = _project()
    declared = list(project["dependencies"])  # type: ignore[call-overload]
    if "dev" in groups:
        declared += project["optional-dependencies"]["dev"]  # type: ignore[index]
    pins = _pins(lock)
    for line in declared:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in {lock.name}"
        for version, _ in pins[name]:
            assert requirement.specifier.contains(version, prereleases=True), (name, version)


def test_the_dev_lock_holds_the_runtime_lock() -> None:
    runtime, dev = _pins(RUNTIME), _pins(DEV)
    for name, versions in runtime.items():
        assert set(versions) <= set(dev.get(name, [])), name


@pytest.mark.parametrize(
    ("lock", "groups"), [(RUNTIME, ["dependencies"]), (DEV, ["dependencies", "dev"])]
)
def test_the_lock_is_complete(lock: Path, groups: list[str]) -> None:
    """Every requirement of every locked package (for this platform and Python, with the
    extras asked for) is itself locked at a version it accepts: an install with `--no-deps`
    from the lock, as the image and the tests do, lacks nothing."""
    pins = _pins(lock)
    project = _project()
    declared = list(project["dependencies"])  # type: ignore[call-overload]
    if "dev" in groups:
        declared += project["optional-dependencies"]["dev"]  # type: ignore[index]
    extras: dict[str, set[str]] = {}
    for line in declared:
        requirement = Requirement(line)
        extras.setdefault(canonicalize_name(requirement.name), set()).update(requirement.extras)
    missing = []
    for name in pins:
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # for another platform or Python (its marker says which)
        for line in requires:
            requirement = Requirement(line)
            wanted = [{"extra": extra} for extra in extras.get(name, set())] or [{"extra": ""}]
            if requirement.marker and not any(requirement.marker.evaluate(e) for e in wanted):
                continue
            dependency = canonicalize_name(requirement.name)
            if dependency not in pins:
                missing.append(f"{name} needs {requirement}")
            elif not any(
                requirement.specifier.contains(v, prereleases=True) for v, _ in pins[dependency]
            ):
                missing.append(f"{name} needs {requirement}, locked {pins[dependency]}")
    assert missing == []


def test_this_environment_is_what_the_dev_lock_says() -> None:
    """scripts/test.sh installs the lock: what runs the tests is what is locked."""
    for name, versions in _pins(DEV).items():
        applicable = [
            v
            for v, marker in versions
            if not marker or Requirement(f"x; {marker}").marker.evaluate()
        ]  # type: ignore[union-attr]
        if not applicable:
            continue
        assert metadata.version(name) == applicable[0], name


def test_the_image_and_the_test_script_install_from_the_locks_with_hashes() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "COPY requirements/runtime.lock" in dockerfile
    assert dockerfile.count("--require-hashes") == 2  # the wheel build and the install
    assert "pip wheel --no-cache-dir --no-deps" in dockerfile  # the project adds nothing
    assert "!requirements/runtime.lock" in (REPO / ".dockerignore").read_text()
    script = (REPO / "scripts" / "test.sh").read_text()
    assert "--require-hashes -r requirements/dev.lock" in script
    assert "--no-deps -e ." in script
    workflow = (REPO / ".github" / "workflows" / "ci.yml").read_text()
    assert "--requirement requirements/runtime.lock" in workflow  # pip-audit reads the lock
    assert '--editable ".[dev]"' not in workflow
