"""Run a real process with its wall clock off by some seconds (libfaketime, from Debian's
`faketime` package), as a pod with a drifting clock would be. Every clock moves by the
same constant offset, so intervals, timers and timeouts behave; only the wall-clock time
(`time.time()` and friends) is wrong, which is what is under test. (With
FAKETIME_DONT_FAKE_MONOTONIC=1, libfaketime 0.9.10's clock_nanosleep wrapper answers
Python's `time.sleep` with EINVAL, which crashed gunicorn's arbiter now and then.)"""

from __future__ import annotations

import glob


def libfaketime() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    if not found:
        raise RuntimeError("libfaketime is missing: scripts/test.sh installs Debian's faketime")
    return found[0]


def clock_offset_env(seconds: int) -> dict[str, str]:
    return {
        "LD_PRELOAD": libfaketime(),
        "FAKETIME": f"{seconds:+d}s",
        "FAKETIME_NO_CACHE": "1",
    }
