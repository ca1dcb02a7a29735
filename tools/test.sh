#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what it needs, then checks
# formatting and lints, builds everything (fuzz targets included) and runs every
# test. Usage: ./tools/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

if ! command -v cargo >/dev/null; then
    echo "cargo is required (https://rustup.rs)" >&2
    exit 1
fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy

log "format"
cargo fmt --all -- --check

log "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "fuzz targets build (stable toolchain, no sanitizer: a compile check)"
# The fuzz crate's lock is derived from the main one (same dependency versions) and
# it builds in the main target directory, so compiled dependencies are reused.
cp Cargo.lock fuzz/Cargo.lock
CARGO_TARGET_DIR="$PWD/target" cargo build --manifest-path fuzz/Cargo.toml --bins

log "browser end-to-end (headless Chromium in a loopback-only network namespace)"
./tools/browser-e2e.sh

log "tests"
cargo test --workspace --locked

log "load smoke: each prism-load scenario for a second with small N (asserts delivery, never speed)"
cargo build --locked -p prism -p prism-tools --bin prism --bin prism-load
load="${CARGO_TARGET_DIR:-target}/debug/prism-load"
for scenario in "fanout --subscribers 3 --rooms 2 --no-bare" \
                "audio --publishers 3 --subscribers 4" \
                "livestream --subscribers 4 --simulcast" \
                "rooms --rooms 2" \
                "meeting --subscribers 3"; do
    # shellcheck disable=SC2086 # the scenario is a list of arguments
    "$load" $scenario --seconds 1 --warmup 0 --no-pin --quiet --check
done
"$load" bare --bare-seconds 1 --no-pin --quiet --check
charts="$(mktemp -d)"
trap 'rm -rf "$charts"' EXIT
"$load" fanout --subscribers 2 --seconds 1 --warmup 0 --no-pin --quiet --check --png "$charts/fanout.png"
test -s "$charts/fanout.png" || { echo "prism-load wrote no chart" >&2; exit 1; }

log "Janus comparison smoke: the same small load against Prism and Janus (both must deliver)"
if ! command -v janus >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq janus >/dev/null
    else
        echo "janus is not installed and cannot be installed here (needs root and apt-get)" >&2
        exit 1
    fi
fi
"$load" compare --scenario fanout --subscribers 3 --seconds 1 --warmup 0 --no-pin --quiet --check \
    --png "$charts/compare.png"
test -s "$charts/compare.png" || { echo "prism-load compare wrote no chart" >&2; exit 1; }
