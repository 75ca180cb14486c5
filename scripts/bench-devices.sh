#!/usr/bin/env bash
# Usage: scripts/bench-devices.sh [REQUESTS] [ROUNDS]
#
# Each device driven from the host (`skvm drive`: no guest, the device
# started exactly as `skvm run` starts it), in one run:
#   rng0: 4 KiB requests at queue depth 1 and 32;
#   blk0: random 4 KiB reads and writes at depth 1 and 32 on a 256 MiB raw
#         image in $TMPDIR (removed at exit), buffered (the host page cache);
#   net0: 1514-byte frames sent (tx) and received (rx) at depth 1 and 32
#         through a tap (MTU 1500) in a network namespace the script
#         creates and deletes; the host end is AF_PACKET sockets on the
#         tap, every frame checked. Needs root; skipped otherwise. req/s
#         is frames/s; rx latency is from sending a batch into the tap to
#         the interrupt that completes it;
#   console0: 64-byte and 4 KiB writes to the console that a host peer
#         echoes back, one at a time: latency is the round trip from the
#         transmit kick to the interrupt that completes the echo;
#   vsock0: 64-byte and 64 KiB writes of a host program on the device's
#         socket that the harness's driver echoes back, one at a time:
#         latency is the host program's round trip (host -> device ->
#         driver -> device -> host); through a guest: scripts/bench-vsock.sh;
# each in four ways: a device thread in the VMM, a confined device process
# (the default), a device process with no confinement at all
# (`--unconfined`), and a confined process that polls its queues for 50 us
# after each kick with a driver that polls for its answer for 200 us
# (`--device-poll-us 50 --halt-poll-us 200`, as KVM's halt polling keeps a
# guest's idle vCPU awake), ROUNDS times (default 3) over all cases in turn, so
# that a reader can tell a real gap from noise on a small shared host.
# Printed per case and mode: the median requests/s and its spread over the
# rounds ((max - min) / median), MB/s, kick-to-interrupt latency percentiles,
# the device's CPU time per request (its process's or thread's run time
# over the run, from schedstat: the driver's own is left out), the device
# process's PSS; then per case the host's floor in the same run
# (scripts/floor.c: getrandom for rng, pread or pwrite at random offsets of
# the same image for blk, an eventfd round trip between two processes for
# the others: a kick and its interrupt with no work between; and the same
# round trip with both processes spinning, a busy host's floor); for rng
# and blk the bare calls as well (`floor request`: the kicks, interrupts,
# polls and work of the same depth, made by two bare processes, nothing
# else); and the ratios: process/thread (the median of each round's ratio,
# with its range), confined/unconfined, the process's p50 latency (depth 1
# only: a deeper kick completes a batch) and CPU per request over the
# floor's, the polling process's p50 over the busy floor's and its CPU
# over the floor's (what polling costs), the bare calls' CPU over the
# floor's (what the host charges for a request made across two processes)
# and the process's CPU over the bare calls' (what skvm's own code adds).
# REQUESTS per case (default 20000).
# Baseline for blk: fio on the same file, random 4 KiB reads with libaio at
# depth 32 and with a plain pread loop (psync, depth 1); the target is blk
# randread at depth 32 >= 80% of what fio reaches.
# The driver runs on CPU 0 and the device on CPU 1, the floors likewise
# (SKVM_BENCH_CPUS, scripts/bench-common.sh: 0,0 shares one core, without
# the polled mode and the spinning floor; none leaves it to the
# scheduler): unpinned, blk random reads at depth 32 swung here between
# ~250k and ~700k req/s with whether the scheduler put the two on one core.
# Targets: process within 5% of thread on throughput; PSS under 2 MiB.
# Absolute figures are this host's (a nested VM here, see
# docs/ARCHITECTURE.md); ratios travel better. Whether the host's other
# core is idle or busy changes wake-up latency by an order of magnitude
# (issue 22): run it on an otherwise idle machine and say which.
set -euo pipefail

prog=bench-devices
# shellcheck source=scripts/bench-common.sh
. "$(dirname "$0")/bench-common.sh"
requests_and_rounds "$@"
floor=$(build_floor)

tap=skvmb0
img=$work/disk.img
# Allocated, not sparse, and in the page cache: every case reads the same.
dd if=/dev/urandom of="$img" bs=1M count=256 status=none
cat "$img" >/dev/null

# One drive run of the benchmark's size; its key=value line.
drive() { bench_drive --requests "$requests" "$@"; }

printf 'skvm device benchmark, %s requests per case, %s rounds (%s)\n' "$requests" "$rounds" "$(host_summary)"
bench_placement
one_core=""
if [ -n "$cpus" ] && [ "${cpus%,*}" = "${cpus#*,}" ]; then
	one_core=1
	echo "  (one core for both: no polled mode and no spinning floor, which would only take turns)"
fi
# Every figure of every round: fig[KEY/MODE/FIELD] is a list of values.
declare -A fig
# keep KEY MODE COMMAND...: runs the command (a drive or a floor) and
# keeps the figures of its line; a failing command ends the benchmark.
keep() {
	local key=$1 mode=$2 line f
	line=$("${@:3}") || die "$key, $mode: '${*:3}' failed"
	for f in req_per_s mb_per_s p50_us p99_us cpu_us_per_req pss_kib per_s cpu_us_per_op; do
		fig[$key/$mode/$f]+="$(field "$line" "$f") "
	done
}
# The median of one kept field.
med() { tr ' ' '\n' <<<"${fig[$1]:-}" | grep -v '^$' | grep -v n/a | median; }
# (max - min) / median of one kept field, in percent.
spread() {
	tr ' ' '\n' <<<"${fig[$1]:-}" | grep -v '^$' | sort -n |
		awk '{ v[NR] = $1 } END { if (NR == 0) { print "n/a"; exit }
			m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
			if (m == 0) print "n/a"; else printf "%.0f%%", (v[NR] - v[1]) / m * 100 }'
}

cases=()
for depth in 1 32; do
	cases+=("rng0 4k d$depth|--device rng0 --size 4096 --depth $depth")
done
for op in randread randwrite; do
	for depth in 1 32; do
		cases+=("blk0 $op 4k d$depth|--device blk0 --disk $img --op $op --size 4096 --depth $depth")
	done
done
for size in 64 4096; do
	cases+=("console0 echo $size|--device console0 --size $size")
done
for size in 64 65536; do
	cases+=("vsock0 echo $size|--device vsock0 --size $size")
done
if [ "$(id -u)" = 0 ] && command -v ip >/dev/null; then
	bench_netns
	ip -n "$ns" tuntap add "$tap" mode tap
	ip -n "$ns" link set "$tap" mtu 1500 up
	for op in tx rx; do
		for depth in 1 32; do
			cases+=("net0 $op 1514 d$depth|--device net0 --net tap=$tap --op $op --size 1514 --depth $depth")
		done
	done
else
	echo "  (not root: no net rows; they need a network namespace and a tap)"
fi

# The floor of a case: the same work with bare syscalls.
# The bare work's loops run at least 100 000 times (a second at most):
# at 20 000, a run's first milliseconds (a cold cache, a page the host
# evicted) moved the CPU figure by up to 3x.
floor_of() {
	local n=$((requests > 100000 ? requests : 100000))
	case "$1" in
	rng0*) "$floor" getrandom 4096 "$n" ;;
	"blk0 randread"*) "$floor" randread "$img" 4096 "$n" ;;
	"blk0 randwrite"*) "$floor" randwrite "$img" 4096 "$n" ;;
	*) "$floor" eventfd "$requests" ;;
	esac
}
# The work of a case's bare calls (`floor request WORK`), for rng and blk;
# nothing for the other devices, which have none.
calls_work() {
	case "$1" in
	rng0*) echo rng:4096 ;;
	"blk0 randread"*) echo "randread:$img" ;;
	"blk0 randwrite"*) echo "randwrite:$img" ;;
	esac
}
# The bare calls of case $1 with work $2: the system calls skvm's device
# process and its driver make for its kicks, interrupts and work, and
# nothing else.
calls_of() {
	local depth=${1##*d}
	"$floor" request "$2" "$depth" $((requests / depth * depth))
}
modes=(thread process process-unconfined)
[ -n "$one_core" ] || modes+=(process-polled)
for ((r = 1; r <= rounds; r++)); do
	printf '  round %s of %s ...\n' "$r" "$rounds" >&2
	for c in "${cases[@]}"; do
		key=${c%%|*}
		read -r -a args <<<"${c#*|}"
		keep "$key" thread drive "${args[@]}" --device-mode thread
		keep "$key" process drive "${args[@]}" --device-mode process
		keep "$key" process-unconfined drive "${args[@]}" --device-mode process --unconfined
		# Two spinners on one core wait for each other's time slice.
		if [ -z "$one_core" ]; then
			keep "$key" process-polled drive "${args[@]}" --device-mode process --device-poll-us 50 --halt-poll-us 200
			keep "$key" busy-floor "$floor" eventfd-spin "$requests"
		fi
		keep "$key" floor floor_of "$key"
		# (Not `work`: bench-common.sh's scratch directory, removed at exit.)
		bare=$(calls_work "$key")
		[ -z "$bare" ] || keep "$key" calls calls_of "$key" "$bare"
		# This round's process/thread ratio.
		p=$(tr ' ' '\n' <<<"${fig[$key/process/req_per_s]}" | grep -v '^$' | tail -1)
		t=$(tr ' ' '\n' <<<"${fig[$key/thread/req_per_s]}" | grep -v '^$' | tail -1)
		fig[$key/ratio/pt]+="$(ratio "$p" "$t") "
	done
done

printf '\n  %-22s %-19s %9s %7s %8s %7s %7s %8s %8s\n' case mode "req/s" spread "MB/s" p50_us p99_us cpu_us/r pss_kib
declare -A rps
for c in "${cases[@]}"; do
	key=${c%%|*}
	for mode in "${modes[@]}"; do
		rps[$key/$mode]=$(med "$key/$mode/req_per_s")
		printf '  %-22s %-19s %9s %7s %8s %7s %7s %8s %8s\n' "$key" "$mode" "${rps[$key/$mode]}" \
			"$(spread "$key/$mode/req_per_s")" "$(med "$key/$mode/mb_per_s")" "$(med "$key/$mode/p50_us")" \
			"$(med "$key/$mode/p99_us")" "$(med "$key/$mode/cpu_us_per_req")" "$(med "$key/$mode/pss_kib")"
	done
	printf '  %-22s %-19s %9s %7s %8s %7s %7s %8s\n' "$key" "host floor" "$(med "$key/floor/per_s")" \
		"$(spread "$key/floor/per_s")" "$(med "$key/floor/mb_per_s")" "$(med "$key/floor/p50_us")" \
		"$(med "$key/floor/p99_us")" "$(med "$key/floor/cpu_us_per_op")"
	[ -z "${fig[$key/calls/per_s]:-}" ] ||
		printf '  %-22s %-19s %9s %7s %8s %7s %7s %8s\n' "$key" "bare calls" "$(med "$key/calls/per_s")" \
			"$(spread "$key/calls/per_s")" "-" "$(med "$key/calls/p50_us")" \
			"$(med "$key/calls/p99_us")" "$(med "$key/calls/cpu_us_per_op")"
	[ -z "$one_core" ] || continue
	printf '  %-22s %-19s %9s %7s %8s %7s %7s %8s\n' "$key" "busy eventfd floor" "$(med "$key/busy-floor/per_s")" \
		"$(spread "$key/busy-floor/per_s")" "-" "$(med "$key/busy-floor/p50_us")" \
		"$(med "$key/busy-floor/p99_us")" "$(med "$key/busy-floor/cpu_us_per_op")"
done

w='  %-22s %14s %14s %20s %10s %10s %12s %12s %11s %10s\n'
# shellcheck disable=SC2059 # the format is $w
printf "\n$w" case "process/thread" "(range)" "confined/unconfined" \
	"p50/floor" "cpu/floor" "polled p50/" "polled cpu/" "calls cpu/" "cpu/calls"
# shellcheck disable=SC2059
printf "$w" "" "" "" "" "" "" "busy floor" "floor" "floor" ""
for c in "${cases[@]}"; do
	key=${c%%|*}
	range=$(tr ' ' '\n' <<<"${fig[$key/ratio/pt]}" | grep -v '^$' | sort -n | sed -n '1p;$p' | paste -sd- -)
	d1() { case "$key" in *d32) echo - ;; *) ratio "$1" "$2" ;; esac; }
	# n/a where there are none (med's grep finds nothing: not an error).
	calls=$(med "$key/calls/cpu_us_per_op" || true)
	# shellcheck disable=SC2059
	printf "$w" "$key" "$(med "$key/ratio/pt")" "$range" \
		"$(ratio "${rps[$key/process]}" "${rps[$key/process-unconfined]}")" \
		"$(d1 "$(med "$key/process/p50_us")" "$(med "$key/floor/p50_us")")" \
		"$(ratio "$(med "$key/process/cpu_us_per_req")" "$(med "$key/floor/cpu_us_per_op")")" \
		"$(d1 "$(med "$key/process-polled/p50_us")" "$(med "$key/busy-floor/p50_us")")" \
		"$(ratio "$(med "$key/process-polled/cpu_us_per_req")" "$(med "$key/floor/cpu_us_per_op")")" \
		"$(ratio "$calls" "$(med "$key/floor/cpu_us_per_op")")" \
		"$(ratio "$(med "$key/process/cpu_us_per_req")" "$calls")"
done

# fio's terse output: field 8 is read IOPS.
fio_iops() {
	fio --name=baseline --filename="$img" --rw=randread --bs=4k --size=256M \
		--runtime=5 --time_based --direct=0 --invalidate=0 --minimal ${cpus:+--cpus_allowed=${cpus#*,}} \
		"$@" 2>/dev/null | cut -d';' -f8
}
if command -v fio >/dev/null; then
	aio=$(fio_iops --ioengine=libaio --iodepth=32)
	psync=$(fio_iops --ioengine=psync --iodepth=1)
	blk=${rps[blk0 randread 4k d32/process]}
	printf '\n  blk randread 4 KiB baseline on the same file (fio, 5 s each):\n'
	printf '  %-40s %9s req/s\n' "fio libaio depth 32" "$aio" "fio pread loop (psync)" "$psync" \
		"skvm blk0 process depth 32" "$blk"
	printf '  %-40s %9s   (target >= 0.80)\n' "skvm / fio libaio depth 32" "$(ratio "$blk" "$aio")"
	printf '  %-40s %9s\n' "skvm / fio pread loop" "$(ratio "$blk" "$psync")"
else
	echo "  (fio not installed: no blk baseline; scripts/setup.sh installs it)"
fi
if [ -d /sys/module/kvm_pvm ]; then
	echo "  note: this host is a nested VM (kvm_pvm); absolute figures are host-specific"
fi
