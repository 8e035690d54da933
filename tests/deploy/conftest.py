"""The image, built once per run and shared by every container test, and the figures the
run measured about it, printed at the end of the run."""

from __future__ import annotations

import pytest

from .podman import Image, build_image

# Lines for the end of the run: what the image weighs and what building it took.
FIGURES: list[str] = []


@pytest.fixture(scope="session")
def image() -> Image:
    """The repository's Dockerfile built with podman, on the official base images or, where
    no registry answers, on scripts/base-images.sh's stand-ins."""
    built = build_image()
    base = f"LOCAL STAND-INS {built.stand_in}" if built.stand_in else "the official base images"
    FIGURES.append(
        f"image {built.name}: {built.size / 1e6:.0f} MB, {built.layers} layers, on {base}; "
        f"base images ready in {built.base_images_seconds:.1f} s, "
        f"built in {built.build_seconds:.1f} s"
    )
    if built.stand_in:
        FIGURES.append(
            "NOT THE OFFICIAL BASE IMAGES: no registry answered, so the image was built on "
            "stand-ins made from Debian's packages (scripts/base-images.sh)"
        )
    return built


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("container image")
        for line in FIGURES:
            terminalreporter.write_line(line)
