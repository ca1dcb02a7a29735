#!/usr/bin/env bash
# The browser end-to-end tests (tests/browser/e2e.mjs): the call page in headless
# Chromium against the prism binary, inside a network namespace that has only
# loopback (so every ICE candidate is 127.0.0.1 and nothing leaves the machine).
# Installs Debian's chromium and the npm packages when missing. Needs root (apt-get,
# unshare -n). Usage: ./tools/browser-e2e.sh [--screenshot docs/call-page.png]
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v ip >/dev/null || missing+=(iproute2)
if [ "${#missing[@]}" -gt 0 ]; then
    # The apt cache can be cleaned under us by other jobs: retry update + install.
    for attempt in 1 2 3; do
        if apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"; then
            break
        fi
        [ "$attempt" = 3 ] && { echo "could not install ${missing[*]}" >&2; exit 1; }
        sleep 5
    done
fi
command -v node >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm

# playwright-core only: it drives the system Chromium and downloads no browser.
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

cargo build --locked --bin prism
bin="${CARGO_TARGET_DIR:-$PWD/target}/debug/prism"

args=()
for a in "$@"; do args+=("$(printf '%q' "$a")"); done
exec unshare -n sh -c "ip link set lo up && PRISM_BIN='$bin' node tests/browser/e2e.mjs ${args[*]:-}"
