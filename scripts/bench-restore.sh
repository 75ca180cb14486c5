#!/usr/bin/env bash
# Usage: scripts/bench-restore.sh [ROUNDS]
#
# What replacing a running device costs, device process vs device thread,
# in one run. In a network namespace it creates (and deletes), it boots the
# default guest once per mode with rng0, blk0 (a scratch image) and net0 (a
# tap), a control socket, and a guest reading the rng in a loop; then, per
# device, ROUNDS times (default 20) `skvm ctl SOCKET device-restart NAME`:
#   save     pause the device and take its state,
#   spawn    stop it, start a new instance (process: fork, exec, namespaces,
#            empty root, seccomp) and greet it,
#   restore  hand it the state and let it serve,
# and prints the medians, their sum (the pause the guest's I/O on that
# device sees) and the process/thread ratio of the sums. In process mode it
# also kills rng0 ROUNDS times with SIGKILL and prints the median time skvm
# took to restart it (from its log). Target: under 10 ms per device. The
# figures are host-specific (this host is itself a VM: fork and exec cost
# more than on bare metal); the ratios are the point.
#
# Then `mem-add 128M` six times (memory hotplug through virtio-mem, which
# rebuilds every device this way with the new memory map before the guest
# may plug it) and prints the median of the longest pause a device saw in
# each, and of the whole command.
set -euo pipefail

prog=bench-restore
# shellcheck source=scripts/bench-common.sh
. "$(dirname "$0")/bench-common.sh"
rounds=${1:-20}
numbers "$rounds" || die "ROUNDS must be a number"
[ "$rounds" -gt 0 ] || die "ROUNDS must be at least 1"
need_root "network namespace, tap"

tap=skvmr0
bench_netns
ip -n "$ns" tuntap add "$tap" mode tap
ip -n "$ns" link set "$tap" up
truncate -s 16M "$work/disk.img"

ms() { awk -v u="$1" 'BEGIN { if (u == "n/a") print u; else printf "%.2f", u / 1000 }'; }
# The number after "KEY": in a one-line JSON answer.
json_num() { sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p"; }

# One boot in device mode $1; sets sum_<mode>_<dev> and prints a table.
run_mode() {
	local mode=$1 sock=$work/ctl.$1 vm dev i a s p r
	ip netns exec "$ns" "$skvm" run --device-mode "$mode" --rng --disk "$work/disk.img" \
		--net "tap=$tap" --ctl "$sock" --restart-limit 1000 --hotplug-mem 768M \
		--run "echo SKVM-READY; while true; do dd if=/dev/hwrng of=/tmp/r bs=64 count=1 2>/dev/null; sleep 1; done" \
		</dev/null >"$work/out.$mode" 2>&1 &
	vm=$!
	until grep -q SKVM-READY "$work/out.$mode"; do
		kill -0 "$vm" 2>/dev/null || { echo "bench-restore: the guest did not start ($mode):" >&2; cat "$work/out.$mode" >&2; exit 1; }
		sleep 1
	done
	echo "  $mode mode (medians of $rounds, ms):"
	printf '    %-6s %8s %8s %8s %8s\n' device save spawn restore total
	for dev in rng0 blk0 net0; do
		: >"$work/save" ; : >"$work/spawn" ; : >"$work/restore" ; : >"$work/total"
		for ((i = 0; i < rounds; i++)); do
			a=$("$skvm" ctl "$sock" device-restart "$dev") || { echo "bench-restore: $dev: $a" >&2; exit 1; }
			s=$(json_num save_us <<<"$a"); p=$(json_num spawn_us <<<"$a"); r=$(json_num restore_us <<<"$a")
			echo "$s" >>"$work/save"; echo "$p" >>"$work/spawn"; echo "$r" >>"$work/restore"
			echo $((s + p + r)) >>"$work/total"
		done
		local t
		t=$(median <"$work/total")
		printf '    %-6s %8s %8s %8s %8s\n' "$dev" "$(ms "$(median <"$work/save")")" \
			"$(ms "$(median <"$work/spawn")")" "$(ms "$(median <"$work/restore")")" "$(ms "$t")"
		printf -v "sum_${mode}_${dev}" '%s' "$t"
	done
	if [ "$mode" = process ]; then
		local pid
		for ((i = 0; i < rounds; i++)); do
			pid=$("$skvm" ctl "$sock" status | sed -n 's/.*"name":"rng0","pid":\([0-9]*\).*/\1/p')
			[ -n "$pid" ] || { echo "bench-restore: no rng0 process" >&2; exit 1; }
			kill -9 "$pid"
			until [ "$(grep -c 'device rng0 (pid .*restarted it' "$work/out.$mode")" -gt "$i" ]; do sleep 0.05; done
		done
		crash_ms=$(sed -n 's/.*device rng0 (pid .*restarted it (pid [0-9]*) in \([0-9.]*\) ms.*/\1/p' "$work/out.$mode" | median)
		echo "    rng0 killed with SIGKILL: restarted in $crash_ms ms (median of $rounds, from skvm's log)"
	fi
	: >"$work/pause"; : >"$work/whole"
	local t0 t1
	for ((i = 0; i < 6; i++)); do
		t0=$(date +%s%N)
		a=$("$skvm" ctl "$sock" mem-add 128M) || { echo "bench-restore: mem-add: $a" >&2; exit 1; }
		t1=$(date +%s%N)
		json_num longest_pause_us <<<"$a" >>"$work/pause"
		echo $(((t1 - t0) / 1000)) >>"$work/whole"
	done
	echo "    mem-add 128M (6 times, every device rebuilt): longest device pause $(ms "$(median <"$work/pause")") ms, whole command $(ms "$(median <"$work/whole")") ms (medians)"
	"$skvm" ctl "$sock" shutdown >/dev/null
	wait "$vm" || { echo "bench-restore: skvm failed ($mode):" >&2; cat "$work/out.$mode" >&2; exit 1; }
}

echo "bench-restore: device-restart of each device, $rounds rounds, one boot per mode"
run_mode process
run_mode thread
echo "  process/thread ratio of the totals (the cost of a new sandbox):"
for dev in rng0 blk0 net0; do
	p="sum_process_$dev"; t="sum_thread_$dev"
	printf '    %-6s %8s\n' "$dev" "$(ratio "${!p}" "${!t}")"
done
