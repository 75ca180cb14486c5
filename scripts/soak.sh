#!/usr/bin/env bash
# Usage: scripts/soak.sh [MIB]
#
# The long runs that the test command (scripts/test.sh) keeps short to stay
# inside CI's time: the virtio-net tests move MIB MiB (default 64) each way
# through a tap, one of them while its device process is killed three
# times. On hosts whose KVM emulates guest kernel code (kvm_pvm) the guest's TCP stack
# runs at about 0.15 MB/s: 64 MiB takes about 30 minutes for the two net
# tests together. Needs what scripts/test.sh needs (run it once first).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
mib=${1:-64}
case $mib in
'' | *[!0-9]*) echo "soak: error: MIB must be a number" >&2 && exit 1 ;;
esac
start=$SECONDS
"$repo/scripts/setup.sh" --no-run
export SKVM_BIN="$repo/target/release/skvm"
export SKVM_NET_TEST_MIB=$mib
status=0
cargo test --profile release-tests -p guest-tests --test net -- --test-threads="$(nproc)" || status=$?
printf 'soak: status %d, %ds\n' "$status" "$((SECONDS - start))" >&2
exit "$status"
