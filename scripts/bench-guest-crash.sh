#!/usr/bin/env bash
# Usage: scripts/bench-guest-crash.sh [N] [--stock]
#
# How often guest user processes crash on this host (issue "Guest user space
# that runs, and does not crash, on emulating hosts"; docs/ARCHITECTURE.md,
# "Vector state of guest processes"). In the default guest, with 1 and then
# 2 vCPUs, one boot each:
#   pipelines    N times `n=$(cat /proc/version | wc -c)`: a subshell and two
#                freshly exec'd processes taking turns; a crash is any run
#                whose output is not the whole line;
#   fork+exec    N times `/bin/busybox true` (static), one at a time; a crash
#                is an exit status above 128 (death by a signal);
#   syscalls     `dd bs=1` of 100*N bytes from /dev/zero to /dev/null (two
#                system calls a byte), timed in the guest;
# and the kernel's "segfault at" lines of that boot. Printed: crashes per
# 1000 for each, the guest's time per system call, how many user-mode
# SYSCALLs skvm completed for the guest kernel and its own time per
# completion or page fault it stopped at (docs/ARCHITECTURE.md, "User-mode
# SYSCALL"; 0 where the host's KVM needs no help), the minutes the boot
# took, and the host's CPU model (the figures follow the host: record it
# with every one). N defaults to 200. Forks, execs and system calls are
# emulated kernel work on a kvm_pvm host: at N=1000 a boot of the default
# kernel with 1 vCPU took 16 minutes on an Intel Xeon host and 54 on an AMD
# EPYC one.
#
# --stock runs the same with Debian's stock kernel as well (scripts/setup.sh
# fetches it; skvm completes its system calls on emulating hosts), whose
# boot and module loading take 15 minutes or more on this host.
#
# SKVM_CRASH_VCPUS lists the vCPU counts to boot with (default "1 2"), for
# instance "1" to keep a long run on one host core (taskset -c 1).
# shellcheck source=scripts/bench-common.sh
set -euo pipefail
prog=bench-guest-crash
n=200
stock=""
for a in "$@"; do
	case "$a" in
	--stock) stock=1 ;;
	*) n=$a ;;
	esac
done
source "$(dirname "$0")/bench-common.sh"
numbers "$n" && [ "$n" -gt 0 ] || die "N must be a whole number above 0"
vcpus=${SKVM_CRASH_VCPUS:-1 2}
for cpus in $vcpus; do
	numbers "$cpus" && [ "$cpus" -gt 0 ] || die "SKVM_CRASH_VCPUS: $cpus is not a vCPU count"
done
guest=${SKVM_GUEST_DIR:-$HOME/.local/share/skvm/guest}

# The guest's side: both loops, then the kernel's count of segfaults.
read -r -d '' measure <<EOF || true
f=0; i=0
while [ \$i -lt $n ]; do
	v=\$(cat /proc/version | wc -c)
	[ "\$v" -gt 10 ] 2>/dev/null || f=\$((f + 1))
	i=\$((i + 1))
done
echo SKVM-CRASH pipelines \$f
e=0; i=0
while [ \$i -lt $n ]; do
	/bin/busybox true
	[ \$? -le 128 ] || e=\$((e + 1))
	i=\$((i + 1))
done
echo SKVM-CRASH execs \$e
read -r t0 _ </proc/uptime
dd if=/dev/zero of=/dev/null bs=1 count=\$(($n * 100)) 2>/dev/null
read -r t1 _ </proc/uptime
echo SKVM-CRASH syscall-ms \$t0 \$t1
echo SKVM-CRASH segfaults \$(dmesg | grep -c 'segfault at')
EOF

model=$(cpu_model)
printf 'host: %s, %s cores, kernel %s, kvm module %s\n' "$model" "$(nproc)" \
	"$(uname -r)" "$([ -d /sys/module/kvm_pvm ] && echo kvm_pvm || echo kvm)"
printf '%-8s %-5s %12s %12s %10s %12s %10s %12s %8s\n' kernel vcpus "pipelines/1k" "execs/1k" \
	segfaults "us/syscall" completed "skvm us/each" minutes

# One boot: prints the line for kernel $1 with $2 vCPUs (extra args: skvm's).
boot() {
	local name=$1 cpus=$2 out
	shift 2
	out="$work/$name-$cpus.out"
	local t0=$SECONDS
	"$skvm" run --debug --cpus "$cpus" --run "$measure" "$@" >"$out" 2>&1 </dev/null || true
	local p e s t c u
	p=$(sed -n 's/.*SKVM-CRASH pipelines \([0-9]*\).*/\1/p' "$out" | tail -1)
	e=$(sed -n 's/.*SKVM-CRASH execs \([0-9]*\).*/\1/p' "$out" | tail -1)
	s=$(sed -n 's/.*SKVM-CRASH segfaults \([0-9]*\).*/\1/p' "$out" | tail -1)
	# Guest uptime in seconds with two decimals, before and after the dd.
	t=$(sed -n 's/.*SKVM-CRASH syscall-ms \([0-9.]*\) \([0-9.]*\).*/\1 \2/p' "$out" | tail -1 |
		awk -v n="$n" '{ printf "%.0f", ($2 - $1) * 1e6 / (n * 200) }')
	c=$(sed -n 's/.*syscalls completed \([0-9]*\).*/\1/p' "$out" | tail -1)
	u=$(sed -n 's/.*, \([0-9]*\) us in skvm per syscall.*/\1/p' "$out" | tail -1)
	if [ -z "$p" ] || [ -z "$e" ]; then
		local why="no result (see below)"
		grep -q "Attempted to kill init" "$out" && why="user space did not run (init died)"
		printf '%-8s %-5s %s\n' "$name" "$cpus" "$why"
		tail -5 "$out" | sed 's/^/    /'
		return
	fi
	printf '%-8s %-5s %12d %12d %10s %12s %10s %12s %8d\n' "$name" "$cpus" \
		$((p * 1000 / n)) $((e * 1000 / n)) "${s:-?}" "${t:-?}" "${c:-?}" "${u:-?}" \
		$(((SECONDS - t0 + 30) / 60))
}

for cpus in $vcpus; do
	boot default "$cpus"
done
if [ -n "$stock" ]; then
	d="$guest/debian-cloud"
	[ -f "$d/vmlinuz" ] || die "no stock kernel in $d: run scripts/setup.sh"
	for cpus in $vcpus; do
		boot stock "$cpus" --kernel "$d/vmlinuz" --initrd "$d/initramfs.cpio.gz" --mem 512M
	done
fi
echo "N=$n per loop and boot; rates are this host's (docs/ARCHITECTURE.md)"
