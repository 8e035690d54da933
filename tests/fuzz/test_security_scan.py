"""Static security scan of the service's code with bandit: no high-severity finding.

Medium and low findings are reported by bandit but not failed on: today they are the
deliberate `0.0.0.0` default bind (a container must listen beyond loopback), `/dev/shm`
for gunicorn's heartbeat files, and `assert`s that narrow types for mypy.

(pip-audit is not run here: it needs PyPI's per-version JSON API or OSV, and neither is
reachable from the machines this suite runs on; see the report that added this file.)
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.service import REPO


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
