"""static/ as shipped: the page obeys its Content-Security-Policy, and the vendored libraries
are exactly the pinned npm files. No browser needed."""

from __future__ import annotations

import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STATIC = REPO / "static"


class PageScan(HTMLParser):
    """Collects what the CSP cares about in index.html."""

    def __init__(self) -> None:
        super().__init__()
        self.inline_scripts = 0
        self.style_elements = 0
        self.style_attributes: list[str] = []
        self.handler_attributes: list[str] = []
        self.references: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "script":
            self._in_script = "src" not in attributes
        if tag == "style":
            self.style_elements += 1
        for name, _ in attrs:
            if name == "style":
                self.style_attributes.append(tag)
            if name.startswith("on"):
                self.handler_attributes.append(f"{tag} {name}")
        for name in ("src", "href"):
            if attributes.get(name):
                self.references.append(str(attributes[name]))

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False


def scan_page() -> PageScan:
    scan = PageScan()
    scan.feed((STATIC / "index.html").read_text(encoding="utf-8"))
    return scan


def test_the_page_has_no_inline_script_style_or_handlers() -> None:
    scan = scan_page()

    assert scan.inline_scripts == 0
    assert scan.style_elements == 0
    assert scan.style_attributes == []
    assert scan.handler_attributes == []


def test_everything_the_page_loads_is_a_local_file() -> None:
    local = [ref for ref in scan_page().references if not ref.startswith("#")]

    assert local, "index.html references no assets"
    for ref in local:
        assert re.match(r"^static/[\w./-]+$", ref), f"{ref} is not a relative static/ path"
        assert (REPO / ref).is_file(), f"{ref} is missing"


def test_scripts_import_only_local_modules() -> None:
    for script in STATIC.glob("*.js"):
        source = script.read_text(encoding="utf-8")
        for target in re.findall(r"""^\s*import\b[^'"]*['"]([^'"]+)['"]""", source, re.M):
            assert target.startswith("./"), f"{script.name} imports {target}"
            assert (STATIC / target).resolve().is_file(), f"{script.name}: {target} is missing"
        assert "eval(" not in source and "new Function" not in source, script.name
        # Markup reaches the DOM only as DOMPurify's fragments, never as an HTML string.
        assert not re.search(
            r"\.(inner|outer)HTML\s*=|insertAdjacentHTML|document\.write", source
        ), script.name


def test_vendored_files_match_the_pinned_packages() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "vendor-frontend.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    versions = (STATIC / "vendor" / "VERSIONS.txt").read_text(encoding="utf-8")
    for package in ("marked", "dompurify", "@highlightjs/cdn-assets"):
        assert re.search(rf"^package {re.escape(package)} \S+ licence \S", versions, re.M)
    for licence in ("marked/LICENSE", "dompurify/LICENSE", "highlight/LICENSE"):
        assert (STATIC / "vendor" / licence).is_file()
