#!/usr/bin/env bash
# Prints the path of a Chromium to run headless, installing Debian's package if need be.
#   bash scripts/chromium.sh        # e.g. /usr/bin/chromium
# The dashboard's browser test (actors/tests/dashboard_browser.rs) loads the page in
# a real browser. A `chromium` on PATH is used as it is; otherwise Debian's package
# `chromium` is installed with apt-get (as root, as `make test` runs here), after an
# `apt-get update` if the first try fails (a fresh machine has no package lists).
# `make test` runs this first, so a fresh clone needs nothing by hand.
set -euo pipefail

# A browser that runs: print it and stop.
try() {
    local bin
    bin="$(command -v "$1" 2>/dev/null)" || return 1
    [[ -x "$bin" ]] || return 1
    "$bin" --version >/dev/null 2>&1 || {
        echo "chromium.sh: $bin does not run (--version failed); ignoring it" >&2
        return 1
    }
    echo "$bin"
    exit 0
}

try chromium || true
try chromium-browser || true

if ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium.sh: no chromium on PATH and no apt-get to install Debian's package; install Chromium and put \`chromium\` on PATH" >&2
    exit 1
fi
if [[ "$(id -u)" != 0 ]]; then
    echo "chromium.sh: no chromium on PATH; installing Debian's package needs root: sudo apt-get install -y --no-install-recommends chromium" >&2
    exit 1
fi

# One installer at a time: parallel test processes may all get here.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$root/.colony"
exec 9>"$root/.colony/chromium.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi
try chromium || true

echo "chromium.sh: installing Debian's package chromium" >&2
export DEBIAN_FRONTEND=noninteractive
install() { apt-get install -y --no-install-recommends chromium >&2; }
if ! install; then
    echo "chromium.sh: install failed; running apt-get update and trying again" >&2
    apt-get update >&2
    install
fi
try chromium || true
echo "chromium.sh: the package chromium was installed but no working \`chromium\` is on PATH" >&2
exit 1
