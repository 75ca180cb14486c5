#!/usr/bin/env bash
# Usage: scripts/bench-guest-crash.sh [N] [--stock]
#
# How often guest user processes crash on this host (issue "Guest user space
# that runs, and does not crash, on emulating hosts"; docs/ARCHITECTURE.md,
# "Concurrent processes on one vCPU"). In the default guest, with 1 and then
# 2 vCPUs, one boot each:
#   pipelines    N times `n=$(cat /proc/version | wc -c)`: a subshell and two
#                freshly exec'd processes taking turns; a crash is any run
#                whose output is not the whole line;
#   fork+exec    N times `/bin/busybox true` (static), one at a time; a crash
#                is an exit status above 128 (death by a signal);
# and the kernel's "segfault at" lines of that boot. Printed: crashes per
# 1000 for each, and the host's CPU model (the crash rate follows the host:
# record it with every figure). N defaults to 200; at N=100 each boot takes
# about 5 minutes on a kvm_pvm host (forks and execs are emulated kernel
# work there).
#
# --stock runs the same with Debian's stock kernel (scripts/setup.sh fetches
# it), whose boot takes 10 minutes or more on this host, and whose user space
# does not run here yet (user-mode SYSCALL): then the line says so instead of
# a rate.
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
echo SKVM-CRASH segfaults \$(dmesg | grep -c 'segfault at')
EOF

model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
printf 'host: %s, %s cores, kernel %s, kvm module %s\n' "$model" "$(nproc)" \
	"$(uname -r)" "$([ -d /sys/module/kvm_pvm ] && echo kvm_pvm || echo kvm)"
printf '%-8s %-5s %12s %12s %10s\n' kernel vcpus "pipelines/1k" "execs/1k" segfaults

# One boot: prints the line for kernel $1 with $2 vCPUs (extra args: skvm's).
boot() {
	local name=$1 cpus=$2 out
	shift 2
	out="$work/$name-$cpus.out"
	"$skvm" run --cpus "$cpus" --run "$measure" "$@" >"$out" 2>&1 </dev/null || true
	local p e s
	p=$(sed -n 's/.*SKVM-CRASH pipelines \([0-9]*\).*/\1/p' "$out" | tail -1)
	e=$(sed -n 's/.*SKVM-CRASH execs \([0-9]*\).*/\1/p' "$out" | tail -1)
	s=$(sed -n 's/.*SKVM-CRASH segfaults \([0-9]*\).*/\1/p' "$out" | tail -1)
	if [ -z "$p" ] || [ -z "$e" ]; then
		local why="no result (see below)"
		grep -q "Attempted to kill init" "$out" && why="user space did not run (init died)"
		printf '%-8s %-5s %s\n' "$name" "$cpus" "$why"
		tail -5 "$out" | sed 's/^/    /'
		return
	fi
	printf '%-8s %-5s %12d %12d %10s\n' "$name" "$cpus" \
		$((p * 1000 / n)) $((e * 1000 / n)) "${s:-?}"
}

for cpus in 1 2; do
	boot default "$cpus"
done
if [ -n "$stock" ]; then
	d="$guest/debian-cloud"
	[ -f "$d/vmlinuz" ] || die "no stock kernel in $d: run scripts/setup.sh"
	for cpus in 1 2; do
		boot stock "$cpus" --kernel "$d/vmlinuz" --initrd "$d/initramfs.cpio.gz" --mem 512M
	done
fi
echo "N=$n per loop and boot; rates are this host's (docs/ARCHITECTURE.md)"
