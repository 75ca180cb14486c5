#!/usr/bin/env bash
# Usage: scripts/test.sh [cargo test arguments...]
#
# The whole test suite: sets up what the tests need (packages, the default
# guest, the release build of skvm; cached, see scripts/setup.sh), then runs
# every test of the workspace, including the guest tests that boot real
# guests on /dev/kvm through target/release/skvm.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
"$repo/scripts/setup.sh" --no-run
export SKVM_BIN="$repo/target/release/skvm"
# Guest tests are CPU-bound on emulating hosts: one guest per core.
cargo test --release --workspace --no-fail-fast "$@" -- --test-threads="$(nproc)"
