"""The Dockerfile: hadolint's verdict, and what the contract asks of the image, read from the
file itself. test_container.py builds the image with podman and runs it; CI's `image` job
also builds it with Docker's BuildKit."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .tools import REPO, find_tool, run

DOCKERFILE = REPO / "Dockerfile"


@dataclass
class Instruction:
    line: int  # 1-based line of the instruction's first line
    keyword: str
    args: str
    comment_above: bool


def parse(text: str) -> list[Instruction]:
    """Instructions with their continuation lines joined, and whether a comment sits
    directly above each one."""
    instructions: list[Instruction] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            index += 1
            continue
        start = index
        parts = [stripped]
        while parts[-1].endswith("\\") and index + 1 < len(lines):
            parts[-1] = parts[-1][:-1].rstrip()
            index += 1
            parts.append(lines[index].strip())
        keyword, _, args = " ".join(p for p in parts if p).partition(" ")
        above = lines[start - 1].strip() if start > 0 else ""
        instructions.append(Instruction(start + 1, keyword.upper(), args, above.startswith("#")))
        index += 1
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last_from = max(i for i, ins in enumerate(instructions) if ins.keyword == "FROM")
    return instructions[last_from:]


def test_hadolint_passes_the_dockerfile() -> None:
    result = run([find_tool("hadolint"), "--failure-threshold", "style", str(DOCKERFILE)])
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_hadolint_is_live(tmp_path: Path) -> None:
    """A Dockerfile with known faults fails, so the pass above is hadolint's real verdict."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install fastapi\nCMD chat-service serve\n")
    result = run([find_tool("hadolint"), str(bad)])
    assert result.returncode != 0
    for rule in ("DL3006", "DL3013", "DL3025"):
        assert rule in result.stdout


def test_command_is_chat_service_serve_and_that_script_exists() -> None:
    """The image runs `chat-service serve` in exec form (gunicorn as PID 1 gets SIGTERM),
    and pyproject.toml installs a `chat-service` console script for it to find."""
    cmds = [ins for ins in final_stage(parse(DOCKERFILE.read_text())) if ins.keyword == "CMD"]
    assert len(cmds) == 1
    assert json.loads(cmds[0].args) == ["chat-service", "serve"]
    assert not [i for i in parse(DOCKERFILE.read_text()) if i.keyword == "ENTRYPOINT"]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    target = project["scripts"]["chat-service"]
    module, _, function = target.partition(":")
    assert function, f"console script {target!r} names no function"
    module_file = REPO / (module.replace(".", "/") + ".py")
    assert module_file.is_file(), f"{target} points at a missing module"
    assert re.search(rf"^def {function}\(", module_file.read_text(), re.M)


def test_runtime_stage_is_slim_non_root_and_self_checking() -> None:
    instructions = parse(DOCKERFILE.read_text())
    stages = [ins for ins in instructions if ins.keyword == "FROM"]
    assert len(stages) >= 2, "multi-stage: wheels are built apart from the runtime"
    runtime = final_stage(instructions)
    assert "slim" in runtime[0].args
    # No compilers or package installs in the runtime stage.
    for ins in runtime:
        if ins.keyword == "RUN":
            assert not re.search(r"apt-get|apk |gcc|build-essential", ins.args), ins.args
    users = [ins.args for ins in runtime if ins.keyword == "USER"]
    assert users and re.fullmatch(r"[1-9][0-9]*(:[1-9][0-9]*)?", users[-1]), users
    health = " ".join(ins.args for ins in runtime if ins.keyword == "HEALTHCHECK")
    assert "/healthz" in health and "CMD" in health and "curl" not in health
    exposed = " ".join(ins.args for ins in runtime if ins.keyword == "EXPOSE").split()
    assert {"8000", "9090"} <= set(exposed)
    env = " ".join(ins.args for ins in runtime if ins.keyword == "ENV")
    assert "HOME=/tmp" in env and "TMPDIR=/tmp" in env
    labels = " ".join(ins.args for ins in runtime if ins.keyword == "LABEL")
    for key in ("title", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_dependencies_install_before_the_code() -> None:
    """The lock file alone is copied before the dependency wheels are built, so a code
    change rebuilds neither them nor the runtime's dependency layer."""
    instructions = parse(DOCKERFILE.read_text())
    copies = [(i, ins.args) for i, ins in enumerate(instructions) if ins.keyword == "COPY"]
    first_code = min(i for i, args in copies if "service" in args.split())
    deps_wheels = min(i for i, ins in enumerate(instructions) if "wheels/deps" in ins.args)
    assert copies[0][1].split()[0] == "requirements/runtime.lock"
    assert deps_wheels < first_code
    runtime = final_stage(instructions)
    installs = [ins.args for ins in runtime if ins.keyword == "RUN" and "pip install" in ins.args]
    assert len(installs) == 2 and "wheels/deps" in installs[0] and "wheels/app" in installs[1]


def test_every_instruction_has_a_comment_above() -> None:
    uncommented = [
        f"line {ins.line}: {ins.keyword}"
        for ins in parse(DOCKERFILE.read_text())
        if not ins.comment_above
    ]
    assert not uncommented


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    """The context is an allow-list: secrets, .git and virtualenvs never reach a builder,
    and everything the Dockerfile copies is let through."""
    rules = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    copied = {
        ins.args.split()[0].rstrip("/")
        for ins in parse(DOCKERFILE.read_text())
        if ins.keyword == "COPY" and not ins.args.startswith("--from")
    }
    assert copied <= allowed, f"copied but ignored: {copied - allowed}"
    assert not allowed & {".env", "deploy", ".git", ".venv", "tests"}
