#!/usr/bin/env bash
# Usage: scripts/test.sh [cargo test or cargo nextest run arguments...]
#
# The whole test suite: sets up what the tests need (packages, the default
# guest, the release build of skvm; cached, see scripts/setup.sh), then runs
# every test of the workspace, including the guest tests that boot real
# guests on /dev/kvm through target/release/skvm (and the Debian image of
# scripts/build-rootfs.sh, built here when missing), and a smoke run of every
# fuzz target. It prints its total time at the end; on CI's machine (2
# cores) it must stay under 35 minutes. Long transfers and soaks are not
# here: scripts/soak.sh runs them.
set -euo pipefail
start=$SECONDS

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
"$repo/scripts/setup.sh" --no-run
"$repo/scripts/build-rootfs.sh"
setup_done=$SECONDS
export SKVM_BIN="$repo/target/release/skvm"
# The escape suite's skvm (crate escape: device kinds that attempt escapes
# on request; never the binary people run), built by setup with the
# workspace.
export SKVM_ESCAPE_BIN="$repo/target/release/skvm-escape"
status=0
# A short run of every fuzz target, 5 s each (installs nightly and
# cargo-fuzz the first time; docs/FUZZING.md), unless only some tests were
# asked for. It runs before the tests so that the end of the output, all
# that a CI log may keep, is nextest's summary naming every failed test.
if [ "$#" -eq 0 ]; then
	"$repo/scripts/fuzz.sh" --smoke 5 || status=$?
fi
fuzz_done=$SECONDS
# Guest tests are CPU-bound on emulating hosts: one guest per core. With
# cargo-nextest (on the machines here), the tests of every test binary share
# one pool of that many slots, so that a long guest test in one file (the
# stock kernel's boot) does not leave a core idle while the next file waits;
# without it, cargo test runs the files one after the other. The tests are
# built with the release-tests profile (release without link-time
# optimisation, Cargo.toml); the guests run setup's release build of skvm.
if cargo nextest --version >/dev/null 2>&1; then
	cargo nextest run --cargo-profile release-tests --workspace --no-fail-fast \
		--test-threads "$(nproc)" "$@" || status=$?
else
	cargo test --profile release-tests --workspace --no-fail-fast "$@" \
		-- --test-threads="$(nproc)" || status=$?
fi
elapsed=$((SECONDS - start))
mmss() { printf '%dm%02ds' "$(($1 / 60))" "$(($1 % 60))"; }
printf 'test: status %d, %s in all on %d cores (CI limit: 35 minutes): setup %s, fuzz smoke %s, build and tests %s\n' \
	"$status" "$(mmss "$elapsed")" "$(nproc)" "$(mmss $((setup_done - start)))" \
	"$(mmss $((fuzz_done - setup_done)))" "$(mmss $((SECONDS - fuzz_done)))" >&2
exit "$status"
