#!/usr/bin/env bash
# Usage: scripts/bench-boot.sh [RUNS] [--hugepages] [-- extra skvm run options]
#
# Boots the default guest RUNS times (default 5) with a command that powers
# off at once, and prints the median of:
#   exec -> first KVM_RUN   (skvm's setup: memory, VM, kernel load, vCPUs)
#     of which setup        (skvm's `run` from its start to the vCPUs' start,
#                            as its --debug "setup:" line has it)
#     of which boot images  (the loader thread: kernel and initrd into RAM)
#   exec -> guest init      (until /init prints SKVM-INIT-START)
#   exec -> exit            (until skvm has exited after the guest powered off)
#   VMM overhead            (skvm's peak RSS minus guest RAM resident)
# beside two floors measured in the same run: the same bytes spliced into a
# fresh memfd by one bare thread (scripts/floor.c `load`), and a fork+exec of
# /bin/true from this shell.
# --hugepages (root): each run boots twice, with guest RAM in 4 KiB pages
# and then in the host's 2 MiB pages (`skvm run --hugepages`), and the
# figures are printed side by side, each with its own floor (floor.c
# `load-huge`). The script grows the host's pool of 2 MiB pages by what the
# guest needs for the run and shrinks it back at its end; every free page
# of the pool is touched once before the first run (`floor touch-huge`: on
# a nested host the first touch of a page the outer host has not backed
# yet costs more than the whole load).
# Targets: first KVM_RUN within 10 ms of exec, VMM overhead under 10 MiB.
# Guest times on hosts whose KVM emulates guest kernel code (kvm_pvm) are not
# hardware figures; the setup time and the memory overhead are, though fresh
# pages cost what the host makes them cost (on a nested host, 1-3 us each).
set -euo pipefail

prog=bench-boot
# shellcheck source=scripts/bench-common.sh
. "$(dirname "$0")/bench-common.sh"
runs=5
modes=(small)
while [ $# -gt 0 ]; do
	case "$1" in
	--hugepages) modes=(small huge) ;;
	--) shift && break ;;
	*) runs=$1 ;;
	esac
	shift
done
numbers "$runs" && [ "$runs" -gt 0 ] || die "RUNS must be a whole number above 0"

now_ns() { date +%s%N; }
# Milliseconds with a fraction ("8.65") as whole microseconds.
us() { awk -v v="$1" 'BEGIN { printf "%d\n", v * 1000 }'; }

floor=$(build_floor)
guest=${SKVM_GUEST_DIR:-$HOME/.local/share/skvm/guest}
pool=/sys/kernel/mm/hugepages/hugepages-2048kB
if [ "${modes[1]:-}" = huge ]; then
	[ "$(id -u)" = 0 ] || die "--hugepages sizes the host's pool of huge pages: run as root"
	[ -w "$pool/nr_hugepages" ] || die "--hugepages: this host has no 2 MiB pages ($pool)"
	# The guest's RAM (256 MiB unless the options say), in 2 MiB pages; the
	# floor's memfd is 256 MiB.
	mem=256M
	for ((i = 1; i <= $#; i++)); do
		[ "${!i}" = --mem ] && j=$((i + 1)) && mem=${!j}
	done
	pages=$(awk -v m="$mem" 'BEGIN {
		n = m + 0; u = toupper(substr(m, length(m)))
		b = u == "G" ? n * 1024 : u == "M" ? n : u == "K" ? n / 1024 : n / 1048576
		p = int((b + 1) / 2); print (p < 128 ? 128 : p) }')
	pool_before=$(cat "$pool/nr_hugepages")
	trap 'echo "$pool_before" >"$pool/nr_hugepages"; bench_cleanup' EXIT
	echo $((pool_before + pages)) >"$pool/nr_hugepages"
	[ "$(cat "$pool/nr_hugepages")" -ge $((pool_before + pages)) ] ||
		die "--hugepages: the host could not make $pages more 2 MiB pages"
	# Every free page of the pool, touched once (the first touch of a page
	# cost ~9 ms here, a later one ~0.2 ms).
	"$floor" touch-huge "$(cat "$pool/free_hugepages")" >/dev/null
fi

now_ns() { date +%s%N; }
# Milliseconds with a fraction ("8.65") as whole microseconds.
us() { awk -v v="$1" 'BEGIN { printf "%d\n", v * 1000 }'; }

# One boot in mode $1 (small or huge), its figures added to $work/$1.*.
boot() {
	local mode=$1 opt=() start init_at="" line first="" overhead="" images="" setup="" end
	shift
	[ "$mode" = huge ] && opt=(--hugepages)
	start=$(now_ns)
	while IFS= read -r line; do
		case "$line" in
		*SKVM-INIT-START*) [ -n "$init_at" ] || init_at=$(now_ns) ;;
		*"first KVM_RUN at unix-ns"*) first=${line##* } ;;
		*"vmm overhead"*) overhead=${line##*vmm overhead } overhead=${overhead%% KiB*} ;;
		*"boot images loaded in "*) images=${line##*loaded in } images=${images%% ms*} ;;
		*"debug: setup: "*) setup=${line##*total } setup=${setup%% ms*} ;;
		esac
	done < <(
		# The exec time, taken without forking ($EPOCHREALTIME, microseconds)
		# by the process that then becomes skvm.
		echo "${EPOCHREALTIME/./}" >"$work/exec_us"
		exec "$skvm" run --debug --run true "${opt[@]}" "$@" 2>&1 </dev/null
	)
	end=$(now_ns)
	[ -n "$init_at" ] && [ -n "$first" ] || die "a $mode-page boot never reached init"
	echo $((first / 1000 - $(cat "$work/exec_us"))) >>"$work/$mode.first"
	echo $(((init_at - start) / 1000000)) >>"$work/$mode.init"
	echo $(((end - start) / 1000000)) >>"$work/$mode.exit"
	echo "$overhead" >>"$work/$mode.overhead"
	us "$setup" >>"$work/$mode.setup"
	us "$images" >>"$work/$mode.images"
	printf 'run %d, %s pages: first KVM_RUN %d us (setup %s ms, boot images %s ms), init %d ms, exit %d ms, overhead %s KiB\n' \
		"$i" "$mode" "$(tail -n 1 "$work/$mode.first")" "$setup" "$images" \
		"$(tail -n 1 "$work/$mode.init")" "$(tail -n 1 "$work/$mode.exit")" "$overhead" >&2
	# Its floor, between the runs so that both see the host alike.
	local op=load
	[ "$mode" = huge ] && op=load-huge
	"$floor" "$op" "$guest/vmlinux" "$guest/initramfs.cpio" 5 |
		sed -n 's/.*p50_us=\([0-9]*\).*/\1/p' >>"$work/$mode.floor"
}

for i in $(seq 1 "$runs"); do
	for m in "${modes[@]}"; do
		boot "$m" "$@"
	done
	t0=${EPOCHREALTIME/./}
	/bin/true
	echo $((${EPOCHREALTIME/./} - t0)) >>"$work/true"
done

# The median of figure $2 in each mode, as columns.
cols() {
	local m
	for m in "${modes[@]}"; do
		printf ' %12s' "$(median <"$work/$m.$1")"
	done
}
ratio_cols() {
	local m
	for m in "${modes[@]}"; do
		printf ' %12s' "$(ratio "$(median <"$work/$m.images")" "$(median <"$work/$m.floor")")"
	done
}

printf '\nskvm boot, median of %d runs (%s)\n' "$runs" "$(host_summary)"
[ "${#modes[@]}" = 1 ] || printf '  %-26s %12s %12s\n' "" "4 KiB pages" "2 MiB pages"
printf '  %-26s%s us   (target < 10000)\n' "exec -> first KVM_RUN" "$(cols first)"
printf '  %-26s%s us\n' "  of which setup" "$(cols setup)"
printf '  %-26s%s us\n' "  of which boot images" "$(cols images)"
printf '  %-26s%s us   (the same bytes into a fresh memfd, one bare thread)\n' \
	"floor: boot images" "$(cols floor)"
printf '  %-26s%s      (boot images / floor)\n' "" "$(ratio_cols)"
printf '  %-26s %12s us   (fork+exec+wait from this shell)\n' "floor: /bin/true" \
	"$(median <"$work/true")"
printf '  %-26s%s ms\n' "exec -> guest init" "$(cols init)"
printf '  %-26s%s ms\n' "exec -> exit" "$(cols exit)"
printf '  %-26s%s KiB  (target < 10240)\n' "VMM overhead (RSS - RAM)" "$(cols overhead)"
if [ -d /sys/module/kvm_pvm ]; then
	echo "  note: this host's KVM emulates guest kernel code; guest times are host-specific"
fi
