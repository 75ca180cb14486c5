# shellcheck shell=bash
# Helpers shared by the scripts/bench-*.sh benchmarks. Sourced, not run.
# Callers set `set -euo pipefail` and `prog` (their name for messages)
# before sourcing. It sets
#   repo    the checkout
#   skvm    the binary: $SKVM_BIN, else target/release/skvm (must exist)
#   work    a scratch directory
# and at exit kills the VM whose pid is in $vm_pid (when set), deletes the
# network namespace bench_netns made (killing what still runs in it), and
# removes $work.

: "${prog:?set prog before sourcing bench-common.sh}"
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
skvm=${SKVM_BIN:-$repo/target/release/skvm}

die() {
	printf '%s: %s\n' "$prog" "$*" >&2
	exit 1
}
[ -x "$skvm" ] || die "build skvm first (scripts/setup.sh --no-run)"

# The CPU's model name: figures follow the host, so every benchmark
# records it.
cpu_model() { sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1; }

# "KERNEL, N CPUs, MODEL", for a benchmark's first line.
host_summary() { printf '%s, %s CPUs, %s' "$(uname -r)" "$(nproc)" "$(cpu_model)"; }

# Whether every argument is a whole number.
numbers() {
	local a
	for a in "$@"; do
		case "$a" in '' | *[!0-9]*) return 1 ;; esac
	done
}

# Fails unless running as root; $1 says what for.
need_root() { [ "$(id -u)" = 0 ] || die "needs root ($1)"; }

work=$(mktemp -d "${TMPDIR:-/tmp}/skvm-$prog.XXXXXX")
vm_pid=""
ns=""
bench_cleanup() {
	if [ -n "$vm_pid" ]; then kill -9 "$vm_pid" 2>/dev/null || true; fi
	if [ -n "$ns" ]; then
		ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
		ip netns del "$ns" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap bench_cleanup EXIT

# Creates the network namespace $ns (skvm-PROG-PID) with its loopback up.
bench_netns() {
	ns=skvm-$prog-$$
	ip netns add "$ns"
	ip -n "$ns" link set lo up
}

# REQUESTS and ROUNDS from a benchmark's arguments ($1 and $2; defaults
# 20000 and 3), into `requests` and `rounds`.
requests_and_rounds() {
	requests=${1:-20000}
	rounds=${2:-3}
	numbers "$requests" "$rounds" || die "REQUESTS and ROUNDS must be numbers"
	[ "$rounds" -ge 1 ] || die "ROUNDS must be at least 1"
}

# Where a benchmark that calls bench_placement runs the driver and the
# device: SKVM_BENCH_CPUS=H,D (`skvm drive --cpus H,D`, and FLOOR_CPUS for
# scripts/floor.c), by default 0,1 on a host of two CPUs or more, as a vCPU
# and its device have a core each; `none` lets the scheduler place them.
# Where waking a halted core is dear (a nested VM), whether the two share
# a core changes a run's figures several times over, so unpinned runs
# swing with the scheduler's choice. Sets `cpus` (empty: unpinned) and
# prints a line saying which.
bench_placement() {
	cpus=${SKVM_BENCH_CPUS:-}
	if [ -z "$cpus" ]; then
		cpus=none
		[ "$(nproc)" -lt 2 ] || cpus=0,1
	fi
	if [ "$cpus" = none ]; then
		cpus=""
		echo "  placement: unpinned, as the scheduler places the driver and the device"
		return
	fi
	[[ "$cpus" =~ ^[0-9]+,[0-9]+$ ]] || die "SKVM_BENCH_CPUS='$cpus': expected H,D or none"
	export FLOOR_CPUS=$cpus
	echo "  placement: driver on CPU ${cpus%,*}, device on CPU ${cpus#*,} (SKVM_BENCH_CPUS=$cpus)"
}
cpus=""

# `skvm drive ARGS`, inside the namespace bench_netns made when ARGS name a
# tap (--net), pinned as bench_placement chose; prints its key=value line.
bench_drive() {
	local inside=() pin=()
	case " $* " in *" --net "*) inside=(ip netns exec "$ns") ;; esac
	[ -z "$cpus" ] || pin=(--cpus "$cpus")
	"${inside[@]}" "$skvm" drive "${pin[@]}" "$@" </dev/null
}

# a / b to two places, or n/a (b zero, or either not a number).
ratio() {
	awk -v a="$1" -v b="$2" 'BEGIN {
		num = "^[0-9]*[.]?[0-9]+([eE][-+]?[0-9]+)?$"
		if (a !~ num || b !~ num || b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'
}

# The median of the numbers on stdin, one per line, or n/a.
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print "n/a"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# The value of KEY ($2) in a line ($1) of KEY=VALUE words.
field() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p" | tr -d '\r'; }

# Builds scripts/floor.c (the host's bare-syscall floor) into $work/floor
# and prints its path.
build_floor() {
	command -v gcc >/dev/null || die "no gcc (scripts/setup.sh installs build-essential)"
	gcc -O2 -Wall -o "$work/floor" "$repo/scripts/floor.c" || die "cannot build scripts/floor.c"
	echo "$work/floor"
}
