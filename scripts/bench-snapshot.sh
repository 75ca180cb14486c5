#!/usr/bin/env bash
# Usage: scripts/bench-snapshot.sh [RUNS]
#
# Whole-VM snapshots (docs/ARCHITECTURE.md, "Snapshots"), side by side in
# one run for a 256 MiB and a 2 GiB default guest with an rng, each with
# its devices in processes and in threads: the guest boots and counts; it
# is snapshotted (`skvm ctl SOCK snapshot DIR`), then restored RUNS times
# (default 3; `skvm run --restore DIR`). Printed per case:
#   state        bytes of the state file
#   data MiB     guest memory written (pages that hold data) / on disk
#   snap ms      the snapshot: state, then memory (skvm's own figures)
#   restore ms   exec -> first KVM_RUN of the restored VM (median)
#   split ms     of that: memory refilled / devices spawned / vCPUs and
#                irqchips / devices restored (skvm's log, median)
#   tick ms      exec -> the guest's next line on the console (median)
#   boot ms      exec -> the booted guest's first line, and boot/restore
# Guest times on hosts whose KVM emulates guest kernel code (kvm_pvm) are
# not hardware figures; the restore and snapshot times are skvm's and the
# host's.
set -euo pipefail
prog=bench-snapshot
# shellcheck source=scripts/bench-common.sh
. "$(dirname "$0")/bench-common.sh"
runs=${1:-3}
numbers "$runs" && [ "$runs" -gt 0 ] || die "RUNS must be a whole number above 0"

now_us() { echo "${EPOCHREALTIME/./}"; }
counter='i=0; while true; do echo "SKVM-TICK $i"; i=$((i + 1)); sleep 1; done'

# Waits up to $2 seconds for $1 to contain $3.
wait_for() {
	local t=0
	until grep -q "$3" "$1" 2>/dev/null; do
		sleep 0.05
		t=$((t + 1))
		[ "$t" -lt $(($2 * 20)) ] || return 1
	done
}

# Microseconds of part $2 ("memory", "device spawn", ...) in a restore log.
part_us() { sed -n "s/.*restored from .*$2 \([0-9]*\) us.*/\1/p" "$1" | head -1; }

model=$(cpu_model)
printf 'host: %s, %s cores, kernel %s\n' "$model" "$(nproc)" "$(uname -r)"
printf '%-5s %-8s %8s %13s %11s %10s %23s %8s %8s %6s\n' mem mode state "data MiB" "snap ms" \
	"restore ms" "split ms (mem/spawn/vcpu/dev)" "tick ms" "boot ms" "ratio"

for mem in 256M 2G; do
	for mode in process thread; do
		case_dir="$work/$mem-$mode"
		mkdir -p "$case_dir"
		sock="$case_dir/ctl.sock"
		log="$case_dir/boot.log"
		start=$(now_us)
		"$skvm" run --mem "$mem" --rng --device-mode "$mode" --ctl "$sock" --run "$counter" \
			>"$log" 2>&1 </dev/null &
		vm_pid=$!
		wait_for "$log" 900 "SKVM-TICK 0" || die "$mem $mode: the guest never counted: $(tail -3 "$log")"
		boot_ms=$((($(now_us) - start) / 1000))
		wait_for "$log" 60 "SKVM-TICK 2" || die "$mem $mode: the guest stopped counting"
		answer=$("$skvm" ctl "$sock" snapshot "$case_dir/snap")
		wait "$vm_pid" || die "$mem $mode: skvm did not stop cleanly after its snapshot"
		vm_pid=""
		num() { sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p" <<<"$answer"; }
		state=$(num state_bytes)
		data=$(($(num memory_bytes) >> 20))
		disk=$(($(du -k "$case_dir/snap/memory" | cut -f1) >> 10))
		snap_ms=$(awk -v a="$(num state_us)" -v b="$(num memory_us)" 'BEGIN { printf "%.1f", (a + b) / 1000 }')
		: >"$case_dir/first"; : >"$case_dir/tick"
		for p in memory "device spawn" "vcpus and irqchips" "device restore"; do : >"$case_dir/$p"; done
		for r in $(seq 1 "$runs"); do
			rlog="$case_dir/restore-$r.log"
			rm -f "$sock"
			exec_us=$(now_us)
			"$skvm" run --restore "$case_dir/snap" --rng --device-mode "$mode" --ctl "$sock" --debug \
				>"$rlog" 2>&1 </dev/null &
			vm_pid=$!
			wait_for "$rlog" 60 "SKVM-TICK" || die "$mem $mode: the restored guest never counted: $(tail -3 "$rlog")"
			echo $((($(now_us) - exec_us) / 1000)) >>"$case_dir/tick"
			"$skvm" ctl "$sock" shutdown >/dev/null
			wait "$vm_pid" || true
			vm_pid=""
			first=$(sed -n 's/.*first KVM_RUN at unix-ns \([0-9]*\).*/\1/p' "$rlog")
			echo $((first / 1000 - exec_us)) >>"$case_dir/first"
			for p in memory "device spawn" "vcpus and irqchips" "device restore"; do
				part_us "$rlog" "$p" >>"$case_dir/$p"
			done
		done
		ms() { median <"$case_dir/$1" | awk '{ printf "%.1f", $1 / 1000 }'; }
		restore_ms=$(ms first)
		split="$(ms memory)/$(ms "device spawn")/$(ms "vcpus and irqchips")/$(ms "device restore")"
		tick_ms=$(median <"$case_dir/tick")
		printf '%-5s %-8s %8s %13s %11s %10s %30s %8s %8s %6s\n' "$mem" "$mode" "$state" \
			"$data / $disk" "$snap_ms" "$restore_ms" "$split" "$tick_ms" "$boot_ms" \
			"$(ratio "$boot_ms" "$restore_ms")"
	done
done
echo "restore ms: exec -> first KVM_RUN; ratio: boot ms / restore ms; $runs restores per case"
if [ -d /sys/module/kvm_pvm ]; then
	echo "note: this host's KVM emulates guest kernel code; boot times are host-specific"
fi
