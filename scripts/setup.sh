#!/usr/bin/env bash
# Usage: scripts/setup.sh [--no-run] [skvm run options...]
#
# The one command to run on a fresh Debian 12 machine (as root): it sets skvm
# up and boots the default guest to a shell on this terminal.
#   1. installs the Debian packages that skvm and its guests need (apt-get
#      update only when something is missing; nothing at all when every
#      package is there), and Rust through rustup if cargo is missing;
#   2. builds the default guest: a lean kernel from linux-source and a busybox
#      initramfs (scripts/build-guest.sh);
#   3. fetches Debian's stock cloud kernel and builds its initramfs
#      (scripts/fetch-debian-kernel.sh; SKVM_NO_DEBIAN_KERNEL=1 skips it);
#   4. builds skvm: cargo build --release --workspace;
#   5. with SKVM_ROOTFS=1, builds the Debian image with systemd
#      (scripts/build-rootfs.sh); otherwise says how to;
#   6. unless --no-run, replaces itself with `target/release/skvm run` and the
#      options given, e.g. `scripts/setup.sh --cpus 2 --run 'nproc'`.
# Every step is cached, so a second run takes seconds. Works without a
# terminal (CI=true, stdin closed).
set -euo pipefail
# The braces make bash read the whole script before running any of it, so
# editing the script while it runs (a kernel build takes minutes) is safe.
{

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export DEBIAN_FRONTEND=noninteractive

log() { printf 'setup: %s\n' "$*" >&2; }
die() {
	printf 'setup: error: %s\n' "$*" >&2
	exit 1
}

run=1
case ${1:-} in
--no-run)
	run=0
	shift
	;;
-h | --help)
	sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
	exit 0
	;;
esac

# Kernel build, initramfs tools, apt-get download and dpkg-deb, what the guest
# tests use on the host, fio (scripts/bench-devices.sh compares blk with it),
# iputils-ping (the net tests ping guests from the host), debootstrap
# (scripts/build-rootfs.sh) and what rustup needs.
packages="build-essential patch flex bison libelf-dev bc cpio xz-utils lz4 kmod
busybox-static linux-source e2fsprogs iproute2 util-linux ca-certificates curl fio
iputils-ping debootstrap"

missing=()
for p in $packages; do
	[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null)" = "ii " ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	[ "$(id -u)" = 0 ] || die "run as root to install: ${missing[*]}"
	log "installing ${missing[*]}"
	apt_install() {
		apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
	}
	# Fresh machines (and containers) often have no package lists yet.
	if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null || ! apt_install; then
		log "apt-get update"
		apt-get update -q </dev/null
		apt_install
	fi
fi

# The stock-kernel fetch needs apt lists too, even when no package was missing.
if [ "${SKVM_NO_DEBIAN_KERNEL:-0}" != 1 ] && [ "$(id -u)" = 0 ] &&
	! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
	log "apt-get update"
	apt-get update -q </dev/null
fi

if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
	export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null; then
	# rust-toolchain.toml pins the toolchain; rustup fetches it on first use.
	log "installing Rust with rustup (into ~/.cargo and ~/.rustup)"
	curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
		sh -s -- -y -q --profile minimal --default-toolchain none
	export PATH="$HOME/.cargo/bin:$PATH"
fi

"$repo/scripts/build-guest.sh"
if [ "${SKVM_NO_DEBIAN_KERNEL:-0}" != 1 ]; then
	"$repo/scripts/fetch-debian-kernel.sh"
fi

log "cargo build --release --workspace"
cargo build --release --workspace --quiet

if [ "${SKVM_ROOTFS:-0}" = 1 ]; then
	"$repo/scripts/build-rootfs.sh"
elif [ ! -s "${SKVM_GUEST_DIR:-$HOME/.local/share/skvm/guest}/debian-bookworm.img" ]; then
	log "for a Debian guest with systemd on a disk: scripts/build-rootfs.sh (or SKVM_ROOTFS=1 $0)"
fi

if [ $run = 1 ]; then
	exec "$repo/target/release/skvm" run "$@"
fi
exit
}
