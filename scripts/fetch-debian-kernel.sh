#!/usr/bin/env bash
# Usage: scripts/fetch-debian-kernel.sh [--force]
#
# Fetches Debian's stock cloud kernel (the package that linux-image-cloud-amd64
# depends on) and installs it with a matching initramfs into
# $SKVM_GUEST_DIR/debian-cloud (default ~/.local/share/skvm/guest/debian-cloud):
#   vmlinuz             the distro bzImage, unchanged
#   initramfs.cpio.gz   busybox, guest/init as /init, guest/tools/vsock.c
#                       built static, and the kernel's virtio and vsock
#                       modules with /etc/skvm-modules listing them in load
#                       order (the cloud kernel builds its virtio drivers as
#                       modules; /init loads them)
#   version             package, version and kernel release
# The .deb is downloaded with `apt-get download` into $SKVM_CACHE/debian-cloud
# (default ~/.cache/skvm/debian-cloud) and unpacked there with dpkg-deb -x.
#
# Cached: nothing is downloaded or rebuilt while the package resolved from
# the apt lists, guest/init and busybox stay the same. --force rebuilds.
# SKVM_DEBIAN_KERNEL=linux-image-<abi>-cloud-amd64 picks a package by hand.
#
# Needs: apt lists (apt-get update), busybox-static, kmod (modinfo),
# linux-source (for gen_init_cpio). scripts/setup.sh provides them.
set -euo pipefail
# The braces make bash read the whole script before running any of it, so
# editing the script while it runs (a kernel build takes minutes) is safe.
{

prog=fetch-debian-kernel
# shellcheck source=scripts/guest-common.sh
. "$(dirname "${BASH_SOURCE[0]}")/guest-common.sh"

parse_force_arg "$@"

# Bump when the way the initramfs is built changes.
recipe=1
# Modules wanted, by module name; their dependencies come along.
wanted="virtio virtio_ring virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
virtio_blk failover net_failover virtio_net virtio_rng virtio_console
vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport fuse virtiofs"

work="$cache/debian-cloud"
out="$guest_dir/debian-cloud"
mkdir -p "$work"

# Resolves the cloud kernel package from the apt lists. apt-cache takes
# seconds, so the answer is kept until the lists change.
resolve_package() {
	local lists_key meta
	lists_key=$(stat -c '%n %s %Y' /var/lib/apt/lists/*_Packages* 2>/dev/null | digest) ||
		lists_key=none
	if [ -n "${SKVM_DEBIAN_KERNEL:-}" ]; then
		pkg=$SKVM_DEBIAN_KERNEL
		pkg_ver=$(apt-cache show --no-all-versions "$pkg" 2>/dev/null | sed -n 's/^Version: //p' | head -n 1)
	elif [ -f "$work/resolved" ] && [ "$(sed -n 1p "$work/resolved")" = "$lists_key" ]; then
		pkg=$(sed -n 2p "$work/resolved")
		pkg_ver=$(sed -n 3p "$work/resolved")
		return 0
	else
		meta=$(apt-cache show --no-all-versions linux-image-cloud-amd64 2>/dev/null) || meta=""
		# "Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)"
		pkg=$(printf '%s\n' "$meta" | sed -n 's/^Depends: \(linux-image-[0-9][^ ,]*\).*/\1/p' | head -n 1)
		pkg_ver=$(printf '%s\n' "$meta" | sed -n 's/^Depends: linux-image-[0-9][^ ,]* (= \([^)]*\)).*/\1/p' | head -n 1)
	fi
	if [ -z "$pkg" ] || [ -z "$pkg_ver" ]; then
		die "apt knows no linux-image-cloud-amd64: run apt-get update (scripts/setup.sh does)"
	fi
	[ -n "${SKVM_DEBIAN_KERNEL:-}" ] || printf '%s\n%s\n%s\n' "$lists_key" "$pkg" "$pkg_ver" >"$work/resolved"
}

need apt-get:apt dpkg-deb:dpkg modinfo:kmod gcc:build-essential flock:util-linux
find_linux_source
check_busybox
resolve_package
key=$({
	printf 'recipe %s\n' "$recipe"
	printf 'package %s %s\n' "$pkg" "$pkg_ver"
	printf 'modules %s\n' "$wanted"
	printf 'vsock %s\n' "$(digest <"$repo/guest/tools/vsock.c")"
	printf 'nolibc %s\n' "$(digest <"$repo/guest/tools/nolibc.h")"
	busybox_key
} | digest)

if [ $force = 0 ] && key_matches "$out/.key" "$key" && [ -s "$out/vmlinuz" ] && [ -s "$out/initramfs.cpio.gz" ]; then
	exit 0
fi

lock_cache
deb="$work/${pkg}_${pkg_ver//:/%3a}_amd64.deb"
if [ ! -s "$deb" ]; then
	log "downloading $pkg $pkg_ver"
	rm -f "$work"/linux-image-*.deb
	if ! (cd "$work" && apt-get download -q "$pkg=$pkg_ver") >"$work/download.log" 2>&1; then
		cat "$work/download.log" >&2
		die "apt-get download $pkg=$pkg_ver failed (offline, or stale apt lists: run apt-get update)"
	fi
	[ -s "$deb" ] || deb=$(find "$work" -maxdepth 1 -name "${pkg}_*.deb" | head -n 1)
	if [ -z "$deb" ] || [ ! -s "$deb" ]; then
		die "apt-get download left no ${pkg}_*.deb in $work"
	fi
fi

root="$work/root"
rm -rf "$root"
dpkg-deb -x "$deb" "$root"
kver=${pkg#linux-image-}
moddir="$root/lib/modules/$kver"
[ -f "$root/boot/vmlinuz-$kver" ] || die "$deb has no boot/vmlinuz-$kver"
[ -d "$moddir" ] || die "$deb has no lib/modules/$kver"

# Module name -> file (names use '_' where file names may use '-').
declare -A module_file=() is_builtin=()
while IFS= read -r f; do
	m=$(basename "$f")
	m=${m%%.ko*}
	module_file[${m//-/_}]=$f
done < <(find "$moddir" -name '*.ko*')
if [ -f "$moddir/modules.builtin" ]; then
	while IFS= read -r f; do
		m=$(basename "$f" .ko)
		is_builtin[${m//-/_}]=1
	done <"$moddir/modules.builtin"
fi

# Orders modules so that each comes after what it depends on.
declare -A visited=()
order=()
visit() {
	local m=${1//-/_} deps d
	[ -z "${visited[$m]:-}" ] || return 0
	visited[$m]=1
	if [ -n "${is_builtin[$m]:-}" ]; then
		return 0
	fi
	if [ -z "${module_file[$m]:-}" ]; then
		log "note: $kver has no module $m; skipped"
		return 0
	fi
	deps=$(modinfo -F depends "${module_file[$m]}") || die "modinfo ${module_file[$m]} failed"
	for d in ${deps//,/ }; do
		visit "$d"
	done
	order+=("$m")
}
for m in $wanted; do
	visit "$m"
done

tmp=$(mktemp -d "$work/initramfs.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
ensure_gen_init_cpio
{
	busybox_cpio_list "$tmp"
	echo "dir /lib/modules 0755 0 0"
	echo "dir /lib/modules/$kver 0755 0 0"
	for m in "${order[@]}"; do
		f=${module_file[$m]}
		case $f in
		*.ko) cp "$f" "$tmp/$m.ko" ;;
		*.ko.xz) xz -dc "$f" >"$tmp/$m.ko" ;;
		*.ko.zst) zstd -qdc "$f" >"$tmp/$m.ko" ;;
		*.ko.gz) gzip -dc "$f" >"$tmp/$m.ko" ;;
		*) die "unknown module format: $f" ;;
		esac
		echo "file /lib/modules/$kver/$m.ko $tmp/$m.ko 0644 0 0"
		echo "/lib/modules/$kver/$m.ko" >>"$tmp/skvm-modules"
	done
	touch "$tmp/skvm-modules"
	echo "file /etc/skvm-modules $tmp/skvm-modules 0644 0 0"
	# The default initramfs's vsock tool, for --vsock with this kernel.
	gcc -O2 -static -nostdlib -fno-builtin -fno-stack-protector -fno-pie -no-pie -Wall \
		-o "$tmp/vsock" "$repo/guest/tools/vsock.c" ||
		die "cannot build guest/tools/vsock.c"
	echo "file /bin/vsock $tmp/vsock 0755 0 0"
} >"$tmp/list"
write_cpio "$tmp/list" "$tmp/initramfs.cpio"
gzip -9 -n -c "$tmp/initramfs.cpio" >"$tmp/initramfs.cpio.gz"
printf '%s %s %s\n' "$pkg" "$pkg_ver" "$kver" >"$tmp/version"

mkdir -p "$out"
rm -f "$out/.key"
cp "$root/boot/vmlinuz-$kver" "$out/vmlinuz.tmp"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
mv "$tmp/initramfs.cpio.gz" "$out/initramfs.cpio.gz"
mv "$tmp/version" "$out/version"
echo "$key" >"$out/.key"
rm -rf "$root"
log "installed $pkg $pkg_ver in $out (modules: ${order[*]:-none}; initramfs $(stat -c %s "$out/initramfs.cpio.gz") bytes)"
exit
}
