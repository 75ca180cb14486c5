#!/usr/bin/env bash
# Usage: scripts/bench-event-idx.sh [SECONDS]
#
# What virtio event indexes (VIRTIO_F_RING_EVENT_IDX) save a guest: the
# default guest with the disk-tools initramfs and a virtio-blk disk (a 256
# MiB raw image in $TMPDIR, removed at exit), booted twice, with skvm's
# devices offering event indexes (`--event-idx on`, the default) and not
# (`--event-idx off`). In each boot the guest runs, SECONDS (default 5)
# each:
#   depth 1   one blkbench of random 4 KiB reads, O_DIRECT, one at a time;
#   depth 4   four such blkbench processes at once;
# and a buffered sequential read of its first 8 MiB with dd (the kernel's
# readahead keeps several requests in flight). Printed per case and
# setting: requests completed per second (from /sys/block/vda/stat) and
# virtio-blk interrupts per request (from /proc/interrupts), and the
# on/off ratios. Kicks are not counted: the guest cannot see them. On hosts
# whose KVM emulates guest kernel code (kvm_pvm) every interrupt costs the
# guest thousands of emulated instructions, so these figures are this
# host's; the interrupt counts travel better than the rates.
set -euo pipefail
prog=bench-event-idx
# shellcheck source=scripts/bench-common.sh
. "$(dirname "$0")/bench-common.sh"
secs=${1:-5}
numbers "$secs" && [ "$secs" -gt 0 ] || die "SECONDS must be a whole number above 0"
guest=${SKVM_GUEST_DIR:-$HOME/.local/share/skvm/guest}
initrd=$guest/initramfs-disk.cpio
[ -f "$initrd" ] || die "no $initrd (scripts/setup.sh --no-run builds it)"

img=$work/disk.img
dd if=/dev/zero of="$img" bs=1M count=256 status=none

# The guest's side. snap: requests completed (reads + writes) and
# virtio-blk interrupts so far; measure NAME CMD...: one SKVM-EI line with
# both before and after and the uptimes around CMD.
read -r -d '' script <<'EOF' || true
snap() { set -- $(cat /sys/block/vda/stat); echo "$(($1 + $5)) $(awk '/virtio[0-9]+-req/ { s += $2 } END { print s + 0 }' /proc/interrupts)"; }
measure() { n=$1; shift; b=$(snap); t0=$(cut -d' ' -f1 /proc/uptime); "$@" >/dev/null 2>&1 || echo "SKVM-EI-FAILED $n"; a=$(snap); t1=$(cut -d' ' -f1 /proc/uptime); echo "SKVM-EI $n $b $a $t0 $t1"; }
four() { for i in 1 2 3 4; do blkbench /dev/vda randread 4096 SECS & done; wait; }
measure depth1 blkbench /dev/vda randread 4096 SECS
measure depth4 four
measure seq dd if=/dev/vda of=/dev/null bs=1M count=8
echo SKVM-EI-DONE
EOF
script=${script//SECS/$secs}

# Boots with --event-idx $1; leaves the SKVM-EI lines in $work/ei-$1.
boot() {
	local out=$work/out-$1
	"$skvm" run --initrd "$initrd" --disk "$img" --event-idx "$1" --run "$script" >"$out" 2>&1 </dev/null &
	vm_pid=$!
	if ! wait "$vm_pid" || ! grep -q SKVM-EI-DONE "$out" || grep -q SKVM-EI-FAILED "$out"; then
		vm_pid=""
		cat "$out" >&2
		die "the guest run with --event-idx $1 failed"
	fi
	vm_pid=""
	grep '^SKVM-EI ' "$out" | tr -d '\r' >"$work/ei-$1"
}

printf 'virtio event indexes in the guest, blk, %s s per case (%s)\n' "$secs" "$(host_summary)"
boot on
boot off
# Per case and setting: requests per second and interrupts per request.
figures() {
	awk -v c="$1" '$2 == c { r = $5 - $3; i = $6 - $4; t = $8 - $7
		if (r <= 0 || t <= 0) print "n/a n/a"; else printf "%.0f %.3f\n", r / t, i / r }' "$work/ei-$2"
}
row='  %-26s %12s %12s %8s\n'
# shellcheck disable=SC2059
printf "$row" "" "on" "off" "on/off"
for c in depth1 depth4 seq; do
	read -r on_rate on_irq <<<"$(figures "$c" on)"
	read -r off_rate off_irq <<<"$(figures "$c" off)"
	# shellcheck disable=SC2059
	printf "$row" "$c requests/s" "$on_rate" "$off_rate" "$(ratio "$on_rate" "$off_rate")"
	# shellcheck disable=SC2059
	printf "$row" "$c interrupts/request" "$on_irq" "$off_irq" "$(ratio "$on_irq" "$off_irq")"
done
if [ -d /sys/module/kvm_pvm ]; then
	echo "  note: this host emulates guest kernel code (kvm_pvm); rates are host-specific"
fi
