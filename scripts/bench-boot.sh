#!/usr/bin/env bash
# Usage: scripts/bench-boot.sh [RUNS] [-- extra skvm run options]
#
# Boots the default guest RUNS times (default 5) with a command that powers
# off at once, and prints the median of:
#   exec -> first KVM_RUN   (skvm's setup: memory, VM, kernel load, vCPUs)
#   exec -> guest init      (until /init prints SKVM-INIT-START)
#   exec -> exit            (until skvm has exited after the guest powered off)
#   VMM overhead            (skvm's peak RSS minus guest RAM resident)
# Targets: first KVM_RUN within 10 ms of exec, VMM overhead under 10 MiB.
# Guest times on hosts whose KVM emulates guest kernel code (kvm_pvm) are not
# hardware figures; the setup time and the memory overhead are.
set -euo pipefail

prog=bench-boot
# shellcheck source=scripts/bench-common.sh
. "$(dirname "$0")/bench-common.sh"
runs=${1:-5}
shift || true
[ "${1:-}" = "--" ] && shift

now_ns() { date +%s%N; }

: >"$work/first"; : >"$work/init"; : >"$work/exit"; : >"$work/overhead"

for i in $(seq 1 "$runs"); do
	start=$(now_ns)
	init_at=""
	while IFS= read -r line; do
		case "$line" in
		*SKVM-INIT-START*) [ -n "$init_at" ] || init_at=$(now_ns) ;;
		*"first KVM_RUN at unix-ns"*) first=${line##* } ;;
		*"vmm overhead"*) overhead=${line##*vmm overhead } overhead=${overhead%% KiB*} ;;
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
	printf 'run %d: first KVM_RUN %d us, init %d ms, exit %d ms, overhead %s KiB\n' "$i" \
		"$(tail -n 1 "$work/first")" "$(tail -n 1 "$work/init")" "$(tail -n 1 "$work/exit")" "$overhead" >&2
done

printf '\nskvm boot, median of %d runs (%s)\n' "$runs" "$(uname -r)"
printf '  %-26s %10s us   (target < 10000)\n' "exec -> first KVM_RUN" "$(median <"$work/first")"
printf '  %-26s %10s ms\n' "exec -> guest init" "$(median <"$work/init")"
printf '  %-26s %10s ms\n' "exec -> exit" "$(median <"$work/exit")"
printf '  %-26s %10s KiB  (target < 10240)\n' "VMM overhead (RSS - RAM)" "$(median <"$work/overhead")"
if [ -d /sys/module/kvm_pvm ]; then
	echo "  note: this host's KVM emulates guest kernel code; guest times are host-specific"
fi
