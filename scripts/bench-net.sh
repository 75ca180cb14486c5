#!/usr/bin/env bash
# Usage: scripts/bench-net.sh [MIB] [MTU]
#
# virtio-net over a tap, device process vs device thread, in one run. In a
# network namespace it creates (and deletes), with a tap at MTU (default
# 1500) holding 10.0.2.1/24, it boots the default guest once per mode; the
# guest (10.0.2.15)
#   - pings the host 10 times (round-trip average),
#   - receives MIB MiB (default 4) over TCP from the host (busybox nc),
#   - sends MIB MiB back over TCP,
# each transfer timed inside the guest (/proc/uptime, 10 ms resolution).
# The device process's PSS is sampled while it runs. Ratios are
# process/thread (1.00: isolation costs nothing; for latency, lower is
# better). On hosts whose KVM emulates guest kernel code (kvm_pvm) the guest's
# TCP stack is the bottleneck (about 0.15 MB/s here): the absolute figures
# are host-specific, the ratios are the point.
set -euo pipefail

prog=bench-net
# shellcheck source=scripts/bench-common.sh
. "$(dirname "$0")/bench-common.sh"
mib=${1:-4}
mtu=${2:-1500}
numbers "$mib" "$mtu" || die "arguments must be numbers"
need_root "network namespace, tap"
command -v busybox >/dev/null || die "needs busybox (scripts/setup.sh installs it)"

tap=skvmb0
bench_netns
ip -n "$ns" tuntap add "$tap" mode tap
ip -n "$ns" addr add 10.0.2.1/24 dev "$tap"
ip -n "$ns" link set "$tap" mtu "$mtu" up
head -c "$((mib << 20))" /dev/urandom >"$work/data"


# One boot in device mode $1; sets rtt_ms, h2g_mbps, g2h_mbps, pss_kib.
run_mode() {
	local mode=$1 out t pid
	# The host's receiver, then its sender (retried until the guest listens).
	ip netns exec "$ns" busybox nc -l -p 5002 >/dev/null &
	(
		until ip netns exec "$ns" busybox nc 10.0.2.15 5001 <"$work/data" 2>/dev/null; do
			sleep 0.1
		done
	) &
	local sender=$!
	# One command at a time in the guest (docs/ARCHITECTURE.md).
	ip netns exec "$ns" "$skvm" run --cpus 2 --mem 512M --device-mode "$mode" \
		--net "tap=$tap" --run "ip addr add 10.0.2.15/24 dev eth0; ip link set eth0 mtu $mtu; \
ip link set eth0 up; ping -c 10 10.0.2.1; dd if=/dev/zero of=/tmp/f bs=1M count=$mib 2>/dev/null; \
read a x </proc/uptime; nc -l -p 5001 >/dev/null; read b x </proc/uptime; \
nc 10.0.2.1 5002 </tmp/f; read c x </proc/uptime; echo SKVM-NET-T \$a \$b \$c" \
		</dev/null >"$work/out.$mode" 2>&1 &
	local vm=$!
	pss_kib=n/a
	while kill -0 "$vm" 2>/dev/null; do
		if [ "$mode" = process ] && [ "$pss_kib" = n/a ]; then
			pid=$(pgrep -f "^skvm-dev net0" | head -n 1 || true)
			if [ -n "$pid" ] && grep -q SKVM-INIT-START "$work/out.$mode"; then
				pss_kib=$(awk '/^Pss:/ { print $2 }' "/proc/$pid/smaps_rollup" 2>/dev/null || echo n/a)
			fi
		fi
		sleep 1
	done
	wait "$vm" || { echo "bench-net: guest run failed ($mode):" >&2; cat "$work/out.$mode" >&2; exit 1; }
	kill "$sender" 2>/dev/null || true
	out=$(tr -d '\r' <"$work/out.$mode")
	rtt_ms=$(sed -n 's|.*round-trip min/avg/max = [0-9.]*/\([0-9.]*\)/.*|\1|p' <<<"$out")
	t=$(sed -n 's/.*SKVM-NET-T \([0-9. ]*\).*/\1/p' <<<"$out")
	if [ -z "$t" ] || [ -z "$rtt_ms" ]; then
		die "no figures from the guest ($mode):"$'\n'"$out"
	fi
	read -r h2g_mbps g2h_mbps < <(awk -v m="$mib" -v t="$t" 'BEGIN {
		split(t, v, " "); d1 = v[2] - v[1]; d2 = v[3] - v[2]
		if (d1 <= 0) d1 = 0.01; if (d2 <= 0) d2 = 0.01
		printf "%.3f %.3f\n", m * 1.048576 / d1, m * 1.048576 / d2 }')
}

echo "bench-net: $mib MiB each way over TCP at MTU $mtu, 10 pings (one boot per mode)"
run_mode process
p=("$rtt_ms" "$h2g_mbps" "$g2h_mbps" "$pss_kib")
run_mode thread
t=("$rtt_ms" "$h2g_mbps" "$g2h_mbps")
printf '  %-28s %12s %12s %8s\n' "" process thread ratio
printf '  %-28s %12s %12s %8s\n' "ping guest->host avg ms" "${p[0]}" "${t[0]}" "$(ratio "${p[0]}" "${t[0]}")"
printf '  %-28s %12s %12s %8s\n' "TCP host->guest MB/s" "${p[1]}" "${t[1]}" "$(ratio "${p[1]}" "${t[1]}")"
printf '  %-28s %12s %12s %8s\n' "TCP guest->host MB/s" "${p[2]}" "${t[2]}" "$(ratio "${p[2]}" "${t[2]}")"
echo "  device process PSS: ${p[3]} KiB"
