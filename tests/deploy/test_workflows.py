""".github/workflows: actionlint's verdict, GitHub's workflow schema, and the CI habits the
project keeps (least privilege, SHA pins, no persisted credentials, time limits,
cancellation, one gate job)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .tools import REPO, TOOLS, find_tool, run

WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
ACTIONLINT_PACKAGE = TOOLS / "actionlint" / "package"
ACTIONLINT_RUNNER = Path(__file__).parent / "actionlint.cjs"
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")


def actionlint(*files: Path) -> tuple[int, str]:
    if not (ACTIONLINT_PACKAGE / "node.cjs").is_file():
        pytest.fail(
            "actionlint is not in .tools/: run `bash scripts/install-deploy-tools.sh`",
            pytrace=False,
        )
    result = run(
        [find_tool("node"), str(ACTIONLINT_RUNNER), str(ACTIONLINT_PACKAGE), *map(str, files)]
    )
    return result.returncode, result.stdout + result.stderr


def load(path: Path) -> dict[str, Any]:
    # YAML 1.1 reads the key `on` as True; workflows mean the string.
    data: dict[Any, Any] = yaml.safe_load(path.read_text())
    if True in data:
        data["on"] = data.pop(True)
    return data


def test_there_are_ci_and_release_workflows() -> None:
    assert {path.name for path in WORKFLOWS} >= {"ci.yml", "release.yml"}


def test_actionlint_passes_the_workflows() -> None:
    code, output = actionlint(*WORKFLOWS)
    assert code == 0, output


def test_actionlint_is_live(tmp_path: Path) -> None:
    """A workflow with known faults fails, so the pass above is actionlint's real verdict."""
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - run: echo ${{ matrix.missing }}\n      - uses: actions/checkout@v4\n"
        "        with: {persist-credentials: maybe}\n    timeout-minutes: soon\n"
    )
    code, output = actionlint(bad)
    assert code == 1
    assert 'property "missing" is not defined' in output
    assert "timeout-minutes" in output or "float number" in output


@pytest.mark.parametrize(
    "schema", ["vendor.github-workflows", "custom.github-workflows-require-timeout"]
)
def test_workflows_match_the_schema(schema: str) -> None:
    result = run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, *map(str, WORKFLOWS)]
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_least_privilege_pins_and_limits(path: Path) -> None:
    workflow = load(path)
    assert workflow["permissions"] == {}, "no default token permissions"
    assert workflow["concurrency"]["cancel-in-progress"] is True
    for name, job in workflow["jobs"].items():
        assert "permissions" in job, f"{name}: says which permissions it needs"
        assert isinstance(job["timeout-minutes"], int), f"{name}: timeout-minutes"
        for step in job.get("steps", []):
            uses = step.get("uses")
            if uses is None:
                continue
            assert PINNED.match(uses), f"{name}: {uses} is not pinned to a commit SHA"
            if uses.startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False
    # Every pin carries the version it stands for, for humans and Dependabot.
    for line in path.read_text().splitlines():
        if "uses:" in line and "@" in line:
            assert re.search(r"@[0-9a-f]{40} # v\d+(\.\d+)*$", line), line.strip()


def test_ci_runs_the_readme_test_command_and_gates_on_every_job() -> None:
    ci = load(REPO / ".github" / "workflows" / "ci.yml")
    runs = [step.get("run", "") for job in ci["jobs"].values() for step in job.get("steps", [])]
    assert any(run.strip() == "./scripts/test.sh" for run in runs)
    commands = "\n".join(runs)
    for check in ("ruff check", "hadolint", "helm lint --strict", "kubernetes-validate"):
        assert check in commands
    gates = [name for name, job in ci["jobs"].items() if job.get("if") == "always()"]
    assert len(gates) == 1
    others = set(ci["jobs"]) - set(gates)
    assert set(ci["jobs"][gates[0]]["needs"]) == others


def test_release_pushes_the_image_to_ghcr_on_version_tags() -> None:
    release = load(REPO / ".github" / "workflows" / "release.yml")
    assert release["on"]["push"]["tags"] == ["v*.*.*"]
    (job,) = release["jobs"].values()
    assert job["permissions"] == {"contents": "read", "packages": "write"}
    build = next(
        s for s in job["steps"] if s.get("uses", "").startswith("docker/build-push-action@")
    )
    assert build["with"]["push"] is True
    login = next(s for s in job["steps"] if s.get("uses", "").startswith("docker/login-action@"))
    assert login["with"]["registry"] == "ghcr.io"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_a_step_that_pipes_into_tee_fails_when_its_command_does(path: Path) -> None:
    """GitHub's default shell is `bash -e` without pipefail: `audit | tee audit.txt` took
    tee's success for the step's, and the weekly audit passed whatever it found. A step
    that keeps a command's output with tee names bash, which runs with pipefail."""
    for name, job in load(path)["jobs"].items():
        default = job.get("defaults", {}).get("run", {}).get("shell")
        for step in job.get("steps", []):
            if re.search(r"\|\s*tee\b", step.get("run", "")):
                shell = step.get("shell", default)
                assert shell == "bash", f"{name}: {step.get('name')}: shell {shell!r}"
