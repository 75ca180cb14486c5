#!/usr/bin/env bash
# Usage: scripts/build-rootfs.sh [--force]
#
# Builds a Debian 12 (bookworm) root file system with systemd on a raw ext4
# image, for booting a real distribution:
#
#   img=~/.local/share/skvm/guest/debian-bookworm.img
#   cp --sparse=always "$img" vm.img && skvm run --cpus 2 --disk vm.img,root
#
# (the default kernel mounts the disk itself; Debian's stock kernel boots it
# through skvm's small initramfs: add --kernel .../debian-cloud/vmlinuz
# --initrd .../debian-cloud/initramfs.cpio.gz). Log in on the console as
# root, without a password: this is a development image, not a hardened
# one. `systemctl poweroff` in the guest, or `skvm ctl SOCKET powerdown`
# from the host, ends skvm with status 0.
#
# What is in it: debootstrap's minbase, systemd as init, udev, dbus (for
# systemd-logind, which powers off on the ACPI power button), iproute2 and
# kmod; the file system labelled skvm-root and mounted by that label; a
# serial getty on the console (systemd starts one for console=ttyS0);
# skvm-run.service, which does for `skvm run --run COMMAND` what the
# default guest's /init does: once multi-user.target is reached it runs
# the command (skvm.cmd= on the kernel command line) with sh, prints
# "SKVM-CMD-EXIT <status>" on the console and powers off with systemctl;
# and, when scripts/fetch-debian-kernel.sh has fetched Debian's cloud
# kernel, its modules under /lib/modules, so that its udev can load what it
# needs. Trimmed for VMs on slow hosts: units for absent hardware and
# module preloading are masked, the journal is kept in memory, and systemd
# waits up to 15 minutes for a device (see below).
#
# Installed as $SKVM_GUEST_DIR/debian-bookworm.img (default
# ~/.local/share/skvm/guest), 2 GiB, sparse (about 300 MB used). Boots
# change the image: copy it first, as above. Cached: rebuilt only when this
# script, the package list or the stock kernel's modules change; --force
# rebuilds. SKVM_DEBIAN_MIRROR picks the mirror (default
# http://deb.debian.org/debian). Needs root (debootstrap), debootstrap and
# e2fsprogs 1.43 or later (mkfs.ext4 -d); scripts/setup.sh offers to run it
# but does not need it.
set -euo pipefail
{

prog=build-rootfs
# shellcheck source=scripts/guest-common.sh
. "$(dirname "${BASH_SOURCE[0]}")/guest-common.sh"

parse_force_arg "$@"

suite=bookworm
mirror=${SKVM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=systemd-sysv,udev,dbus,iproute2,kmod
size=2G
label=skvm-root
out="$guest_dir/debian-$suite.img"

[ "$(id -u)" = 0 ] || die "debootstrap needs root"
need debootstrap:debootstrap mkfs.ext4:e2fsprogs dpkg-deb:dpkg

# The stock kernel whose modules go in, if it was fetched.
kernel_deb=$(find "$cache/debian-cloud" -maxdepth 1 -name 'linux-image-*.deb' 2>/dev/null | sort | tail -n 1)
key=$({
	printf 'script %s\n' "$(digest <"$0")"
	printf 'suite %s mirror %s packages %s\n' "$suite" "$mirror" "$packages"
	printf 'kernel %s\n' "$(basename "${kernel_deb:-none}")"
} | digest)
if [ $force = 0 ] && key_matches "$out.key" "$key" && [ -s "$out" ]; then
	log "up to date: $out"
	exit 0
fi

lock_cache .rootfs.lock
work=$(mktemp -d "$cache/rootfs.XXXXXX")
# debootstrap leaves /proc and /sys of the target mounted when it fails.
cleanup() {
	local m
	for m in proc sys dev/pts dev; do
		umount -l "$work/root/$m" 2>/dev/null || true
	done
	rm -rf "$work"
}
trap cleanup EXIT

root="$work/root"
log "debootstrap $suite (minbase + $packages) from $mirror; minutes"
if ! debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" \
	>"$work/debootstrap.log" 2>&1; then
	tail -n 20 "$work/debootstrap.log" >&2
	die "debootstrap failed (log above)"
fi

log "configuring"
echo skvm-debian >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tskvm-debian\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
	>"$root/etc/hosts"
printf 'LABEL=%s\t/\text4\tdefaults,errors=remount-ro\t0\t1\n' "$label" >"$root/etc/fstab"
chroot "$root" passwd -d root >/dev/null
# No first-boot questions (systemd-firstboot) and a stable machine ID per
# copy of the image: empty, systemd fills it in at the first boot.
: >"$root/etc/machine-id"
ln -sf /usr/share/zoneinfo/Etc/UTC "$root/etc/localtime"

cat >"$root/usr/local/sbin/skvm-run" <<'EOF'
#!/bin/sh
# skvm-run.service: runs the command of `skvm run --run` (base64 in skvm.cmd=
# on the kernel command line), prints its status, and powers off.
exec >/dev/console 2>&1
cmd=
read -r cmdline </proc/cmdline
set -f
for word in $cmdline; do
	case $word in
	skvm.cmd=*) cmd=${word#skvm.cmd=} ;;
	esac
done
set +f
if printf '%s\n' "$cmd" | base64 -d >/run/skvm-cmd 2>/dev/null; then
	echo "SKVM-CMD-START"
	sh /run/skvm-cmd
	status=$?
else
	echo "skvm-run: skvm.cmd is not valid base64"
	status=127
fi
echo "SKVM-CMD-EXIT $status"
systemctl poweroff --no-block
EOF
chmod 0755 "$root/usr/local/sbin/skvm-run"
cat >"$root/etc/systemd/system/skvm-run.service" <<'EOF'
[Unit]
Description=Run the command given to skvm run --run, then power off
ConditionKernelCommandLine=skvm.cmd
After=multi-user.target

# simple, not oneshot: the boot is finished (systemd-analyze,
# is-system-running) while the command runs.
[Service]
Type=simple
ExecStart=/usr/local/sbin/skvm-run

[Install]
WantedBy=multi-user.target
EOF
chroot "$root" systemctl enable skvm-run.service >/dev/null 2>&1

# Lean for a VM: generators for hardware this machine does not have
# (encrypted, integrity or verity volumes, GPT auto-discovery, hibernation)
# and for SysV scripts, rc.local and offline updates, and units that load
# modules for DRM, device-mapper and EFI pstore or scrub LVM snapshots, are
# masked; apt's daily timers too (no background upgrades in a test VM).
# Each would be a process started at every boot, which costs seconds where
# guest kernel code is emulated.
mkdir -p "$root/etc/systemd/system-generators"
for g in cryptsetup integritysetup veritysetup gpt-auto hibernate-resume sysv \
	rc-local system-update; do
	ln -sf /dev/null "$root/etc/systemd/system-generators/systemd-$g-generator"
done
for u in modprobe@drm.service modprobe@dm_mod.service modprobe@efi_pstore.service \
	modprobe@configfs.service modprobe@fuse.service modprobe@loop.service \
	systemd-modules-load.service \
	e2scrub_reap.service e2scrub_all.timer apt-daily.timer apt-daily-upgrade.timer \
	dpkg-db-backup.timer; do
	ln -sf /dev/null "$root/etc/systemd/system/$u"
done
# (The modprobe@ units and systemd-modules-load load modules nothing here
# needs at boot: udev loads a device's driver when it appears.)
# Where guest kernel code is emulated, udev's coldplug takes minutes, past
# systemd's fixed 90 s wait for a device (DefaultDeviceTimeoutSec): the
# serial console's getty then failed for want of dev-ttyS0.device. The
# journal stays in memory (/run/log/journal): flushing it to /var took
# minutes there, and this image is for development, not for keeping logs.
mkdir -p "$root/etc/systemd/system.conf.d" "$root/etc/systemd/journald.conf.d"
printf '[Manager]\nDefaultDeviceTimeoutSec=15min\n' \
	>"$root/etc/systemd/system.conf.d/skvm.conf"
printf '[Journal]\nStorage=volatile\n' >"$root/etc/systemd/journald.conf.d/skvm.conf"
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin

if [ -n "$kernel_deb" ]; then
	log "adding the modules of $(basename "$kernel_deb")"
	dpkg-deb -x "$kernel_deb" "$work/kernel"
	mkdir -p "$root/lib/modules"
	cp -a "$work/kernel/lib/modules/." "$root/lib/modules/"
	for d in "$root"/lib/modules/*; do
		chroot "$root" depmod -a "$(basename "$d")"
	done
else
	log "note: Debian's cloud kernel is not fetched (scripts/fetch-debian-kernel.sh); the image has no modules for it"
fi

log "writing the $size ext4 image"
mkdir -p "$guest_dir"
rm -f "$work/image"
truncate -s "$size" "$work/image"
mkfs.ext4 -q -F -L "$label" -d "$root" "$work/image"
mv "$work/image" "$out"
echo "$key" >"$out.key"
log "installed $out ($(du -h "$out" | cut -f1) used of $size)"

exit 0
}
