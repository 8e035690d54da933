"""Read the service's /metrics (summed over its workers) from a test, strictly.

A scrape that fails, or a sample that is not there, is an error, never 0: a renamed metric
or a broken /metrics must not read as "no errors" or "back to zero". The service registers
its known label sets at start (0 until counted), so a count that is legitimately nothing is
still a sample.
"""

from __future__ import annotations

import re
import time

import httpx

# A name, its labels (whose quoted values may hold braces: route="/chat/{message}"), a value.
SAMPLE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\})?) '
    r"([0-9.eE+-]+|NaN|[+-]Inf)$",
    re.M,
)


def scrape(url: str) -> dict[str, float]:
    """Every sample of one scrape, by name with labels as the exposition writes them."""
    response = httpx.get(f"{url}/metrics", timeout=10)
    response.raise_for_status()
    samples = {name: float(value) for name, value in SAMPLE.findall(response.text)}
    if "chat_build_info" not in "".join(samples):
        raise AssertionError("/metrics answered without the service's own metrics")
    return samples


def metric(url: str, name: str, labels: str = "") -> float:
    """The value of one sample, e.g. `metric(url, "chat_streams_active")`."""
    samples = scrape(url)
    key = name + labels
    if key not in samples:
        known = sorted(s for s in samples if s.startswith(name.split("{")[0]))
        raise AssertionError(f"no sample {key} in /metrics; samples of that name: {known}")
    return samples[key]


def total(url: str, name: str) -> float:
    """The sum over every label set of a metric, which must have at least one."""
    samples = scrape(url)
    values = [v for k, v in samples.items() if k == name or k.startswith(name + "{")]
    if not values:
        raise AssertionError(f"no sample of {name} in /metrics")
    return sum(values)


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
