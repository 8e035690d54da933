#!/usr/bin/env bash
# The base images that the Dockerfile and deploy/compose.yaml start from, in podman's
# local storage, so that `podman build --pull=never` and podman-compose work unchanged on
# a machine that cannot reach an image registry.
#
#   bash scripts/base-images.sh       # idempotent; says what each name is
#
# For each image the official one is used when podman has it or can pull it now. Only
# when it cannot be had does the script make a LOCAL STAND-IN from Debian's packages:
# bookworm's root filesystem made with mmdebstrap, imported, and the targets of
# scripts/stand-ins/Containerfile built on it and tagged under the official names. It
# says so loudly, and every stand-in (and every image built on one) carries the label
# `chat-service.stand-in`.
#
# Stand-ins are keyed by a hash of this script, scripts/stand-ins/ and the CA bundle baked
# into the build stand-in. A stand-in of the current key in podman's storage is kept;
# otherwise it is loaded from .tools/base-images/KEY/ (`podman save` archives, gitignored),
# and only made anew (one to two minutes) when neither has it.
#
# Needs podman, and to make stand-ins mmdebstrap and root (scripts/test.sh installs both).
# DEBIAN_MIRROR overrides the Debian mirror (default http://deb.debian.org/debian).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The project's podman settings (runtime, ulimits, network backend) unless the caller
# chose others.
export CONTAINERS_CONF="${CONTAINERS_CONF:-$root/tests/deploy/containers.conf}"

stand_ins="$root/scripts/stand-ins"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
label="chat-service.stand-in"

# Containerfile target -> the official name it stands in for. Keep in step with the
# Dockerfile's FROM lines and compose.yaml's images (tests/deploy/test_base_images.py).
targets=(python-slim python-build redis nginx)
declare -A official=(
    [python-slim]=docker.io/library/python:3.11-slim-bookworm
    [python-build]=docker.io/library/python:3.11-bookworm
    [redis]=docker.io/library/redis:7.4-alpine
    [nginx]=docker.io/nginxinc/nginx-unprivileged:1.27-bookworm
)

say() { echo "base-images: $*" >&2; }

if ! command -v podman >/dev/null 2>&1; then
    say "podman is needed: apt-get install podman runc netavark aardvark-dns mmdebstrap"
    exit 1
fi

# The CA bundle pip trusts here (PIP_CERT, else pip's `cert` setting, else Debian's), baked
# into the build stand-in so its `pip wheel` reaches PyPI as pip on this machine does.
ca_bundle="${PIP_CERT:-}"
if [[ -z "$ca_bundle" ]]; then
    ca_bundle="$(python3 -m pip config get global.cert 2>/dev/null || true)"
fi
if [[ -z "$ca_bundle" || ! -f "$ca_bundle" ]]; then
    ca_bundle=/etc/ssl/certs/ca-certificates.crt
fi

key="$(
    cd "$root"
    cat scripts/base-images.sh scripts/stand-ins/* "$ca_bundle" 2>/dev/null | sha256sum | cut -c1-16
)"

# The stand-in label of a local image; empty for an official image; fails when absent.
stand_in_key() {
    podman image inspect --format "{{index .Config.Labels \"$label\"}}" "$1" 2>/dev/null
}

wanted=()
for target in "${targets[@]}"; do
    name="${official[$target]}"
    if have="$(stand_in_key "$name")" && [[ -z "$have" || "$have" == "<no value>" ]]; then
        say "$name: official image"
        continue
    fi
    # Missing or a stand-in: the real one, when a registry answers, takes its place.
    if timeout 120 podman pull --quiet "$name" >/dev/null 2>&1; then
        say "$name: official image, pulled"
        continue
    fi
    if [[ "${have:-}" == "$key" ]]; then
        say "$name: LOCAL STAND-IN $key (no registry answered)"
        continue
    fi
    wanted+=("$target")
done
((${#wanted[@]})) || exit 0

cat >&2 <<EOF
base-images: ======================================================================
base-images: NO REGISTRY ANSWERED: using LOCAL STAND-INS for ${wanted[*]}
base-images: from Debian bookworm's packages (scripts/stand-ins/Containerfile).
base-images: They are NOT the official images: Debian's Python 3.11, Redis 7.0 and
base-images: nginx 1.22 stand in for the pinned ones; images built on them carry the
base-images: label $label. Never publish an image built here.
base-images: ======================================================================
EOF

cache="$root/.tools/base-images/$key"
make=()
for target in "${wanted[@]}"; do
    archive="$cache/$target.tar"
    if [[ -f "$archive" ]] && podman load --quiet --input "$archive" >/dev/null &&
        [[ "$(stand_in_key "${official[$target]}")" == "$key" ]]; then
        say "${official[$target]}: LOCAL STAND-IN $key, loaded from ${archive#"$root"/}"
    else
        make+=("$target")
    fi
done
((${#make[@]})) || exit 0

if [[ $(id -u) -ne 0 ]]; then
    say "making stand-ins needs root (mmdebstrap and podman import); run this as root"
    exit 1
fi
if ! command -v mmdebstrap >/dev/null 2>&1; then
    say "mmdebstrap is needed to make stand-ins: apt-get install mmdebstrap"
    exit 1
fi

started=$SECONDS
scratch="$(mktemp -d)"
log="$scratch/log"
base="localhost/chat-service/stand-in-base:$key"
cleanup() {
    rm -rf "$scratch"
    podman rmi --force "$base" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# Debian bookworm, the essential packages, apt and passwd, with updates; documentation,
# manuals and translations left out now and in every package installed on it later, as
# the official images' Debian leaves them out. Merged /usr without the usrmerge package,
# and /etc/mtab as Debian's images have it (else podman adds it to every container, and
# `podman diff` shows a write the service never made).
say "mmdebstrap bookworm from $mirror"
# shellcheck disable=SC2016 # mmdebstrap expands $1 (the new root) itself
mtab_hook='ln -sf ../proc/self/mounts "$1/etc/mtab"'
mmdebstrap --quiet --variant=minbase --include=passwd \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --customize-hook="$mtab_hook" \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    bookworm "$scratch/rootfs.tar" \
    "deb $mirror bookworm main" \
    "deb $mirror bookworm-updates main" \
    "deb ${mirror%/debian}/debian-security bookworm-security main" >"$log" 2>&1 ||
    { cat "$log" >&2; say "mmdebstrap failed"; exit 1; }
podman import --quiet "$scratch/rootfs.tar" "$base" >/dev/null
rm -f "$scratch/rootfs.tar"

# The build context: the stand-ins' files and the CA bundle.
mkdir "$scratch/context"
cp "$stand_ins"/* "$scratch/context/"
cp "$ca_bundle" "$scratch/context/ca-certificates.crt"

mkdir -p "$cache"
for target in "${make[@]}"; do
    name="${official[$target]}"
    say "building $name (target $target)"
    # Host networking for apt-get; Docker's format, which keeps the images' settings
    # exactly as the official ones state them.
    podman build --pull=never --network=host --format=docker \
        --file "$scratch/context/Containerfile" --target "$target" \
        --build-arg "BASE=$base" --label "$label=$key" \
        --tag "$name" "$scratch/context" >"$log" 2>&1 ||
        { cat "$log" >&2; say "building $name failed"; exit 1; }
    podman save --quiet --output "$cache/$target.tar.partial" "$name"
    mv "$cache/$target.tar.partial" "$cache/$target.tar"
    say "$name: LOCAL STAND-IN $key, made"
done

# Stand-ins of older keys are of no further use: their archives, and their images now
# that the names point at the new ones (unless an image built on one still holds it).
find "$root/.tools/base-images" -mindepth 1 -maxdepth 1 -type d ! -name "$key" \
    -exec rm -rf {} +
podman images --quiet --filter dangling=true --filter "label=$label" |
    xargs --no-run-if-empty podman rmi >/dev/null 2>&1 || true
say "stand-ins made in $((SECONDS - started)) s, cached in ${cache#"$root"/}"
