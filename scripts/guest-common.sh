# shellcheck shell=bash
# Helpers shared by scripts/build-guest.sh and scripts/fetch-debian-kernel.sh.
# Sourced, not run. Callers set `set -euo pipefail` and `prog` (their name for
# messages) before sourcing.
#
# Environment:
#   SKVM_CACHE            work trees and downloads (default ~/.cache/skvm)
#   SKVM_GUEST_DIR        installed guests (default ~/.local/share/skvm/guest)
#   SKVM_LINUX_SOURCE     linux-source tarball (default: newest
#                         /usr/src/linux-source-*.tar.xz)
#   SKVM_JOBS             make -j for the kernel (default: nproc)

: "${prog:?set prog before sourcing guest-common.sh}"
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${SKVM_CACHE:-$HOME/.cache/skvm}
# shellcheck disable=SC2034 # used by the scripts that source this file
guest_dir=${SKVM_GUEST_DIR:-$HOME/.local/share/skvm/guest}
busybox=/bin/busybox

log() { printf '%s: %s\n' "$prog" "$*" >&2; }
die() {
	printf '%s: error: %s\n' "$prog" "$*" >&2
	exit 1
}

# Fails unless every command named is on PATH; "cmd:package" names the
# package that provides it.
need() {
	local c missing=""
	for c in "$@"; do
		command -v "${c%%:*}" >/dev/null || missing="$missing ${c#*:}"
	done
	[ -z "$missing" ] || die "missing tools; install:$missing (scripts/setup.sh does)"
}

# The one argument these scripts take: sets force=1 for --force, prints the
# script's header comment for -h/--help, refuses anything else.
parse_force_arg() {
	force=0
	case ${1:-} in
	"") ;;
	--force) force=1 ;;
	-h | --help)
		sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
		exit 0
		;;
	*) die "unknown argument '$1' (usage: $0 [--force])" ;;
	esac
}

# sha256 of stdin, shortened.
digest() { sha256sum | cut -c1-32; }

# True when file $1 exists and holds exactly the key $2.
key_matches() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }

# Sets linux_tar, linux_pkg and linux_ver (the Debian package version).
find_linux_source() {
	if [ -n "${SKVM_LINUX_SOURCE:-}" ]; then
		linux_tar=$SKVM_LINUX_SOURCE
	else
		linux_tar=$(find /usr/src -maxdepth 1 -name 'linux-source-*.tar.xz' 2>/dev/null | sort -V | tail -n 1)
	fi
	if [ -z "$linux_tar" ] || [ ! -f "$linux_tar" ]; then
		die "no /usr/src/linux-source-*.tar.xz: install linux-source (scripts/setup.sh does)"
	fi
	linux_pkg=$(basename "$linux_tar" .tar.xz)
	linux_ver=$(dpkg-query -W -f='${Version}' "$linux_pkg" 2>/dev/null) ||
		linux_ver=$(stat -c %s-%Y "$linux_tar")
}

# Checks that $busybox is the static busybox from busybox-static.
check_busybox() {
	[ -x "$busybox" ] || die "no $busybox: install busybox-static"
	if ldd "$busybox" >/dev/null 2>&1; then
		die "$busybox is dynamically linked: install busybox-static"
	fi
}

# Key material for the busybox part of an initramfs.
busybox_key() {
	printf 'init %s\n' "$(digest <"$repo/guest/init")"
	printf 'power-button %s\n' "$(digest <"$repo/guest/power-button")"
	printf 'busybox %s\n' "$(digest <"$busybox")"
	printf 'linux-source %s\n' "$linux_ver"
}

# Sets gen_cpio to a gen_init_cpio binary built from linux-source: it writes
# device nodes and root-owned files without needing root.
ensure_gen_init_cpio() {
	gen_cpio="$cache/bin/gen_init_cpio-$linux_ver"
	[ -x "$gen_cpio" ] && return 0
	local tree="$cache/linux-$linux_ver/src" src tmp
	mkdir -p "$cache/bin"
	tmp=$(mktemp -d "$cache/bin/tmp.XXXXXX")
	if [ -f "$tree/usr/gen_init_cpio.c" ]; then
		src="$tree/usr/gen_init_cpio.c"
	else
		log "extracting gen_init_cpio.c from $linux_tar"
		tar -xJf "$linux_tar" -C "$tmp" --wildcards '*/usr/gen_init_cpio.c'
		src=$(find "$tmp" -name gen_init_cpio.c | head -n 1)
		[ -n "$src" ] || die "no usr/gen_init_cpio.c in $linux_tar"
	fi
	gcc -O2 -o "$tmp/gen_init_cpio" "$src" || die "cannot compile gen_init_cpio"
	mv "$tmp/gen_init_cpio" "$gen_cpio"
	rm -rf "$tmp"
}

# Writes to stdout the gen_init_cpio list shared by every skvm initramfs:
# the directory skeleton, /dev/console, busybox with a symlink per applet,
# a minimal /etc, and guest/init as /init. $1 is a scratch directory.
busybox_cpio_list() {
	local scratch=$1 d applet
	for d in /bin /sbin /usr /usr/bin /usr/sbin /etc /lib /dev /proc /sys /mnt; do
		echo "dir $d 0755 0 0"
	done
	echo "dir /root 0700 0 0"
	echo "dir /tmp 1777 0 0"
	echo "nod /dev/console 0600 0 0 c 5 1"
	echo "file /bin/busybox $busybox 0755 0 0"
	"$busybox" --list-full | sort | while read -r applet; do
		case $applet in
		bin/busybox | linuxrc) ;;
		*) echo "slink /$applet /bin/busybox 0777 0 0" ;;
		esac
	done
	printf 'root:x:0:0:root:/root:/bin/sh\n' >"$scratch/passwd"
	printf 'root:x:0:\n' >"$scratch/group"
	echo "file /etc/passwd $scratch/passwd 0644 0 0"
	echo "file /etc/group $scratch/group 0644 0 0"
	echo "file /init $repo/guest/init 0755 0 0"
	echo "dir /etc/acpi 0755 0 0"
	echo "dir /etc/acpi/PWRF 0755 0 0"
	echo "file /etc/acpi/PWRF/00000080 $repo/guest/power-button 0755 0 0"
}

# Runs gen_init_cpio on list $1, writing the archive to $2. Fixed mtimes for
# directories, nodes and links keep the output reproducible.
write_cpio() {
	"$gen_cpio" -t 0 "$1" >"$2" || die "gen_init_cpio failed on $1"
}

# Locks $cache against a concurrent build (released when the script exits);
# builds that share nothing can take a lock of their own name.
lock_cache() {
	mkdir -p "$cache"
	exec 9>"$cache/${1:-.lock}"
	if ! flock -n 9; then
		log "waiting for another build in $cache"
		flock 9
	fi
}
