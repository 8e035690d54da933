#!/usr/bin/env bash
# Regenerate the lock files from pyproject.toml, with every hash:
#
#   requirements/runtime.lock   what the service needs; the Dockerfile installs it, and the
#                               dependency audit reads it
#   requirements/dev.lock       that plus the dev extra; scripts/test.sh installs it
#   requirements/litellm.lock   the LiteLLM proxy, a peer of the tests, in a venv of its own
#
# Universal (every platform the image or a laptop may have), for Python 3.11 and newer.
# Run it after changing dependencies in pyproject.toml, then run ./scripts/test.sh. Pins
# already in the locks are kept; `scripts/lock.sh --upgrade` takes the newest releases
# (what the dependency audit asks for when it finds a stale or vulnerable pin).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ -x .venv/bin/uv ]] || .venv/bin/python -m pip install -q uv
compile() {
    .venv/bin/uv pip compile pyproject.toml --universal --python-version 3.11 \
        --generate-hashes --quiet "$@"
}
compile "$@" --output-file requirements/runtime.lock
compile "$@" --extra dev --output-file requirements/dev.lock
.venv/bin/uv pip compile requirements/litellm.in --python-version 3.11 --generate-hashes \
    --quiet "$@" --output-file requirements/litellm.lock
