"""scripts/base-images.sh: it provides every base image the Dockerfile and compose.yaml
start from, its stand-ins are the Containerfile's targets and explain themselves, and an
image built on a stand-in says so."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from .podman import REPO, STAND_IN_LABEL, Image, inspect
from .test_dockerfile import parse

# The first test to ask for the image pays for the base images and the build: minutes on
# a new machine, where making the stand-ins alone takes one or two.
pytestmark = pytest.mark.timeout(900)

SCRIPT = REPO / "scripts" / "base-images.sh"
CONTAINERFILE = REPO / "scripts" / "stand-ins" / "Containerfile"


def _provided() -> dict[str, str]:
    """The script's table: Containerfile target -> the official name it stands in for."""
    return dict(re.findall(r"^\s*\[([\w-]+)\]=(\S+)$", SCRIPT.read_text(), re.M))


def _qualified(name: str) -> str:
    """A Docker Hub short name as podman stores it after a pull."""
    if name.count("/") == 0:
        return f"docker.io/library/{name}"
    if "." not in name.split("/")[0]:
        return f"docker.io/{name}"
    return name


def _dockerfile_bases(path: Path) -> set[str]:
    """The FROM images of a Dockerfile, with ARG defaults filled in and stages left out."""
    instructions = parse(path.read_text())
    defaults = dict(
        re.findall(r"(\w+)=(\S+)", " ".join(i.args for i in instructions if i.keyword == "ARG"))
    )
    stages: set[str] = set()
    bases = set()
    for ins in instructions:
        if ins.keyword == "FROM":
            words = ins.args.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m[1]], words[0])
            if image not in stages:
                bases.add(_qualified(image))
            if len(words) == 3 and words[1].upper() == "AS":
                stages.add(words[2])
    return bases


def test_every_base_image_of_the_dockerfile_and_compose_is_provided() -> None:
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    pulled = {
        _qualified(service["image"])
        for service in compose["services"].values()
        if "build" not in service
    }
    needed = _dockerfile_bases(REPO / "Dockerfile") | pulled
    assert set(_provided().values()) == needed


def test_each_stand_in_is_a_target_of_the_containerfile_that_explains_itself() -> None:
    instructions = parse(CONTAINERFILE.read_text())
    targets = {
        ins.args.split()[2] for ins in instructions if ins.keyword == "FROM" and " AS " in ins.args
    }
    assert set(_provided()) == targets
    uncommented = [f"line {i.line}: {i.keyword}" for i in instructions if not i.comment_above]
    assert not uncommented


def test_an_image_built_on_a_stand_in_carries_its_label(image: Image) -> None:
    """The runtime base's stand-in label (empty on the official image) reaches the image, so
    an image built here on Debian's packages can always be told from a release."""
    base = inspect(_provided()["python-slim"], "image")
    assert image.stand_in == (base["Config"].get("Labels") or {}).get(STAND_IN_LABEL, "")
