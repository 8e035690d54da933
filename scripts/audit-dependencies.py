"""Known vulnerabilities in the locked runtime dependencies, from PyPI's advisory data.

    .venv/bin/python scripts/audit-dependencies.py [--json] [--lock requirements/runtime.lock]

It audits what is locked (every pin of requirements/runtime.lock, the lock the image is
built from, for every platform and Python it covers), not what happens to be installed.

pip-audit asks either OSV or PyPI's per-release endpoint (/pypi/NAME/VERSION/json); on a
build machine that reaches only the package registries, neither answers. PyPI's project
endpoint (/pypi/NAME/json) does, and it carries the advisories (the PyPA advisory
database) that affect the project's latest release. So each pin is:

- checked, when it is the project's latest release: every advisory PyPI lists is a
  finding, unless NOT_APPLICABLE below names it, with the reason (which
  tests/fuzz/test_security_scan.py checks);
- stale, when a newer release would install on the pin's Python: the lock is behind
  (run scripts/lock.sh) and nothing can be said of the old one here: a failure;
- held, when the newer releases all need a newer Python than the pin's (its marker says
  which): it is the last release for that Python, and PyPI's data cannot speak to it.
  Reported by name, never silently; the GitHub workflow's pip-audit covers it.

Exit status 1 on any finding or stale pin, or when PyPI cannot be asked; 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from packaging.requirements import Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

PROJECT = "chat-service"
PYPI = "https://pypi.org/pypi/{name}/json"

# Advisory id (or any alias) -> why it cannot reach the service. Keep each one checked.
NOT_APPLICABLE = {
    "CVE-2024-23342": (
        "ecdsa (Minerva: the timing of P-256 signing leaks the key) comes with python-jose, "
        "which uses pyca/cryptography for EC and RSA keys when it is installed, as "
        "python-jose[cryptography] makes it; ecdsa is never imported, and the service "
        "verifies EC tokens, never signs them"
    ),
}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


LOCK = Path(__file__).resolve().parent.parent / "requirements" / "runtime.lock"
# The oldest Python the lock covers (scripts/lock.sh: --python-version 3.11).
OLDEST_PYTHON = "3.11"


def locked(path: Path = LOCK) -> list[tuple[str, str, str]]:
    """(name, version, marker) for every pin of a `uv pip compile` lock file."""
    pins = []
    for line in path.read_text().splitlines():
        if not line or line[0] in " #-":
            continue  # hashes, comments, options
        requirement = Requirement(line.rstrip(" \\"))
        (specifier,) = requirement.specifier
        pins.append((canonical(requirement.name), specifier.version, str(requirement.marker or "")))
    return pins


def _newest_for(project: dict[str, object], python: str) -> Version | None:
    """The newest non-yanked release with a file that installs on `python`."""
    newest = None
    for number, files in project["releases"].items():  # type: ignore[attr-defined]
        try:
            version = Version(number)
        except InvalidVersion:
            continue
        if version.is_prerelease or not files:
            continue
        for file in files:
            spec = file.get("requires_python") or ""
            try:
                fits = not spec or SpecifierSet(spec).contains(python, prereleases=True)
            except InvalidSpecifier:
                fits = True
            if fits and not file.get("yanked"):
                newest = version if newest is None or version > newest else newest
                break
    return newest


def _python_of(marker: str) -> str:
    """The newest Python a pin's marker stops short of (`python_full_version < '3.12'`
    means 3.11 is what it serves), or the oldest the lock covers."""
    below = re.search(r"python_(?:full_)?version\s*<\s*'([0-9.]+)'", marker)
    if not below:
        return OLDEST_PYTHON
    major, minor = below.group(1).split(".")[:2]
    return f"{major}.{int(minor) - 1}"


def audit(name: str, version: str, marker: str, client: httpx.Client) -> dict[str, object]:
    response = client.get(PYPI.format(name=name))
    response.raise_for_status()
    project = response.json()
    latest = project["info"]["version"]
    result: dict[str, object] = {"name": name, "locked": version, "latest": latest}
    if marker:
        result["marker"] = marker
    if Version(version) == Version(latest):
        result["status"] = "checked"
        result["advisories"] = [
            {
                "id": advisory.get("id"),
                "aliases": advisory.get("aliases", []),
                "fixed_in": advisory.get("fixed_in", []),
                "summary": (advisory.get("summary") or advisory.get("details") or "")[:200],
            }
            for advisory in project.get("vulnerabilities") or []
            if not advisory.get("withdrawn")
        ]
        return result
    python = _python_of(marker)
    newest = _newest_for(project, python)
    result["status"] = "held" if newest == Version(version) else "stale"
    result["python"] = python
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--lock", type=Path, default=LOCK, help="the lock file to audit")
    args = parser.parse_args()

    pins = locked(args.lock)
    try:
        with (
            httpx.Client(timeout=30, follow_redirects=True) as client,
            ThreadPoolExecutor(8) as pool,
        ):
            results = list(pool.map(lambda pin: audit(*pin, client), pins))
    except httpx.HTTPError as exc:
        print(f"audit: could not ask PyPI: {exc}", file=sys.stderr)
        return 1

    set_aside = []
    for r in results:
        kept = []
        for advisory in r.get("advisories", []):  # type: ignore[attr-defined]
            names = {advisory["id"], *advisory["aliases"]}
            reason = next((NOT_APPLICABLE[n] for n in names if n in NOT_APPLICABLE), None)
            if reason is None:
                kept.append(advisory)
            else:
                set_aside.append(f"{r['name']} {r['locked']}: {advisory['id']}: {reason}")
        if r["status"] == "checked":
            r["advisories"] = kept
    findings = [r for r in results if r.get("advisories")]
    stale = [r for r in results if r["status"] == "stale"]
    held = [r for r in results if r["status"] == "held"]
    if args.json:
        print(json.dumps({"results": results, "not_applicable": set_aside}, indent=2))
    else:
        for r in findings:
            for advisory in r["advisories"]:  # type: ignore[attr-defined]
                print(
                    f"VULNERABLE {r['name']} {r['locked']}: {advisory['id']} "
                    f"{' '.join(advisory['aliases'])} fixed in {advisory['fixed_in']}"
                )
        for line in set_aside:
            print(f"not applicable: {line}")
        for r in stale:
            print(
                f"STALE      {r['name']} {r['locked']} (latest {r['latest']}): run scripts/lock.sh"
            )
        for r in held:
            print(
                f"held       {r['name']} {r['locked']}: the last release for Python "
                f"{r['python']} (latest {r['latest']} needs newer); PyPI's data covers only "
                "the latest"
            )
        checked = len(results) - len(stale) - len(held)
        print(
            f"audit: {len(results)} locked pins; {checked} checked, {len(findings)} with known "
            f"vulnerabilities; {len(stale)} stale; {len(held)} held back by Python"
        )
    return 1 if findings or stale else 0


if __name__ == "__main__":
    sys.exit(main())
