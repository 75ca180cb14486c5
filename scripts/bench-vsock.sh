#!/usr/bin/env bash
# Usage: scripts/bench-vsock.sh [REQUESTS]
#
# virtio-vsock through a running default guest, the device in a confined
# process and in a VMM thread, side by side in one run: the guest runs its
# `vsock listen 5000 echo` (guest/tools/vsock.c), and `skvm drive --device
# vsock0 --connect PATH` plays a host program on `--vsock ...,socket=PATH`
# that writes 64 bytes (REQUESTS times, default 500) and 64 KiB (a tenth
# as many) and reads each back: the round trip host -> device -> guest
# kernel -> guest program -> guest kernel -> device -> host. Printed:
# requests/s, MB/s, round-trip percentiles, the device process's PSS after
# the run, and the ratio process/thread.
# The device alone, without a guest, is in scripts/bench-devices.sh
# (`skvm drive --device vsock0`: the harness plays the guest's driver).
# Absolute figures are this host's: where guest kernel code is emulated
# (kvm_pvm, docs/ARCHITECTURE.md) the guest's kernel dominates them;
# ratios travel better.
set -euo pipefail

prog=bench-vsock
# shellcheck source=scripts/bench-common.sh
. "$(dirname "$0")/bench-common.sh"
requests=${1:-500}
numbers "$requests" || die "REQUESTS must be a number"
big=$((requests / 10 > 0 ? requests / 10 : 1))

printf 'skvm vsock through a guest, %s requests of 64 B and %s of 64 KiB (%s)\n' \
	"$requests" "$big" "$(host_summary)"
printf '\n  %-16s %-8s %9s %8s %9s %9s %9s %8s\n' case mode "req/s" "MB/s" p50_us p90_us p99_us pss_kib
declare -A rps
for mode in process thread; do
	sock=$work/$mode.sock
	ctl=$work/$mode.ctl
	"$skvm" run --vsock "cid=3,socket=$sock" --device-mode "$mode" --ctl "$ctl" \
		--run 'vsock listen 5000 echo & sleep 1; echo SKVM-LISTENING; sleep 100000' \
		>"$work/$mode.log" 2>&1 </dev/null &
	vm_pid=$!
	for _ in $(seq 600); do
		grep -q SKVM-LISTENING "$work/$mode.log" && break
		kill -0 "$vm_pid" 2>/dev/null || die "the guest stopped: $(tail -5 "$work/$mode.log")"
		sleep 1
	done
	grep -q SKVM-LISTENING "$work/$mode.log" || die "the guest did not start its listener"
	for size in 64 65536; do
		n=$requests
		[ "$size" = 64 ] || n=$big
		line=$("$skvm" drive --device vsock0 --connect "$sock" --size "$size" --requests "$n")
		pss=n/a
		if [ "$mode" = process ]; then
			pid=$("$skvm" ctl "$ctl" status | tr ',' '\n' | sed -n 's/.*"pid":\([0-9]*\).*/\1/p' | head -1)
			[ -n "$pid" ] && pss=$(awk '/^Pss:/ { print $2 }' "/proc/$pid/smaps_rollup" 2>/dev/null || echo n/a)
		fi
		key="vsock echo $size"
		rps[$key/$mode]=$(field "$line" req_per_s)
		printf '  %-16s %-8s %9s %8s %9s %9s %9s %8s\n' "$key" "$mode" "${rps[$key/$mode]}" \
			"$(field "$line" mb_per_s)" "$(field "$line" p50_us)" "$(field "$line" p90_us)" \
			"$(field "$line" p99_us)" "$pss"
	done
	"$skvm" ctl "$ctl" shutdown >/dev/null 2>&1 || true
	wait "$vm_pid" 2>/dev/null || true
	vm_pid=
done
printf '\n  %-16s %16s\n' case "process/thread"
for size in 64 65536; do
	key="vsock echo $size"
	printf '  %-16s %16s\n' "$key" "$(ratio "${rps[$key/process]}" "${rps[$key/thread]}")"
done
if [ -d /sys/module/kvm_pvm ]; then
	echo "  note: this host is a nested VM (kvm_pvm) that emulates guest kernel code; absolute figures are host-specific"
fi
