#!/usr/bin/env bash
# Usage: scripts/build-guest.sh [--force]
#
# Builds skvm's default guest and installs it where `skvm run` looks for it,
# $SKVM_GUEST_DIR (default ~/.local/share/skvm/guest):
#   vmlinux             the kernel as an ELF (symbols stripped; skvm loads it
#                       directly, so the guest never decompresses itself)
#   bzImage             the same kernel as a bzImage (LZ4-compressed)
#   System.map, config  its symbol map and final .config
#   initramfs.cpio.gz   busybox, guest/init as /init and guest/tools/
#                       vecprobe.c and vsock.c built static without a C
#                       library (the default initrd)
#   initramfs.cpio      the same archive uncompressed, and
#   initramfs.cpio.lz4  LZ4-compressed (legacy format), to compare unpack times
#   initramfs-disk.cpio the same plus disk tools: e2fsprogs' mke2fs as
#                       mkfs.ext4 (with its libraries) and guest/tools/
#                       blkbench.c built static, for the disk tests and
#                       scripts/bench-blk.sh
#
# The kernel is Debian's linux-source (/usr/src/linux-source-*.tar.xz) with
# the patches in guest/patches/*.patch (if any, applied with patch -p1 in name
# order) and guest/kernel.config merged on top of `make tinyconfig`. The
# source and build trees live in $SKVM_CACHE (default ~/.cache/skvm)/linux-<version>.
#
# Cached: the kernel is rebuilt only when guest/kernel.config, the patches,
# the linux-source package version or the compiler changes, and the initramfs
# only when guest/init, busybox, mke2fs or guest/tools/*.c changes; with nothing changed the script
# returns at once. --force rebuilds both (the kernel build stays incremental).
# SKVM_JOBS sets make -j (default: nproc).
#
# Needs: linux-source build-essential flex bison libelf-dev bc busybox-static
# lz4 e2fsprogs (scripts/setup.sh installs them).
set -euo pipefail
# The braces make bash read the whole script before running any of it, so
# editing the script while it runs (a kernel build takes minutes) is safe.
{

prog=build-guest
# shellcheck source=scripts/guest-common.sh
. "$(dirname "${BASH_SOURCE[0]}")/guest-common.sh"

parse_force_arg "$@"

# Bump when the way the kernel or the initramfs is built changes.
kernel_recipe=1
initramfs_recipe=1

# Options the guest cannot do without. Every line of guest/kernel.config is
# checked as well; this list guards against the fragment losing one.
required_y="64BIT SMP PRINTK TTY SERIAL_8250 SERIAL_8250_CONSOLE DEVTMPFS
DEVTMPFS_MOUNT PROC_FS SYSFS TMPFS SHMEM BLK_DEV_INITRD RD_GZIP BINFMT_ELF
BINFMT_SCRIPT PCI PCI_DIRECT PCI_MSI VIRTIO VIRTIO_PCI VIRTIO_BLK VIRTIO_NET
HW_RANDOM HW_RANDOM_VIRTIO BLOCK EXT4_FS NET INET UNIX PACKET ACPI
X86_LOCAL_APIC X86_IO_APIC KVM_GUEST MULTIUSER FUTEX EPOLL SIGNALFD TIMERFD
EVENTFD POSIX_TIMERS"
required_off="MODULES RANDOMIZE_BASE CPU_MITIGATIONS RETPOLINE
PAGE_TABLE_ISOLATION JUMP_LABEL KPROBES FTRACE DEBUG_INFO AUDIT"

need gcc:build-essential make:build-essential flex:flex bison:bison bc:bc \
	objcopy:binutils patch:patch lz4:lz4 flock:util-linux
find_linux_source
check_busybox
mke2fs=/usr/sbin/mke2fs
[ -x "$mke2fs" ] || die "no $mke2fs: install e2fsprogs (scripts/setup.sh does)"

fragment="$repo/guest/kernel.config"
patches=()
for f in "$repo"/guest/patches/*.patch; do
	if [ -f "$f" ]; then patches+=("$f"); fi
done
# Names and contents of the patches, in order.
patches_key=$(for f in "${patches[@]}"; do
	printf '%s %s\n' "$(basename "$f")" "$(digest <"$f")"
done | digest)
kernel_key=$({
	printf 'recipe %s\n' "$kernel_recipe"
	printf 'linux-source %s %s\n' "$linux_pkg" "$linux_ver"
	printf 'cc %s\n' "$(gcc -dumpfullversion 2>/dev/null || echo none)"
	printf 'patches %s\n' "$patches_key"
	cat "$fragment"
} | digest)
initramfs_key=$({
	printf 'recipe %s\n' "$initramfs_recipe"
	busybox_key
	printf 'mke2fs %s\n' "$(digest <"$mke2fs")"
	printf 'blkbench %s\n' "$(digest <"$repo/guest/tools/blkbench.c")"
	printf 'vecprobe %s\n' "$(digest <"$repo/guest/tools/vecprobe.c")"
	printf 'vsock %s\n' "$(digest <"$repo/guest/tools/vsock.c")"
	printf 'xattr %s\n' "$(digest <"$repo/guest/tools/xattr.c")"
	printf 'nolibc %s\n' "$(digest <"$repo/guest/tools/nolibc.h")"
} | digest)

kernel_files="vmlinux bzImage System.map config"
initramfs_files="initramfs.cpio initramfs.cpio.gz initramfs.cpio.lz4 initramfs-disk.cpio"

# True when the installed kernel (or initramfs) matches its key.
installed() { # installed kernel|initramfs
	local what=$1 key files f
	if [ "$what" = kernel ]; then key=$kernel_key files=$kernel_files; else key=$initramfs_key files=$initramfs_files; fi
	[ $force = 0 ] || return 1
	key_matches "$guest_dir/.$what.key" "$key" || return 1
	for f in $files; do
		[ -s "$guest_dir/$f" ] || return 1
	done
}

if installed kernel && installed initramfs; then
	exit 0
fi

lock_cache
mkdir -p "$guest_dir"
top="$cache/linux-$linux_ver"
src="$top/src"
out="$top/build"

# Drops work trees of other linux-source versions (a few hundred MB each).
prune_old_trees() {
	local d
	for d in "$cache"/linux-*; do
		if [ ! -d "$d" ] || [ "$d" = "$top" ]; then
			continue
		fi
		log "removing the stale tree $d"
		rm -rf "$d"
	done
}

extract_source() {
	[ -f "$src/Makefile" ] && return 0
	log "extracting $linux_tar"
	rm -rf "$src.tmp" "$top/applied"
	mkdir -p "$src.tmp"
	tar -xJf "$linux_tar" -C "$src.tmp" --strip-components=1
	rm -rf "$src"
	mv "$src.tmp" "$src"
}

# Brings the source tree to pristine + guest/patches. Copies of the applied
# patches are kept in $top/applied so that they can be reverted when the set
# changes; reverting and applying give the touched files new timestamps, so
# the incremental build recompiles exactly those.
apply_patches() {
	local applied="$top/applied" i
	if [ "$(cat "$applied/key" 2>/dev/null)" = "$patches_key" ]; then
		return 0
	fi
	if [ -d "$applied" ]; then
		local old=("$applied"/*.patch)
		for ((i = ${#old[@]} - 1; i >= 0; i--)); do
			[ -f "${old[i]}" ] || continue
			log "reverting $(basename "${old[i]}")"
			if ! patch -d "$src" -p1 -R -s --batch <"${old[i]}"; then
				log "cannot revert $(basename "${old[i]}"); extracting the source afresh"
				rm -rf "$src" "$applied" "$out"
				extract_source
				break
			fi
		done
	fi
	if ! apply_each; then
		# The tree was in an unknown state: start again from the tarball, and
		# from an empty build tree (its objects may be newer than the sources).
		rm -rf "$src" "$applied" "$out"
		extract_source
		apply_each || {
			rm -rf "$src" "$applied"
			die "guest/patches/$(basename "$failed") does not apply to $linux_pkg $linux_ver"
		}
	fi
	echo "$patches_key" >"$applied/key"
}

apply_each() {
	local f
	rm -rf "$top/applied"
	mkdir -p "$top/applied"
	for f in "${patches[@]}"; do
		log "applying guest/patches/$(basename "$f")"
		failed=$f
		patch -d "$src" -p1 -N -s --batch <"$f" || return 1
		cp "$f" "$top/applied/"
	done
}

# Checks the final .config against the fragment and the lists above.
check_config() {
	local config=$1 line sym bad=""
	while IFS= read -r line; do
		case $line in
		CONFIG_*=*)
			grep -qxF -- "$line" "$config" || bad="$bad\n  wanted $line, got: $(grep -E "^(# )?${line%%=*}[= ]" "$config" || echo unset)"
			;;
		"# CONFIG_"*" is not set")
			sym=${line#\# }
			sym=${sym%% *}
			if grep -q "^$sym=" "$config"; then
				bad="$bad\n  wanted $sym off, got: $(grep "^$sym=" "$config")"
			fi
			;;
		esac
	done <"$fragment"
	for sym in $required_y; do
		grep -qx "CONFIG_$sym=y" "$config" || bad="$bad\n  required CONFIG_$sym=y is missing"
	done
	for sym in $required_off; do
		if grep -q "^CONFIG_$sym=" "$config"; then
			bad="$bad\n  CONFIG_$sym must be off"
		fi
	done
	if [ -n "$bad" ]; then
		printf '%s: error: the kernel config (%s) is not what guest/kernel.config asks for:%b\n' \
			"$prog" "$config" "$bad" >&2
		exit 1
	fi
}

configure_kernel() {
	local kmake=(make -s -C "$src" O="$out" ARCH=x86_64)
	mkdir -p "$out"
	[ -f "$out/.config" ] && cp -p "$out/.config" "$out/.config.prev"
	"${kmake[@]}" tinyconfig >"$top/config.log" 2>&1 ||
		{ cat "$top/config.log" >&2; die "make tinyconfig failed"; }
	"$src/scripts/kconfig/merge_config.sh" -m -O "$out" "$out/.config" "$fragment" >>"$top/config.log" 2>&1 ||
		{ cat "$top/config.log" >&2; die "merge_config.sh failed"; }
	"${kmake[@]}" olddefconfig >>"$top/config.log" 2>&1 ||
		{ cat "$top/config.log" >&2; die "make olddefconfig failed"; }
	check_config "$out/.config"
	# Same config as last time: keep the old timestamp so that make does not
	# think anything changed.
	if [ -f "$out/.config.prev" ] && cmp -s "$out/.config" "$out/.config.prev"; then
		touch -r "$out/.config.prev" "$out/.config"
	fi
	rm -f "$out/.config.prev" "$out/.config.old"
}

build_kernel() {
	local jobs=${SKVM_JOBS:-$(nproc)} start=$SECONDS f
	prune_old_trees
	extract_source
	apply_patches
	log "configuring $linux_pkg $linux_ver (tinyconfig + guest/kernel.config)"
	configure_kernel
	log "building the kernel with make -j$jobs (log: $top/build.log; minutes on a small machine)"
	if ! make -C "$src" O="$out" ARCH=x86_64 -j"$jobs" vmlinux bzImage >"$top/build.log" 2>&1; then
		tail -n 40 "$top/build.log" >&2
		die "kernel build failed (log: $top/build.log)"
	fi
	log "kernel built in $((SECONDS - start)) s"
	rm -f "$guest_dir/.kernel.key"
	objcopy --strip-all "$out/vmlinux" "$guest_dir/vmlinux.tmp"
	cp "$out/arch/x86/boot/bzImage" "$guest_dir/bzImage.tmp"
	cp "$out/System.map" "$guest_dir/System.map.tmp"
	cp "$out/.config" "$guest_dir/config.tmp"
	for f in $kernel_files; do
		mv "$guest_dir/$f.tmp" "$guest_dir/$f"
	done
	echo "$kernel_key" >"$guest_dir/.kernel.key"
}

# gen_init_cpio lines for e2fsprogs' mke2fs as /usr/sbin/mkfs.ext4 (busybox
# only makes ext2), with the shared libraries it loads and its config.
mke2fs_cpio_list() {
	local lib dir dirs=""
	echo "file /usr/sbin/mkfs.ext4 $mke2fs 0755 0 0"
	for lib in $(ldd "$mke2fs" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
		dir=$(dirname "$lib")
		case " $dirs " in
		*" $dir "*) ;;
		*)
			dirs="$dirs $dir"
			[ "$dir" = /lib ] || echo "dir $dir 0755 0 0"
			;;
		esac
		echo "file $lib $(readlink -f "$lib") 0755 0 0"
	done
	if [ -f /etc/mke2fs.conf ]; then
		echo "file /etc/mke2fs.conf /etc/mke2fs.conf 0644 0 0"
	fi
}

build_initramfs() {
	local tmp f
	ensure_gen_init_cpio
	tmp=$(mktemp -d "$cache/initramfs.XXXXXX")
	busybox_cpio_list "$tmp" >"$tmp/list"
	# A few KiB: no C library, so every boot's initramfs stays small.
	gcc -O2 -static -nostdlib -fno-builtin -fno-stack-protector -fno-pie -no-pie -Wall \
		-o "$tmp/vecprobe" "$repo/guest/tools/vecprobe.c" ||
		die "cannot build guest/tools/vecprobe.c"
	echo "file /bin/vecprobe $tmp/vecprobe 0755 0 0" >>"$tmp/list"
	gcc -O2 -static -nostdlib -fno-builtin -fno-stack-protector -fno-pie -no-pie -Wall \
		-o "$tmp/vsock" "$repo/guest/tools/vsock.c" ||
		die "cannot build guest/tools/vsock.c"
	echo "file /bin/vsock $tmp/vsock 0755 0 0" >>"$tmp/list"
	gcc -O2 -static -nostdlib -fno-builtin -fno-stack-protector -fno-pie -no-pie -Wall \
		-o "$tmp/xattr" "$repo/guest/tools/xattr.c" ||
		die "cannot build guest/tools/xattr.c"
	echo "file /bin/xattr $tmp/xattr 0755 0 0" >>"$tmp/list"
	write_cpio "$tmp/list" "$tmp/initramfs.cpio"
	# The same plus disk tools (mkfs.ext4, blkbench) for the disk tests and
	# benchmarks: bigger, so slower to unpack where guest kernel code is
	# emulated.
	gcc -O2 -static -Wall -o "$tmp/blkbench" "$repo/guest/tools/blkbench.c" ||
		die "cannot build guest/tools/blkbench.c (static glibc from libc6-dev)"
	{
		cat "$tmp/list"
		mke2fs_cpio_list
		echo "file /usr/bin/blkbench $tmp/blkbench 0755 0 0"
	} >"$tmp/list-disk"
	write_cpio "$tmp/list-disk" "$tmp/initramfs-disk.cpio"
	gzip -9 -n -c "$tmp/initramfs.cpio" >"$tmp/initramfs.cpio.gz"
	lz4 -l -9 -q -f "$tmp/initramfs.cpio" "$tmp/initramfs.cpio.lz4"
	rm -f "$guest_dir/.initramfs.key"
	for f in $initramfs_files; do
		mv "$tmp/$f" "$guest_dir/$f"
	done
	rm -rf "$tmp"
	echo "$initramfs_key" >"$guest_dir/.initramfs.key"
	log "initramfs: $(stat -c %s "$guest_dir/initramfs.cpio") bytes, $(stat -c %s "$guest_dir/initramfs.cpio.gz") gzip'd, $(stat -c %s "$guest_dir/initramfs.cpio.lz4") lz4'd"
}

# Another run may have finished the work while this one waited for the lock.
installed kernel || build_kernel
installed initramfs || build_initramfs
log "guest ready in $guest_dir"
exit
}
