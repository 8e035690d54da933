"""The release's SBOM and audit: the release workflow makes a CycloneDX SBOM of the image's
Python packages from the lock, audits the lock, and keeps both as the run's artifact
before anything is pushed. The SBOM's own command, run here as the workflow runs it, lists
exactly the lock's pins with their hashes, and the image built from the Dockerfile holds
exactly those of them that apply to its Python."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .podman import REPO, Image, podman

# The first test to ask for the image pays for the base images and the build: minutes on
# a new machine, where making the stand-ins alone takes one or two.
pytestmark = pytest.mark.timeout(900)

RELEASE = REPO / ".github" / "workflows" / "release.yml"
LOCK = REPO / "requirements" / "runtime.lock"
# What the runtime base image brings of its own, besides the lock: pip and its build tools.
BASE_PACKAGES = {"pip", "setuptools", "wheel"}


def _steps() -> list[dict[str, Any]]:
    (job,) = yaml.safe_load(RELEASE.read_text())["jobs"].values()
    steps: list[dict[str, Any]] = job["steps"]
    return steps


def _step(fragment: str) -> tuple[int, dict[str, Any]]:
    """The one step whose `run` or `uses` contains `fragment`, with its position."""
    found = [(i, s) for i, s in enumerate(_steps()) if fragment in s.get("run", s.get("uses", ""))]
    assert len(found) == 1, f"release.yml: {len(found)} steps with {fragment!r}"
    return found[0]


def _pins() -> dict[str, tuple[str, set[str]]]:
    """Each pin of the lock as `name==version`: (its marker, its sha256 hashes)."""
    pins: dict[str, tuple[str, set[str]]] = {}
    current = ""
    for line in LOCK.read_text().splitlines():
        if line and line[0] not in " #-":
            requirement = Requirement(line.rstrip(" \\"))
            (specifier,) = requirement.specifier
            current = f"{canonicalize_name(requirement.name)}=={specifier.version}"
            pins[current] = (str(requirement.marker or ""), set())
        elif "--hash=sha256:" in line:
            pins[current][1].add(line.split("--hash=sha256:")[1].rstrip(" \\"))
    return pins


@pytest.fixture(scope="module")
def sbom(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The release's SBOM step, its `run` as written, in a directory holding only what it
    reads (pyproject.toml and the lock), with the dev lock's cyclonedx-py on PATH."""
    _, step = _step("cyclonedx-py")
    work = tmp_path_factory.mktemp("sbom")
    shutil.copy(REPO / "pyproject.toml", work / "pyproject.toml")
    (work / "requirements").mkdir()
    shutil.copy(LOCK, work / "requirements" / "runtime.lock")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", step["run"]],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (output,) = work.glob("*.cdx.json")
    data: dict[str, Any] = json.loads(output.read_text())
    return data


def test_the_release_makes_an_sbom_and_audits_the_lock_before_pushing() -> None:
    """SBOM, both audits and the artifact upload come before the image is built and
    pushed, after the dev lock (which brings cyclonedx-py) is installed."""
    install, _ = _step("--requirement requirements/dev.lock")
    sbom_at, sbom_step = _step("cyclonedx-py")
    audit_at, _ = _step("scripts/audit-dependencies.py")
    pip_audit_at, pip_audit = _step("pip-audit==")
    upload_at, upload = _step("actions/upload-artifact@")
    push_at, _ = _step("docker/build-push-action@")
    assert install < sbom_at < upload_at < push_at
    assert install < audit_at < push_at and install < pip_audit_at < upload_at
    assert "requirements/runtime.lock" in sbom_step["run"]
    assert "--output-format JSON" in sbom_step["run"]
    assert "--requirement requirements/runtime.lock" in pip_audit["run"]
    kept = upload["with"]["path"].split()
    assert "chat-service.cdx.json" in kept and "pip-audit.json" in kept
    assert upload["with"]["if-no-files-found"] == "error"
    assert upload["if"] == "${{ !cancelled() }}", "kept also when the audit stops the release"


def test_the_sbom_lists_exactly_the_locked_pins_with_their_hashes(sbom: dict[str, Any]) -> None:
    assert sbom["bomFormat"] == "CycloneDX"
    assert sbom["metadata"]["component"]["name"] == "chat-service"
    pins = _pins()
    listed = {}
    for component in sbom["components"]:
        key = f"{canonicalize_name(component['name'])}=={component['version']}"
        assert component["purl"].startswith(f"pkg:pypi/{key.replace('==', '@')}")
        hashes = {
            h["content"]
            for reference in component.get("externalReferences", [])
            for h in reference.get("hashes", [])
            if h["alg"] == "SHA-256"
        }
        listed[key] = hashes
    assert sorted(listed) == sorted(pins)
    for key, (_, hashes) in pins.items():
        assert listed[key] == hashes, f"{key}: the SBOM's hashes are not the lock's"


# Run inside the image: its Python's PEP 508 marker values and every installed
# distribution, so the host can tell which pins apply there.
INSIDE = """
import importlib.metadata, json, os, platform, sys
print(json.dumps({
    "markers": {
        "os_name": os.name,
        "sys_platform": sys.platform,
        "platform_machine": platform.machine(),
        "platform_python_implementation": platform.python_implementation(),
        "platform_release": platform.release(),
        "platform_system": platform.system(),
        "platform_version": platform.version(),
        "python_version": ".".join(platform.python_version_tuple()[:2]),
        "python_full_version": platform.python_version(),
        "implementation_name": sys.implementation.name,
        "implementation_version": platform.python_version(),
    },
    "installed": sorted(
        [d.metadata["Name"], d.version] for d in importlib.metadata.distributions()
    ),
}))
"""


def test_the_image_holds_exactly_the_pins_that_apply_to_its_python(
    image: Image, sbom: dict[str, Any]
) -> None:
    """What the Dockerfile installed is what the SBOM says: every package in the image but
    pip's own and the project is a pin of the lock (and so of the SBOM) at its version, and
    every pin whose marker holds for the image's Python is installed."""
    result = podman("run", "--rm", "--read-only", image.name, "python", "-c", INSIDE)
    inside = json.loads(result.stdout)
    installed = {
        f"{canonicalize_name(name)}=={version}"
        for name, version in inside["installed"]
        if canonicalize_name(name) not in BASE_PACKAGES | {"chat-service"}
    }
    applicable = {
        key
        for key, (marker, _) in _pins().items()
        if not marker or Requirement(f"x; {marker}").marker.evaluate(inside["markers"])  # type: ignore[union-attr]
    }
    in_sbom = {f"{canonicalize_name(c['name'])}=={c['version']}" for c in sbom["components"]}
    assert installed == applicable
    assert installed <= in_sbom
