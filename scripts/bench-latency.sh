#!/usr/bin/env bash
# Usage: scripts/bench-latency.sh [REQUESTS] [ROUNDS]
#
# Kick -> interrupt latency at queue depth 1 against the host's eventfd
# floor, on an idle host and on a busy one, in one run (issue 22, point 2).
# Cases, each a confined device process driven from the host (`skvm drive`):
#   rng0 64-byte requests; blk0 4 KiB random reads and writes on a 64 MiB
#   image in the page cache; net0 60-byte frames sent (tx) and received (rx)
#   through a tap in a network namespace the script makes (root only).
# Each case runs three ways:
#   idle    nothing else runs on the host;
#   busy    a spinning loop occupies a core while it runs (as the issue
#           defines a busy host: wake-ups then find a core awake);
#   polled  idle, with the device polling its queues for up to 50 us after
#           a kick and the driver polling for its answer for up to 200 us
#           (`--device-poll-us 50 --halt-poll-us 200`);
# and beside them the floors (scripts/floor.c): an eventfd round trip
# between two processes that sleep in read(2), idle and busy (the same
# spinning loop), busy with the answering side waiting in poll(2) over four
# eventfds as a device worker waits, and with both spinning (no sleep).
# Printed: the median over ROUNDS (default 3) of each p50, the p50 of the
# device's work done bare (getrandom, pread, pwrite: floor.c), and
#   busy p50 / busy floor     (target <= 1.3)
#   polled p50 / busy floor   (target <= 2.0: polling on an idle host)
#   both again over the busy floor plus the bare work (a 4 KiB pwrite alone
#   takes longer than the round trip here)
#   the device CPU per request of each way (the polled one is what polling
#   costs);
# and, busy, the p50 of the same requests made with nothing but the system
# calls skvm's device and driver make for them (floor.c request: poll(2),
# read, the work and write on the device's side; write, poll(2) and read on
# the driver's), over the floor (what those calls cost) and skvm's p50 over
# it (what skvm's own code adds); and the CPU per request of the device's
# side of each: the work alone in a loop, the bare calls, skvm.
# Absolute figures are this host's; on a nested VM whose idle cores halt
# (guest_halt_poll_ns 0, docs/ARCHITECTURE.md) the idle figures are mostly
# the wake-up of a halted core.
set -euo pipefail

prog=bench-latency
# shellcheck source=scripts/bench-common.sh
. "$(dirname "$0")/bench-common.sh"
requests_and_rounds "$@"
floor=$(build_floor)

img=$work/disk.img
dd if=/dev/urandom of="$img" bs=1M count=64 status=none
cat "$img" >/dev/null
tap=skvml0

cases=(
	"rng 64 B|--device rng0 --size 64"
	"blk randread 4 KiB|--device blk0 --disk $img --op randread --size 4096"
	"blk randwrite 4 KiB|--device blk0 --disk $img --op randwrite --size 4096"
)
# The device's own work per request, done bare (none for net: the frame's
# copy to or from the tap is in the busy floor's order of magnitude).
work_of() {
	case "$1" in
	rng*) "$floor" getrandom 64 "$requests" ;;
	"blk randread"*) "$floor" randread "$img" 4096 "$requests" ;;
	"blk randwrite"*) "$floor" randwrite "$img" 4096 "$requests" ;;
	*) echo "p50_us=0" ;;
	esac
}
# The same case made with the system calls skvm's device and driver make
# for it and nothing else (floor.c request); none for net.
calls_of() {
	case "$1" in
	rng*) "$floor" request rng "$requests" ;;
	"blk randread"*) "$floor" request "randread:$img" "$requests" ;;
	"blk randwrite"*) "$floor" request "randwrite:$img" "$requests" ;;
	esac
}
if [ "$(id -u)" = 0 ] && command -v ip >/dev/null; then
	bench_netns
	ip -n "$ns" tuntap add "$tap" mode tap
	ip -n "$ns" link set "$tap" up
	cases+=("net tx 60 B|--device net0 --net tap=$tap --op tx --size 60"
		"net rx 60 B|--device net0 --net tap=$tap --op rx --size 60")
else
	echo "  (not root: no net rows; they need a network namespace and a tap)"
fi

spinner=""
spin_start() {
	(while :; do :; done) &
	spinner=$!
}
spin_stop() {
	kill "$spinner" 2>/dev/null || true
	wait "$spinner" 2>/dev/null || true
	spinner=""
}
trap 'spin_stop; bench_cleanup' EXIT

# One drive run of the benchmark's size; its key=value line.
drive() { bench_drive --requests "$requests" --depth 1 "$@"; }

declare -A fig
keep() { fig[$1]+="$(field "$2" "$3") "; }
med() { tr ' ' '\n' <<<"${fig[$1]:-}" | grep -v '^$' | median; }

printf 'skvm kick -> interrupt latency, depth 1, %s requests, %s rounds (%s)\n' \
	"$requests" "$rounds" "$(host_summary)"
for ((r = 1; r <= rounds; r++)); do
	printf '  round %s of %s ...\n' "$r" "$rounds" >&2
	line=$("$floor" eventfd "$requests")
	keep floor/idle "$line" p50_us
	line=$("$floor" eventfd-spin "$requests")
	keep floor/spin "$line" p50_us
	spin_start
	line=$("$floor" eventfd "$requests")
	keep floor/busy "$line" p50_us
	line=$("$floor" eventfd-poll "$requests")
	keep floor/busy-poll "$line" p50_us
	spin_stop
	for c in "${cases[@]}"; do
		key=${c%%|*}
		read -r -a args <<<"${c#*|}"
		line=$(drive "${args[@]}")
		keep "$key/idle/p50" "$line" p50_us
		keep "$key/idle/cpu" "$line" cpu_us_per_req
		spin_start
		line=$(drive "${args[@]}")
		calls=$(calls_of "$key")
		spin_stop
		keep "$key/busy/p50" "$line" p50_us
		keep "$key/busy/cpu" "$line" cpu_us_per_req
		if [ -n "$calls" ]; then
			keep "$key/calls" "$calls" p50_us
			keep "$key/calls/cpu" "$calls" cpu_us_per_op
		fi
		line=$(drive "${args[@]}" --device-poll-us 50 --halt-poll-us 200)
		keep "$key/polled/p50" "$line" p50_us
		keep "$key/polled/cpu" "$line" cpu_us_per_req
		line=$(work_of "$key")
		keep "$key/work" "$line" p50_us
		keep "$key/work/cpu" "$line" cpu_us_per_op
	done
done

busy=$(med floor/busy)
printf '\n  eventfd round trip floor, p50 us: idle %s, busy %s (%s with poll(2) over 4 fds on the\n' \
	"$(med floor/idle)" "$busy" "$(med floor/busy-poll)"
printf '  answering side, as a device worker waits), both spinning %s\n\n' "$(med floor/spin)"
row='  %-20s %8s %8s %8s %8s %7s %9s %7s %9s %8s %8s %8s\n'
# shellcheck disable=SC2059
printf "$row" case "idle" "busy" "polled" "work" "busy/" "busy/" "polled/" "polled/" "idle cpu" \
	"busy cpu" "poll cpu"
# shellcheck disable=SC2059
printf "$row" "" "p50 us" "p50 us" "p50 us" "p50 us" "floor" "fl+work" "floor" "fl+work" us/req \
	us/req us/req
for c in "${cases[@]}"; do
	key=${c%%|*}
	bare=$(med "$key/work")
	with_work=$(awk -v a="$busy" -v b="$bare" 'BEGIN { print a + b }')
	# shellcheck disable=SC2059
	printf "$row" "$key" "$(med "$key/idle/p50")" "$(med "$key/busy/p50")" \
		"$(med "$key/polled/p50")" "$bare" \
		"$(ratio "$(med "$key/busy/p50")" "$busy")" "$(ratio "$(med "$key/busy/p50")" "$with_work")" \
		"$(ratio "$(med "$key/polled/p50")" "$busy")" "$(ratio "$(med "$key/polled/p50")" "$with_work")" \
		"$(med "$key/idle/cpu")" "$(med "$key/busy/cpu")" "$(med "$key/polled/cpu")"
done
echo "  floor: the busy eventfd round trip; work: the device's work done bare (floor.c);"
echo "  targets: busy/floor <= 1.3, polled/floor <= 2.0 (issue 22); cpu: the device's own"
printf '\n  busy, against the same system calls made bare (floor.c request: the device'"'"'s poll(2),\n'
printf '  kick read, work and interrupt write; the driver'"'"'s kick write, poll(2) and read):\n'
row='  %-20s %9s %8s %9s %8s %9s %9s %9s %8s\n'
# shellcheck disable=SC2059
printf "$row" case "calls p50" "calls/" "skvm p50" "skvm/" "work cpu" "calls cpu" "skvm cpu" "skvm/"
# shellcheck disable=SC2059
printf "$row" "" us floor us calls us/req us/req us/req calls
for c in "${cases[@]}"; do
	key=${c%%|*}
	[ -n "${fig[$key/calls]:-}" ] || continue
	# shellcheck disable=SC2059
	printf "$row" "$key" "$(med "$key/calls")" "$(ratio "$(med "$key/calls")" "$busy")" \
		"$(med "$key/busy/p50")" "$(ratio "$(med "$key/busy/p50")" "$(med "$key/calls")")" \
		"$(med "$key/work/cpu")" "$(med "$key/calls/cpu")" "$(med "$key/busy/cpu")" \
		"$(ratio "$(med "$key/busy/cpu")" "$(med "$key/calls/cpu")")"
done
echo "  calls/floor: what the system calls cost; skvm/calls: what skvm's own code adds; cpu:"
echo "  the device's side (work: the work alone in a loop, no wait between requests)"
if [ -d /sys/module/kvm_pvm ]; then
	echo "  note: this host is a nested VM (kvm_pvm); absolute figures are host-specific"
fi
