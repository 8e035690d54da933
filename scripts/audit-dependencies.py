"""Known vulnerabilities in the service's runtime dependencies, from PyPI's advisory data.

    .venv/bin/python scripts/audit-dependencies.py [--json]

pip-audit asks either OSV or PyPI's per-release endpoint (/pypi/NAME/VERSION/json); on a
build machine that reaches only the package registries, neither answers. PyPI's project
endpoint (/pypi/NAME/json) does, and it carries the advisories (the PyPA advisory
database) that affect the project's latest release. So each installed runtime dependency
(the closure of chat-service's own requirements, extras left out) is checked like this:

- at its latest release: every advisory PyPI lists is a finding, unless NOT_APPLICABLE
  below names it, with the reason (which tests/fuzz/test_security_scan.py checks);
- behind its latest release: listed as unchecked, with the newer version.

Exit status 1 on any finding, or when PyPI cannot be asked; 0 otherwise. The GitHub
workflow runs pip-audit itself, which can reach its services there.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata

import httpx
from packaging.requirements import Requirement
from packaging.version import Version

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


def runtime_closure(root: str = PROJECT) -> dict[str, str]:
    """Installed name -> version for `root`'s requirements, recursively, with the extras
    they ask for (python-jose[cryptography] brings cryptography), but not `root`'s own
    extras (dev tools)."""
    found: dict[str, str] = {}
    pending: list[tuple[str, frozenset[str]]] = [(root, frozenset())]
    while pending:
        name, extras = pending.pop()
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            marker = requirement.marker
            if marker is not None and not any(
                marker.evaluate({"extra": extra}) for extra in {"", *extras}
            ):
                continue  # another extra's requirement, or not for this platform
            key = canonical(requirement.name)
            if key in found:
                continue
            try:
                found[key] = metadata.version(requirement.name)
            except metadata.PackageNotFoundError:
                continue  # optional and not installed
            pending.append((requirement.name, frozenset(requirement.extras)))
    return found


def audit(name: str, installed: str, client: httpx.Client) -> dict[str, object]:
    response = client.get(PYPI.format(name=name))
    response.raise_for_status()
    project = response.json()
    latest = project["info"]["version"]
    result: dict[str, object] = {"name": name, "installed": installed, "latest": latest}
    if Version(installed) != Version(latest):
        result["checked"] = False
        return result
    result["checked"] = True
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    closure = runtime_closure()
    try:
        with (
            httpx.Client(timeout=30, follow_redirects=True) as client,
            ThreadPoolExecutor(8) as pool,
        ):
            results = list(pool.map(lambda item: audit(*item, client), sorted(closure.items())))
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
                set_aside.append(f"{r['name']} {r['installed']}: {advisory['id']}: {reason}")
        if r["checked"]:
            r["advisories"] = kept
    findings = [r for r in results if r.get("advisories")]
    unchecked = [r for r in results if not r["checked"]]
    if args.json:
        print(json.dumps({"results": results, "not_applicable": set_aside}, indent=2))
    else:
        for r in findings:
            for advisory in r["advisories"]:  # type: ignore[attr-defined]
                print(
                    f"VULNERABLE {r['name']} {r['installed']}: {advisory['id']} "
                    f"{' '.join(advisory['aliases'])} fixed in {advisory['fixed_in']}"
                )
        for line in set_aside:
            print(f"not applicable: {line}")
        for r in unchecked:
            print(f"unchecked  {r['name']} {r['installed']} (latest {r['latest']})")
        checked = len(results) - len(unchecked)
        print(
            f"audit: {len(results)} runtime dependencies; {checked} at their latest release "
            f"checked, {len(findings)} with known vulnerabilities; {len(unchecked)} unchecked"
        )
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
