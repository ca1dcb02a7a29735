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

log "tests"
cargo test --workspace --locked
