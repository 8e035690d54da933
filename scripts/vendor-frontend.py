#!/usr/bin/env python3
"""Copy the page's front-end libraries from npm packages into static/vendor/.

The chat page is served offline under a strict Content-Security-Policy (`script-src 'self'`),
so the libraries it uses live in the repository, byte for byte as their npm packages ship them,
with their licence files beside them. `package.json` pins the versions and `package-lock.json`
their integrity; this script installs exactly those (`npm ci`) and copies the few files the page
loads, then writes static/vendor/VERSIONS.txt: each package's version, licence and integrity,
and the sha256 of every copied file with the package path it came from.

    python3 scripts/vendor-frontend.py            # npm ci, copy, write VERSIONS.txt
    python3 scripts/vendor-frontend.py --no-install   # copy from an existing node_modules/
    python3 scripts/vendor-frontend.py --check    # no network: the files match VERSIONS.txt
                                                  # and VERSIONS.txt matches package.json

To upgrade a library: change its version in package.json, run `npm install --ignore-scripts`
(which updates package-lock.json), run this script, and commit package.json,
package-lock.json and static/vendor/ together.

Files are renamed where a server could send the wrong type: DOMPurify's `.mjs` becomes `.js`,
because browsers refuse a module script whose MIME type is not JavaScript and Python's
`mimetypes` (which Starlette's StaticFiles uses) knows `.mjs` only from the system's
/etc/mime.types, which slim images lack.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = ROOT / "node_modules"
VENDOR = ROOT / "static" / "vendor"
VERSIONS = VENDOR / "VERSIONS.txt"


@dataclass(frozen=True)
class Package:
    """An npm package, the files the page loads from it, and its licence files."""

    name: str
    folder: str  # under static/vendor/
    files: dict[str, str]  # path in the package -> file name in the folder
    licences: tuple[str, ...] = ("LICENSE",)


PACKAGES = (
    Package(
        name="marked",
        folder="marked",
        files={"lib/marked.esm.js": "marked.esm.js"},
    ),
    Package(
        name="dompurify",
        folder="dompurify",
        files={"dist/purify.es.mjs": "purify.es.js"},
        # Dual-licensed; both texts ship so that either can be chosen.
        licences=("LICENSE", "LICENSE-MPL"),
    ),
    Package(
        name="oauth4webapi",
        folder="oauth4webapi",
        # OAuth 2 / OpenID Connect for the browser (the page's sign-in), one ES module.
        files={"build/index.js": "oauth4webapi.js"},
        licences=("LICENSE.md",),
    ),
    Package(
        name="@highlightjs/cdn-assets",
        folder="highlight",
        # The ES-module build of highlight.js with its ~40 common languages registered.
        files={
            "es/highlight.min.js": "highlight.min.js",
            "styles/github.min.css": "github.min.css",
            "styles/github-dark.min.css": "github-dark.min.css",
        },
    ),
)

HEADER = """\
# Front-end libraries served from static/vendor/ (the page loads nothing from other origins).
# Written by scripts/vendor-frontend.py from the npm packages pinned in package.json and
# package-lock.json; do not edit by hand. Re-vendor with: python3 scripts/vendor-frontend.py
# Verify (no network) with:        python3 scripts/vendor-frontend.py --check
"""

PACKAGE_LINE = re.compile(r"^package (?P<name>\S+) (?P<version>\S+) licence (?P<licence>.+)$")
FILE_LINE = re.compile(
    r"^  file (?P<path>\S+) sha256 (?P<sha256>[0-9a-f]{64}) from (?P<source>\S+)$"
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pinned_versions() -> dict[str, str]:
    manifest = json.loads((ROOT / "package.json").read_text(encoding="utf-8"))
    return dict(manifest["devDependencies"])


def lock_integrity(name: str) -> str:
    lock = json.loads((ROOT / "package-lock.json").read_text(encoding="utf-8"))
    return str(lock["packages"][f"node_modules/{name}"]["integrity"])


def install() -> None:
    # --ignore-scripts: nothing from a package runs here; we only copy files out of them.
    subprocess.run(
        ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=ROOT, check=True
    )


def vendor() -> str:
    """Copy every package's files into a fresh static/vendor/ and return VERSIONS.txt's text."""
    pins = pinned_versions()
    if VENDOR.exists():
        shutil.rmtree(VENDOR)
    lines = [HEADER]
    for package in PACKAGES:
        source = NODE_MODULES / package.name
        meta = json.loads((source / "package.json").read_text(encoding="utf-8"))
        if meta["version"] != pins[package.name]:
            raise SystemExit(
                f"node_modules has {package.name} {meta['version']} but package.json pins "
                f"{pins[package.name]}: run without --no-install"
            )
        target = VENDOR / package.folder
        target.mkdir(parents=True)
        lines.append(f"package {package.name} {meta['version']} licence {meta['license']}")
        lines.append(f"  integrity {lock_integrity(package.name)}")
        copies = {**package.files, **{name: name for name in package.licences}}
        for inner, dest_name in copies.items():
            dest = target / dest_name
            shutil.copyfile(source / inner, dest)
            rel = dest.relative_to(VENDOR).as_posix()
            lines.append(f"  file {rel} sha256 {sha256(dest)} from {package.name}/{inner}")
        lines.append("")
    return "\n".join(lines)


def check() -> list[str]:
    """Problems with static/vendor/ against VERSIONS.txt and package.json (empty when fine)."""
    if not VERSIONS.exists():
        return [f"{VERSIONS.relative_to(ROOT)} is missing"]
    problems: list[str] = []
    pins = pinned_versions()
    seen_packages: set[str] = set()
    listed_files: set[str] = set()
    for line in VERSIONS.read_text(encoding="utf-8").splitlines():
        if match := PACKAGE_LINE.match(line):
            name, version = match["name"], match["version"]
            seen_packages.add(name)
            if pins.get(name) != version:
                problems.append(
                    f"{name}: VERSIONS.txt has {version}, package.json {pins.get(name)}"
                )
        elif match := FILE_LINE.match(line):
            listed_files.add(match["path"])
            path = VENDOR / match["path"]
            if not path.is_file():
                problems.append(f"{match['path']}: listed but missing")
            elif sha256(path) != match["sha256"]:
                problems.append(f"{match['path']}: contents differ from the vendored package file")
    for name in sorted(set(pins) - seen_packages):
        problems.append(f"{name}: pinned in package.json but not vendored")
    on_disk = {
        p.relative_to(VENDOR).as_posix() for p in VENDOR.rglob("*") if p.is_file() and p != VERSIONS
    }
    for extra in sorted(on_disk - listed_files):
        problems.append(f"{extra}: in static/vendor/ but not in VERSIONS.txt")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", action="store_true", help="verify only; no network, no writes")
    group.add_argument("--no-install", action="store_true", help="use node_modules/ as it is")
    args = parser.parse_args(argv)

    if args.check:
        problems = check()
        for problem in problems:
            print(f"vendor-frontend: {problem}", file=sys.stderr)
        return 1 if problems else 0

    if not args.no_install:
        install()
    VERSIONS.parent.mkdir(parents=True, exist_ok=True)
    text = vendor()
    VERSIONS.write_text(text, encoding="utf-8")
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
