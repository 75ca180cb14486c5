#!/usr/bin/env bash
# Usage: scripts/bench-fs.sh [FILES] [MIB]
#
# virtio-fs (`--fs`) through the default guest, the device in a confined
# process and in a VMM thread, side by side in one run, beside the same
# work done directly on the host directory by the same busybox shell
# (busybox-static, which scripts/setup.sh installs):
#
#   create  FILES files (default 1000), each `: > fN` (open, create, close)
#   stat    each of them (`[ -e fN ]` over a glob: a listing, then lookups)
#   unlink  all of them (one `rm`)
#   write   MIB MiB (default 64) with `dd bs=1M` (O_DIRECT in the guest:
#           through its page cache the guest kernel copies every byte
#           twice more)
#   read    the same file back the same way
#
# Printed: operations/s and MB/s per mode, the host's, and the ratios
# process/thread and host/process. Guest times come from /proc/uptime (10
# ms steps), so keep each phase above a second. Absolute guest figures are
# this host's: where guest kernel code is emulated (kvm_pvm,
# docs/ARCHITECTURE.md) the guest's kernel dominates them, and the host's
# own figures are its page cache's; ratios between the two modes travel
# better.
#
# Then the same five operations from the host side, with no guest:
# `skvm drive --device fs0` sends the device the FUSE requests a guest's
# kernel would (MKNOD, LOOKUP, UNLINK, one per file, 10 000 files;
# sequential 64 KiB READ and WRITE, 4 passes over one MIB MiB file),
# process and thread side by side, beside the same work with bare syscalls
# in one host process (scripts/floor.c: open+close, fstatat, unlinkat,
# pwrite, pread): the device's own cost per request against the host's
# floor. Each figure is the median of 3 runs. As root these run
# on a tmpfs the script mounts (the disk's journal swings run to run).
set -euo pipefail

prog=bench-fs
# shellcheck source=scripts/bench-common.sh
. "$(dirname "$0")/bench-common.sh"
files=${1:-1000}
mib=${2:-64}
numbers "$files" "$mib" || die "FILES and MIB must be numbers"
[ "$files" -ge 1 ] || die "FILES must be at least 1"
[ "$mib" -ge 1 ] || die "MIB must be at least 1"
busybox=$(command -v busybox) || die "no busybox (scripts/setup.sh installs busybox-static)"
# The host's clock needs nanoseconds (busybox's date has none): coreutils'.
gnu_date=$(command -v date)
[ "$("$gnu_date" +%N)" != %N ] || die "date has no %N (coreutils' date does)"

printf 'skvm virtio-fs, %s files and %s MiB (%s)\n' "$files" "$mib" "$(host_summary)"

# The work, as one busybox sh script: $1 the clock command, $2 dd's
# O_DIRECT flags for writing and $3 for reading ("" on the host).
work_script() {
	cat <<EOF
t() { $1; }
a=\$(t)
i=0; while [ \$i -lt $files ]; do : > f\$i; i=\$((i+1)); done
b=\$(t)
for f in f*; do [ -e "\$f" ] || echo "SKVM-BENCH missing \$f"; done
c=\$(t)
rm -f f*
d=\$(t)
dd if=/dev/zero of=big bs=1M count=$mib $2 2>/dev/null
e=\$(t)
dd if=big of=/dev/null bs=1M $3 2>/dev/null
g=\$(t)
rm -f big
echo "SKVM-BENCH a=\$a b=\$b c=\$c d=\$d e=\$e g=\$g"
EOF
}

# "create stat unlink write read" rates from a SKVM-BENCH line.
rates() {
	local line=$1 a b c d e g
	a=$(field "$line" a) b=$(field "$line" b) c=$(field "$line" c)
	d=$(field "$line" d) e=$(field "$line" e) g=$(field "$line" g)
	awk -v n="$files" -v m="$mib" -v a="$a" -v b="$b" -v c="$c" -v d="$d" -v e="$e" -v g="$g" '
		function r(x, t) { return t > 0 ? x / t : 0 }
		BEGIN { printf "%.0f %.0f %.0f %.1f %.1f", r(n, b - a), r(n, c - b), r(n, d - c), r(m * 1.048576, e - d), r(m * 1.048576, g - e) }'
}

declare -A result
# The device reaches its share by path as skvm's unprivileged user.
chmod 755 "$work"
for mode in process thread; do
	dir=$work/share-$mode
	mkdir -p "$dir"
	# The device runs as skvm's unprivileged user (nobody when skvm is
	# root): the share is that user's.
	if [ "$(id -u)" = 0 ]; then chown 65534:65534 "$dir"; fi
	script="mount -t virtiofs bench /mnt && cd /mnt && $(work_script "cut -d' ' -f1 /proc/uptime" oflag=direct iflag=direct)"
	"$skvm" run --fs "tag=bench,path=$dir" --device-mode "$mode" --run "$script" \
		>"$work/$mode.log" 2>&1 </dev/null || die "$mode: the guest failed: $(tail -5 "$work/$mode.log")"
	line=$(grep -a '^SKVM-BENCH a=' "$work/$mode.log" | tr -d '\r') || die "$mode: no figures: $(tail -5 "$work/$mode.log")"
	grep -aq 'SKVM-BENCH missing' "$work/$mode.log" && die "$mode: a file the guest made is missing"
	result[$mode]=$(rates "$line")
done
host=$work/host
mkdir -p "$host"
(cd "$host" && "$busybox" sh -c "$(work_script "$gnu_date +%s.%N" '' '')") >"$work/host.log" 2>&1
result[host]=$(rates "$(grep '^SKVM-BENCH a=' "$work/host.log")")

printf '\n  %-22s %10s %10s %10s %9s %9s\n' case "create/s" "stat/s" "unlink/s" "write MB/s" "read MB/s"
for c in process thread host; do
	read -r cr st un wr rd <<<"${result[$c]}"
	label=$c
	[ "$c" = host ] && label="host directory"
	printf '  %-22s %10s %10s %10s %9s %9s\n' "$label" "$cr" "$st" "$un" "$wr" "$rd"
done
read -r pc ps pu pw pr <<<"${result[process]}"
read -r tc ts tu tw tr <<<"${result[thread]}"
read -r hc hs hu hw hr <<<"${result[host]}"
printf '  %-22s %10s %10s %10s %9s %9s\n' "process/thread" "$(ratio "$pc" "$tc")" "$(ratio "$ps" "$ts")" \
	"$(ratio "$pu" "$tu")" "$(ratio "$pw" "$tw")" "$(ratio "$pr" "$tr")"
# The host is faster by orders of magnitude here: its factor over the guest.
printf '  %-22s %10s %10s %10s %9s %9s\n' "host/process" "$(ratio "$hc" "$pc")" "$(ratio "$hs" "$ps")" \
	"$(ratio "$hu" "$pu")" "$(ratio "$hw" "$pw")" "$(ratio "$hr" "$pr")"

# From the host side: the device without a guest, against the host floor.
# Runs of a few milliseconds swing: each figure is the median of $rounds
# runs of 10 000 files or 4 passes over the MIB MiB file. As root, both
# work on a tmpfs, so that the host's disk and journal (whose commits swing
# from run to run) stay out of what is the device's cost.
mem=$work
if [ "$(id -u)" = 0 ]; then
	mem=$work/tmpfs
	mkdir -p "$mem"
	mount -t tmpfs -o size=$((mib * 2 + 256))m skvm-bench-fs "$mem"
	trap 'umount "$mem" 2>/dev/null || true; bench_cleanup' EXIT
fi
for mode in process thread; do
	mkdir -p "$mem/drive-$mode"
	if [ "$(id -u)" = 0 ]; then chown 65534:65534 "$mem/drive-$mode"; fi
done
size=65536
rounds=3
meta=10000
chunks=$((mib * 16 * 4))
drive_rate() {
	local op=$1 depth=$2 mode=$3 n=$meta line
	case "$op" in read | write) n=$chunks ;; esac
	line=$("$skvm" drive --device fs0 --fs "tag=bench,path=$mem/drive-$mode" --op "$op" \
		--device-mode "$mode" --requests "$n" --size "$size" --depth "$depth" \
		2>"$work/drive.log" </dev/null) ||
		die "skvm drive --op $op --device-mode $mode failed: $(tail -3 "$work/drive.log")"
	case "$op" in
	read | write) field "$line" mb_per_s ;;
	*) field "$line" req_per_s ;;
	esac
}
# The same work with bare syscalls in one host process (scripts/floor.c).
floor=$(build_floor)
floor_rate() {
	local op=$1 dir=$mem/floor line
	mkdir -p "$dir"
	case "$op" in
	stat | unlink) "$floor" create "$dir" "$meta" >/dev/null ;;
	esac
	case "$op" in
	create | stat | unlink)
		line=$("$floor" "$op" "$dir" "$meta")
		field "$line" per_s
		;;
	write | read)
		line=$("$floor" "$op" "$dir/big" "$size" "$chunks")
		field "$line" mb_per_s
		;;
	esac
	rm -rf "$dir"
}
# The median of $rounds runs of the command.
median_of() {
	local i
	for ((i = 0; i < rounds; i++)); do "$@"; echo; done | median
}

where=$([ "$mem" = "$work" ] && echo "the host's disk" || echo tmpfs)
printf '\n  from the host side on %s (skvm drive; %s files; %s MiB read or written 4 times in\n' "$where" "$meta" "$mib"
printf '  64 KiB requests, 1 or 16 in flight; the floor is one process, one call at a time;\n'
printf '  medians of %s runs):\n' "$rounds"
printf '  %-12s %12s %12s %12s %15s %15s\n' op process thread "host floor" process/thread floor/process
for c in create:1 stat:1 unlink:1 write:1 read:1 write:16 read:16; do
	op=${c%:*} depth=${c#*:}
	p=$(median_of drive_rate "$op" "$depth" process)
	t=$(median_of drive_rate "$op" "$depth" thread)
	h=$(median_of floor_rate "$op")
	unit=files/s
	case "$op" in read | write) unit=MB/s ;; esac
	printf '  %-12s %12s %12s %12s %15s %15s   %s\n' "$op d$depth" "$p" "$t" "$h" "$(ratio "$p" "$t")" "$(ratio "$h" "$p")" "$unit"
done
