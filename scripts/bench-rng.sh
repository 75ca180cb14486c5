#!/usr/bin/env bash
# Usage: scripts/bench-rng.sh [GUEST_KIB] [HOST_REQUESTS]
#
# virtio-rng, device process vs device thread, in one run:
#   guest: boots the default guest once per mode and times a read of
#          GUEST_KIB KiB (default 1024) from /dev/hwrng inside the guest
#          (/proc/uptime, 10 ms resolution);
#   host:  `skvm drive` plays the guest's driver against the same device
#          started the same way, and reports requests/s, MB/s and
#          kick-to-interrupt latency percentiles at queue depth 1 and 32,
#          with 64-byte requests (what Linux's hw_random core asks for) and
#          4 KiB requests, plus the device process's PSS.
# Ratios are process/thread: 1.00 means isolation costs nothing. Guest
# figures on hosts whose KVM emulates guest kernel code (kvm_pvm) are
# dominated by that emulation; the host figures measure the device itself.
set -euo pipefail

prog=bench-rng
# shellcheck source=scripts/bench-common.sh
. "$(dirname "$0")/bench-common.sh"
kib=${1:-1024}
requests=${2:-20000}
numbers "$kib" "$requests" || die "arguments must be numbers"


# Guest: KiB/s read from /dev/hwrng, per mode.
guest_kibps() {
	local mode=$1 out t0 t1
	out=$("$skvm" run --rng --device-mode "$mode" --run \
		"read a b < /proc/uptime; dd if=/dev/hwrng of=/dev/null bs=1024 count=$kib 2>/dev/null; read c d < /proc/uptime; echo SKVM-RNG-T \$a \$c" \
		2>&1 </dev/null) || { echo "bench-rng: guest run failed ($mode):" >&2; echo "$out" >&2; exit 1; }
	read -r t0 t1 < <(sed -n 's/.*SKVM-RNG-T \([0-9.]*\) \([0-9.]*\).*/\1 \2/p' <<<"$out" | tr -d '\r')
	[ -n "${t1:-}" ] || { echo "bench-rng: no timing from the guest ($mode)" >&2; exit 1; }
	awk -v k="$kib" -v a="$t0" -v b="$t1" 'BEGIN { d = b - a; if (d <= 0) d = 0.01; printf "%.1f", k / d }'
}

echo "bench-rng: guest reads $kib KiB from /dev/hwrng (one boot per mode)"
gp=$(guest_kibps process)
gt=$(guest_kibps thread)
printf '  %-28s %12s %12s %8s\n' "" process thread ratio
printf '  %-28s %12s %12s %8s\n' "guest read KiB/s" "$gp" "$gt" "$(ratio "$gp" "$gt")"

echo "bench-rng: host driver, $requests requests per case (skvm drive)"
printf '  %-28s %12s %12s %8s\n' "" process thread ratio
for size in 64 4096; do
	for depth in 1 32; do
		p=$("$skvm" drive --device-mode process --size "$size" --depth "$depth" --requests "$requests")
		t=$("$skvm" drive --device-mode thread --size "$size" --depth "$depth" --requests "$requests")
		for key in req_per_s mb_per_s p50_us p99_us; do
			a=$(field "$p" $key)
			b=$(field "$t" $key)
			printf '  %-28s %12s %12s %8s\n' "${size}B depth $depth $key" "$a" "$b" "$(ratio "$a" "$b")"
		done
		pss=$(field "$p" pss_kib)
	done
done
echo "  device process PSS: ${pss} KiB"
