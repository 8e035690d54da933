"""Read the service's /metrics (summed over its workers) from a test."""

from __future__ import annotations

import re
import time

import httpx


def metric(url: str, name: str, labels: str = "") -> float:
    """The value of one sample, e.g. `metric(url, "chat_streams_active")`; 0 when absent."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    match = re.search(rf"^{re.escape(name + labels)} ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def wait_for_metric(url: str, name: str, value: float, timeout: float = 15.0) -> float:
    """Poll until the sample equals `value`; return how long that took. The gauge lives in
    other processes, so there is no event to await: a short poll is the honest way."""
    started = time.monotonic()
    deadline = started + timeout
    seen = metric(url, name)
    while seen != value:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} stayed at {seen}, expected {value}")
        time.sleep(0.05)
        seen = metric(url, name)
    return time.monotonic() - started
