#!/usr/bin/env bash
# Usage: scripts/bench-devices.sh [REQUESTS]
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
# each in three ways: a device thread in the VMM, a confined device process
# (the default), and a device process with no confinement at all
# (`--unconfined`). Printed: requests/s, MB/s, kick-to-interrupt latency
# percentiles, the device process's PSS, and the ratios process/thread and
# confined/unconfined measured in the same run. REQUESTS per case (default
# 20000).
# Baseline for blk: fio on the same file, random 4 KiB reads with libaio at
# depth 32 and with a plain pread loop (psync, depth 1); the target is blk
# randread at depth 32 >= 80% of what fio reaches.
# Targets: process within 10% of thread on throughput; PSS under 2 MiB.
# Absolute figures are this host's (a nested VM here, see
# docs/ARCHITECTURE.md); ratios travel better.
set -euo pipefail

prog=bench-devices
# shellcheck source=scripts/bench-common.sh
. "$(dirname "$0")/bench-common.sh"
requests=${1:-20000}
numbers "$requests" || die "REQUESTS must be a number"

tap=skvmb0
img=$work/disk.img
# Allocated, not sparse, and in the page cache: every case reads the same.
dd if=/dev/urandom of="$img" bs=1M count=256 status=none
cat "$img" >/dev/null


# One drive run; prints its key=value line. net runs inside the namespace.
drive() {
	local inside=()
	case " $* " in *" --net "*) inside=(ip netns exec "$ns") ;; esac
	"${inside[@]}" "$skvm" drive --requests "$requests" "$@" </dev/null
}

printf 'skvm device benchmark, %s requests per case (%s, %s)\n' "$requests" "$(uname -r)" "$(nproc) CPUs"
printf '\n  %-22s %-19s %9s %8s %7s %7s %7s %8s\n' case mode "req/s" "MB/s" p50_us p90_us p99_us pss_kib
declare -A rps
row() {
	local key=$1 mode=$2 line=$3
	rps[$key/$mode]=$(field "$line" req_per_s)
	printf '  %-22s %-19s %9s %8s %7s %7s %7s %8s\n' "$key" "$mode" "${rps[$key/$mode]}" \
		"$(field "$line" mb_per_s)" "$(field "$line" p50_us)" "$(field "$line" p90_us)" \
		"$(field "$line" p99_us)" "$(field "$line" pss_kib)"
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

for c in "${cases[@]}"; do
	key=${c%%|*}
	read -r -a args <<<"${c#*|}"
	row "$key" thread "$(drive "${args[@]}" --device-mode thread)"
	row "$key" process "$(drive "${args[@]}" --device-mode process)"
	row "$key" process-unconfined "$(drive "${args[@]}" --device-mode process --unconfined)"
done

printf '\n  %-22s %16s %22s\n' case "process/thread" "confined/unconfined"
for c in "${cases[@]}"; do
	key=${c%%|*}
	printf '  %-22s %16s %22s\n' "$key" "$(ratio "${rps[$key/process]}" "${rps[$key/thread]}")" \
		"$(ratio "${rps[$key/process]}" "${rps[$key/process-unconfined]}")"
done

# fio's terse output: field 8 is read IOPS.
fio_iops() {
	fio --name=baseline --filename="$img" --rw=randread --bs=4k --size=256M \
		--runtime=5 --time_based --direct=0 --invalidate=0 --minimal "$@" 2>/dev/null | cut -d';' -f8
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
