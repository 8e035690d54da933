"""Security scans: bandit over the service's code, and known advisories against its
runtime dependencies.

bandit: no high-severity finding. Medium and low findings are reported but not failed on:
today they are the deliberate `0.0.0.0` default bind (a container must listen beyond
loopback), `/dev/shm` for gunicorn's heartbeat files, and `assert`s that narrow types.

Dependencies: `scripts/audit-dependencies.py` reads PyPI's advisory data for every pin of
the runtime lock, and pip-audit reads OSV's; both run in .github/workflows (weekly, and
before each release), never here: what PyPI publishes tomorrow must not fail a commit that
passed today. Here: the audit reads the whole lock, and the advisory it sets aside as not
applicable stays so.
"""

from __future__ import annotations

import json
import runpy
import subprocess
import sys

from tests.support.service import REPO
from tests.support.tokens import make_es256_keys

AUDIT = REPO / "scripts" / "audit-dependencies.py"
RUNTIME_LOCK = REPO / "requirements" / "runtime.lock"


def test_bandit_finds_no_high_severity_issue_in_the_service() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bandit", "-r", str(REPO / "service"), "-f", "json", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(result.stdout)

    assert report["errors"] == []
    assert report["metrics"]["_totals"]["loc"] > 1000  # it really read the service
    high = [
        f"{r['filename']}:{r['line_number']} {r['test_id']} {r['issue_text']}"
        for r in report["results"]
        if r["issue_severity"] == "HIGH"
    ]
    assert high == []


def test_the_audit_reads_every_pin_of_the_lock() -> None:
    """What the audit (scripts/audit-dependencies.py, run weekly and at each release by
    .github/workflows) would ask PyPI about: every pin of the runtime lock, the service's
    own dependencies among them. Whether PyPI has published newer releases or advisories
    since is the audit's question, not the suite's: its answer changes without a commit,
    and a commit that passed must pass again."""
    pins = runpy.run_path(str(AUDIT))["locked"]()
    names = {name for name, _, _ in pins}
    # The whole lock, with the extras the service asks for (cryptography does the JWT work).
    assert {"fastapi", "gunicorn", "redis", "hiredis", "limits", "cryptography"} <= names
    blocks = [b for b in RUNTIME_LOCK.read_text().split("\n") if b and b[0] not in " #-"]
    assert len(pins) == len(blocks)


# The one advisory set aside: ecdsa's signing timing leak. It holds only while python-jose
# does its EC work through pyca/cryptography and never loads ecdsa.
ECDSA_NEVER_LOADED = """
import asyncio, sys
from jose import jwt
from service.auth import TokenVerifier
from service.config import Settings
private, public = sys.argv[1], sys.argv[2]
token = jwt.encode({"sub": "a", "exp": 2**31}, private, algorithm="ES256")
settings = Settings(jwt_public_key=public, jwt_algorithms=["ES256"])
principal = asyncio.run(TokenVerifier(settings).verify(token))
print(principal.sub, "ecdsa" in sys.modules)
"""


def test_the_ecdsa_advisory_set_aside_cannot_reach_the_service() -> None:
    private, public = make_es256_keys()
    result = subprocess.run(
        [sys.executable, "-c", ECDSA_NEVER_LOADED, private, public],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.stdout.split() == ["a", "False"], result.stderr
