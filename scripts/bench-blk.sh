#!/usr/bin/env bash
# Usage: scripts/bench-blk.sh [GUEST_SECONDS] [HOST_REQUESTS]
#
# virtio-blk, device process vs device thread, in one run, on a 256 MiB raw
# image in $TMPDIR (removed at exit):
#   guest: boots the default guest with the disk-tools initramfs once per
#          mode and runs guest/tools/blkbench on /dev/vda with O_DIRECT for
#          GUEST_SECONDS (default 5) per case: sequential 1 MiB read and
#          write, random 4 KiB read and write (one request at a time); reads
#          the device process's PSS while the guest is still up;
#   host:  `skvm drive` plays the guest's driver against the same device
#          started the same way: the same four cases at queue depth 1 and
#          random 4 KiB reads and writes at depth 32, HOST_REQUESTS requests
#          each (default 20000; 1 MiB cases a tenth of that).
# Ratios are process/thread: 1.00 means isolation costs nothing. Guest
# figures on hosts whose KVM emulates guest kernel code (kvm_pvm) are
# dominated by that emulation; the host figures measure the device itself.
# Absolute figures depend on this host's disk and page cache.
set -euo pipefail

prog=bench-blk
# shellcheck source=scripts/bench-common.sh
. "$(dirname "$0")/bench-common.sh"
secs=${1:-5}
requests=${2:-20000}
guest=${SKVM_GUEST_DIR:-$HOME/.local/share/skvm/guest}
initrd=$guest/initramfs-disk.cpio
[ -f "$initrd" ] || die "no $initrd (scripts/setup.sh --no-run builds it)"
numbers "$secs" "$requests" || die "arguments must be numbers"

img=$work/disk.img
# Allocated, not sparse: reads must reach the file system.
dd if=/dev/urandom of="$img" bs=1M count=256 status=none
sync "$img"

row() { printf '  %-34s %12s %12s %8s\n' "$1" "$2" "$3" "$(ratio "$2" "$3")"; }

# Pid of the `skvm-dev blk0` process under skvm $1 (its spawner's child).
device_pid() {
	local s c
	for s in $(pgrep -P "$1"); do
		for c in $(pgrep -P "$s"); do
			case "$(tr '\0' ' ' <"/proc/$c/cmdline" 2>/dev/null)" in
			"skvm-dev blk0 "*)
				echo "$c"
				return
				;;
			esac
		done
	done
}

# Guest run in mode $1: leaves blkbench lines in $work/guest-$1 and the
# device process's PSS in KiB (or n/a) in $work/pss-$1.
guest_run() {
	local mode=$1 out=$work/out-$1 script i pid pss=n/a
	script="blkbench /dev/vda read 1048576 $secs; blkbench /dev/vda write 1048576 $secs;"
	script="$script blkbench /dev/vda randread 4096 $secs; blkbench /dev/vda randwrite 4096 $secs;"
	script="$script echo SKVM-BENCH-DONE; sleep 5"
	"$skvm" run --initrd "$initrd" --disk "$img" --device-mode "$mode" --run "$script" \
		>"$out" 2>&1 </dev/null &
	vm_pid=$!
	for ((i = 0; i < 3600; i++)); do
		grep -q SKVM-BENCH-DONE "$out" && break
		kill -0 "$vm_pid" 2>/dev/null || break
		sleep 1
	done
	if [ "$mode" = process ]; then
		pid=$(device_pid "$vm_pid")
		if [ -n "$pid" ]; then
			pss=$(awk '/^Pss:/ { print $2 }' "/proc/$pid/smaps_rollup" 2>/dev/null || echo n/a)
		fi
	fi
	echo "$pss" >"$work/pss-$mode"
	if ! wait "$vm_pid"; then
		vm_pid=""
		echo "bench-blk: guest run failed ($mode):" >&2
		cat "$out" >&2
		exit 1
	fi
	vm_pid=""
	grep BLKBENCH "$out" | tr -d '\r' >"$work/guest-$mode" || true
	[ "$(wc -l <"$work/guest-$mode")" -eq 4 ] || {
		echo "bench-blk: blkbench did not report ($mode):" >&2
		cat "$out" >&2
		exit 1
	}
}

echo "bench-blk: guest blkbench, ${secs} s per case, O_DIRECT, one request at a time (one boot per mode)"
guest_run process
guest_run thread
printf '  %-34s %12s %12s %8s\n' "" process thread ratio
for op in read write randread randwrite; do
	p=$(grep " op=$op " "$work/guest-process")
	t=$(grep " op=$op " "$work/guest-thread")
	case $op in
	read | write) row "guest 1 MiB $op MB/s" "$(field "$p" mb_per_s)" "$(field "$t" mb_per_s)" ;;
	*) row "guest 4 KiB $op IOPS" "$(field "$p" iops)" "$(field "$t" iops)" ;;
	esac
done
echo "  device process PSS during the guest run: $(cat "$work/pss-process") KiB"

echo "bench-blk: host driver (skvm drive), same image"
printf '  %-34s %12s %12s %8s\n' "" process thread ratio
drive() { "$skvm" drive --device blk0 --disk "$img" "$@"; }
pss=n/a
# Warm-up, not measured: the guests' writes are written back and the image
# is in the page cache for both modes alike.
sync "$img"
drive --op read --size 1048576 --requests 512 >/dev/null
for c in "read 1048576 1" "write 1048576 1" "randread 4096 1" "randwrite 4096 1" \
	"randread 4096 32" "randwrite 4096 32"; do
	read -r op size depth <<<"$c"
	n=$requests
	[ "$size" -lt 1048576 ] || n=$((requests / 10 > 0 ? requests / 10 : 1))
	p=$(drive --device-mode process --op "$op" --size "$size" --depth "$depth" --requests "$n")
	t=$(drive --device-mode thread --op "$op" --size "$size" --depth "$depth" --requests "$n")
	label="$op $((size / 1024)) KiB depth $depth"
	row "$label MB/s" "$(field "$p" mb_per_s)" "$(field "$t" mb_per_s)"
	row "$label p50 us" "$(field "$p" p50_us)" "$(field "$t" p50_us)"
	pss=$(field "$p" pss_kib)
done
echo "  device process PSS after the last host case: ${pss} KiB"
