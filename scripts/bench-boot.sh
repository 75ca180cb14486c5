#!/usr/bin/env bash
# Usage: scripts/bench-boot.sh [RUNS] [-- extra skvm run options]
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
# Targets: first KVM_RUN within 10 ms of exec, VMM overhead under 10 MiB.
# Guest times on hosts whose KVM emulates guest kernel code (kvm_pvm) are not
# hardware figures; the setup time and the memory overhead are, though fresh
# pages cost what the host makes them cost (on a nested host, 1-3 us each).
set -euo pipefail

prog=bench-boot
# shellcheck source=scripts/bench-common.sh
. "$(dirname "$0")/bench-common.sh"
runs=${1:-5}
shift || true
[ "${1:-}" = "--" ] && shift

now_ns() { date +%s%N; }
# Milliseconds with a fraction ("8.65") as whole microseconds.
us() { awk -v v="$1" 'BEGIN { printf "%d\n", v * 1000 }'; }

: >"$work/first"; : >"$work/init"; : >"$work/exit"; : >"$work/overhead"
: >"$work/setup"; : >"$work/images"; : >"$work/true"
floor=$(build_floor)
guest=${SKVM_GUEST_DIR:-$HOME/.local/share/skvm/guest}

for i in $(seq 1 "$runs"); do
	start=$(now_ns)
	init_at=""
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
		exec "$skvm" run --debug --run true "$@" 2>&1 </dev/null
	)
	end=$(now_ns)
	[ -n "$init_at" ] || { echo "bench-boot: run $i never reached init" >&2; exit 1; }
	echo $((first / 1000 - $(cat "$work/exec_us"))) >>"$work/first"
	echo $(((init_at - start) / 1000000)) >>"$work/init"
	echo $(((end - start) / 1000000)) >>"$work/exit"
	echo "$overhead" >>"$work/overhead"
	us "$setup" >>"$work/setup"
	us "$images" >>"$work/images"
	printf 'run %d: first KVM_RUN %d us (setup %s ms, boot images %s ms), init %d ms, exit %d ms, overhead %s KiB\n' \
		"$i" "$(tail -n 1 "$work/first")" "$setup" "$images" "$(tail -n 1 "$work/init")" \
		"$(tail -n 1 "$work/exit")" "$overhead" >&2
	# The floors, between the runs so that both see the host alike.
	"$floor" load "$guest/vmlinux" "$guest/initramfs.cpio" 5 >>"$work/load"
	t0=${EPOCHREALTIME/./}
	/bin/true
	echo $((${EPOCHREALTIME/./} - t0)) >>"$work/true"
done
sed -n 's/.*p50_us=\([0-9]*\).*/\1/p' "$work/load" >"$work/floor"

printf '\nskvm boot, median of %d runs (%s)\n' "$runs" "$(uname -r)"
first=$(median <"$work/first") images=$(median <"$work/images") load=$(median <"$work/floor")
printf '  %-26s %10s us   (target < 10000)\n' "exec -> first KVM_RUN" "$first"
printf '  %-26s %10s us\n' "  of which setup" "$(median <"$work/setup")"
printf '  %-26s %10s us   (%s x the floor)\n' "  of which boot images" "$images" \
	"$(awk -v a="$images" -v b="$load" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')"
printf '  %-26s %10s us   (the same bytes into a fresh memfd, one bare thread)\n' \
	"floor: boot images" "$load"
printf '  %-26s %10s us   (fork+exec+wait from this shell)\n' "floor: /bin/true" \
	"$(median <"$work/true")"
printf '  %-26s %10s ms\n' "exec -> guest init" "$(median <"$work/init")"
printf '  %-26s %10s ms\n' "exec -> exit" "$(median <"$work/exit")"
printf '  %-26s %10s KiB  (target < 10240)\n' "VMM overhead (RSS - RAM)" "$(median <"$work/overhead")"
if [ -d /sys/module/kvm_pvm ]; then
	echo "  note: this host's KVM emulates guest kernel code; guest times are host-specific"
fi
