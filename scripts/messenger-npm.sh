#!/usr/bin/env bash
# Installs the npm `messenger` package the messenger compatibility tests and
# bench speak to, from actors/tests/messenger/package-lock.json (`npm ci`).
set -euo pipefail
dir="$(cd "$(dirname "$0")/.." && pwd)/actors/tests/messenger"
if [ -f "$dir/node_modules/messenger/package.json" ] \
    && [ "$dir/node_modules/.package-lock.json" -nt "$dir/package-lock.json" ]; then
    exit 0
fi
for tool in node npm; do
    if ! command -v "$tool" >/dev/null; then
        echo "messenger tests need $tool (Node.js 18 or later) on PATH" >&2
        exit 1
    fi
done
npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error >&2
