#!/usr/bin/env bash
# Usage: scripts/test-slow.sh
#
# The guest tests that do not fit the test command's time (CI's 35 minutes
# on 2 cores): Debian's stock cloud kernel running its initramfs's user
# space with 2 vCPUs (boot::stock_debian_kernel_runs_its_user_space_...),
# and the distribution boots that scripts/test.sh leaves out (it boots the
# Debian image of scripts/build-rootfs.sh once, powered off by `skvm ctl
# SOCKET powerdown`): the same image, 2 vCPUs, rng and the disk, booted
# three times in a row and powered off from inside with systemctl, and once
# with Debian's stock cloud kernel through skvm's initramfs (root= and
# switch_root); each image checked with e2fsck -fn afterwards; and the
# stock kernel with --vsock and --console, its modules loaded
# (vsock::debians_stock_kernel_...), and with --root / (its initramfs loads
# fuse and virtiofs and mounts the host's root: fs::debians_stock_kernel_...).
# One guest at a time. On hosts whose
# KVM emulates guest kernel code (kvm_pvm) the whole script took about 25
# minutes on an Intel Xeon host (November 2026: the stock boot 3 minutes,
# three systemd boots 6.5, the stock systemd boot 11.5) and over an hour on
# an AMD EPYC one, whose emulation is about three times slower. Run before
# resolving anything that touches booting or the host quirks. Needs what
# scripts/test.sh needs (run it once first).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
case ${1:-} in
-h | --help)
	sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
	exit 0
	;;
esac
start=$SECONDS
"$repo/scripts/setup.sh" --no-run
"$repo/scripts/build-rootfs.sh"
export SKVM_BIN="$repo/target/release/skvm"
printf 'test-slow: host CPU: %s\n' "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')" >&2
status=0
# One guest at a time: each has 2 vCPUs.
cargo test --profile release-tests -p guest-tests --test boot --test distro --test vsock --test fs -- --ignored --test-threads=1 \
	--nocapture || status=$?
printf 'test-slow: status %d, %dm%02ds\n' "$status" "$(((SECONDS - start) / 60))" "$(((SECONDS - start) % 60))" >&2
exit "$status"
