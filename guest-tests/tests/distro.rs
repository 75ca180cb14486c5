//! Booting from a root disk: Debian bookworm with systemd (the image of
//! scripts/build-rootfs.sh) on the default kernel, with 2 vCPUs, rng, the
//! disk and a net card, to multi-user.target and back down through the ACPI
//! power button; skvm's initramfs handing over to a disk's init
//! (switch_root, the path Debian's stock kernel takes); and roots that
//! cannot be mounted, which end in the guest's own error and a non-zero
//! exit.

// Test code: a panic is a failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use guest_tests::{
    default_guest, run_ok, run_to_exit, skvm_bin, Netns, Scratch, TestVm, GUEST_IP, HOST_IP, MIB,
};

/// A systemd boot on an emulating host takes minutes of emulated kernel
/// code (about 4 to multi-user.target here, 2 more to power off; twice
/// that before the 50 Hz tick and the image's trimming).
const DISTRO_TIMEOUT: Duration = Duration::from_secs(1500);
/// Debian's stock kernel: its initcalls and the modules udev loads take
/// most of an hour of emulated kernel code here.
const STOCK_TIMEOUT: Duration = Duration::from_secs(4800);
const TIMEOUT: Duration = Duration::from_secs(300);

/// The image scripts/build-rootfs.sh installs (scripts/test.sh builds it);
/// panics when it is missing, so the test cannot pass without it.
fn debian_image() -> PathBuf {
    let img = default_guest().join("debian-bookworm.img");
    assert!(
        img.is_file(),
        "no {}: run scripts/build-rootfs.sh",
        img.display()
    );
    img
}

/// A private, sparse copy of `image` (boots write to their root).
fn copy_of(image: &Path, scratch: &Scratch) -> PathBuf {
    let copy = scratch.path("root.img");
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(image)
            .arg(&copy),
    );
    copy
}

/// `e2fsck -fn`: the file system is clean.
fn assert_clean(image: &Path) {
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "e2fsck -fn {} failed:\n{}{}",
        image.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What the guest reports once multi-user.target is active (run by the
/// image's skvm-run.service), then it waits to be powered down. `button=1`
/// once systemd-logind watches the power button (it logs so when it opens
/// the button's input device, which udev may hand it after the target is
/// reached): a press before that would find no one listening, in the guest
/// as on hardware, so the test presses only then, and a press lost after
/// that is skvm's or the guest's bug, not the test's timing.
const REPORT: &str = "for d in /sys/class/net/*; do n=${d##*/}; [ \"$n\" = lo ] || break; done; \
    ip addr add 10.0.2.15/24 dev \"$n\" && ip link set \"$n\" up; \
    b=0; t=0; while [ $t -lt 300 ]; do \
    journalctl -b -u systemd-logind | grep -q 'Watching system buttons.*Power Button' && { b=1; break; }; \
    sleep 1; t=$((t + 1)); done; \
    echo \"SKVM-DISTRO target=$(systemctl is-active multi-user.target) button=$b \
    cpus=$(nproc) mem=$(awk '/^MemTotal/ {print $2}' /proc/meminfo) \
    rng=$(cat /sys/class/misc/hw_random/rng_current) \
    addr=$(ip -4 -o addr show dev \"$n\" | awk '{print $4}') init=$(cat /proc/1/comm)\"; \
    sleep 1000";

/// The `key=value` of the guest's report line.
fn report_value<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// About 6 minutes from exec to exit on an emulating host with the machine
/// to itself, and five times that beside another guest (two vCPUs that
/// spin on each other's locks while the host runs the other guest):
/// .config/nextest.toml runs it first and alone.
#[test]
fn debian_with_systemd_boots_to_multi_user_and_powers_off_on_the_power_button() {
    let scratch = Scratch::new("distro", "systemd");
    let image = copy_of(&debian_image(), &scratch);
    let ns = Netns::new("distro");
    let tap = "skvmd0";
    ns.tap(tap, 1500);
    ns.ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", tap]);
    let ctl = scratch.path("ctl.sock");
    let mut cmd = ns.exec(skvm_bin().to_str().unwrap());
    cmd.args(["run", "--cpus", "2", "--mem", "512M", "--rng"])
        .arg("--disk")
        .arg(format!("{},root", image.display()))
        .args(["--net", &format!("tap={tap}")])
        .arg("--ctl")
        .arg(&ctl)
        .args(["--run", REPORT]);
    let start = Instant::now();
    let mut vm = TestVm::spawn_command(cmd);
    vm.wait_for("SKVM-DISTRO", DISTRO_TIMEOUT);
    let to_multi_user = start.elapsed();
    let out = vm.output();
    let line = out.lines().find(|l| l.contains("SKVM-DISTRO")).unwrap();
    assert_eq!(report_value(line, "target"), "active", "{out}");
    assert_eq!(report_value(line, "init"), "systemd", "{out}");
    assert_eq!(
        report_value(line, "button"),
        "1",
        "systemd-logind never watched the power button:\n{out}"
    );
    assert_eq!(report_value(line, "cpus"), "2", "{out}");
    let mem: u64 = report_value(line, "mem").parse().unwrap();
    assert!(
        (400 * 1024..512 * 1024).contains(&mem),
        "MemTotal {mem} KiB:\n{out}"
    );
    assert_eq!(report_value(line, "rng"), "virtio_rng.0", "{out}");
    assert_eq!(
        report_value(line, "addr"),
        format!("{GUEST_IP}/24"),
        "{out}"
    );
    // The host reaches the guest through its net card.
    let ping = ns
        .exec("ping")
        .args(["-c", "1", "-W", "10", GUEST_IP])
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "{}\n{out}",
        String::from_utf8_lossy(&ping.stdout)
    );

    let answer = Command::new(skvm_bin())
        .arg("ctl")
        .arg(&ctl)
        .arg("powerdown")
        .output()
        .unwrap();
    assert!(answer.status.success(), "{answer:?}");
    let f = vm.wait_exit(DISTRO_TIMEOUT);
    let out = &f.output;
    eprintln!(
        "multi-user.target after {:.0} s, powered off {:.0} s after that",
        to_multi_user.as_secs_f64(),
        start.elapsed().as_secs_f64() - to_multi_user.as_secs_f64()
    );
    assert_eq!(f.code(), 0, "{out}");
    // systemd took the button press for a clean shutdown (its own power-off
    // service and final sync), not a hard stop.
    assert!(out.contains("systemd-poweroff.service"), "{out}");
    assert!(
        out.contains("systemd-shutdown[1]: Syncing filesystems"),
        "{out}"
    );
    assert!(out.contains("reboot: Power down"), "{out}");
    assert_clean(&image);
}

/// A root file system whose init is a busybox script that prints a marker:
/// skvm's initramfs mounts it and switch_roots to it.
fn busybox_root(scratch: &Scratch) -> PathBuf {
    let tree = scratch.path("tree");
    for d in ["bin", "sbin", "dev", "proc", "sys"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", tree.join("bin/busybox")).unwrap();
    std::fs::write(
        tree.join("sbin/init"),
        "#!/bin/busybox sh\n\
         /bin/busybox echo \"SKVM-SWITCHED pid=$$ root=$(/bin/busybox stat -f -c %T /)\"\n\
         /bin/busybox poweroff -f\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        tree.join("sbin/init"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let image = scratch.blank("busybox-root.img", 64 * MIB);
    run_ok(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&tree)
            .arg(&image),
    );
    image
}

#[test]
fn the_initramfs_hands_over_to_the_init_of_a_root_disk() {
    let scratch = Scratch::new("distro", "switch");
    let image = busybox_root(&scratch);
    let initrd = default_guest().join("initramfs.cpio");
    let disk = format!("{},ro,root", image.display());
    let f = run_to_exit(
        &["--initrd", initrd.to_str().unwrap(), "--disk", &disk],
        TIMEOUT,
    );
    let out = &f.output;
    assert_eq!(f.code(), 0, "{out}");
    assert!(
        out.contains("skvm-init: switching to /sbin/init on /dev/vda (ro)"),
        "{out}"
    );
    // The disk's init runs as PID 1 on ext4 (ext2/ext3 say the same).
    assert!(out.contains("SKVM-SWITCHED pid=1 root=ext2/ext3"), "{out}");
}

#[test]
fn a_root_that_cannot_be_mounted_ends_in_the_guests_error() {
    let scratch = Scratch::new("distro", "bad");
    let zeroes = scratch.blank("zero.img", 16 * MIB);
    let disk = format!("{},root", zeroes.display());
    // The default kernel mounts the root itself, without an initramfs.
    let f = run_to_exit(&["--disk", &disk], TIMEOUT);
    let out = &f.output;
    assert_ne!(f.code(), 0, "{out}");
    assert!(out.contains("VFS: Unable to mount root fs"), "{out}");
    // Through skvm's initramfs: its /init says why and ends, which the
    // kernel reports as init exiting.
    let initrd = default_guest().join("initramfs.cpio");
    let f = run_to_exit(
        &["--initrd", initrd.to_str().unwrap(), "--disk", &disk],
        TIMEOUT,
    );
    let out = &f.output;
    assert_ne!(f.code(), 0, "{out}");
    assert!(
        out.contains("skvm-init: cannot boot from root=/dev/vda"),
        "{out}"
    );
    assert!(out.contains("Attempted to kill init"), "{out}");
}

/// Boots the Debian image (a fresh copy) with `extra` skvm options and a
/// command that prints what the guest runs on; the image's skvm-run.service
/// then powers off with `systemctl poweroff`. Checks the exit, the report
/// and the file system; returns the seconds the run took.
fn boot_and_systemctl_poweroff(tag: &str, extra: &[&str], timeout: Duration) -> f64 {
    let scratch = Scratch::new("distro", tag);
    let image = copy_of(&debian_image(), &scratch);
    let disk = format!("{},root", image.display());
    let mut args = vec!["--cpus", "2", "--mem", "512M", "--rng", "--disk", &disk];
    args.extend_from_slice(extra);
    let report = "echo \"SKVM-DISTRO state=$(systemctl is-system-running --wait) \
                  kernel=$(uname -r) cpus=$(nproc)\"";
    args.extend_from_slice(&["--run", report]);
    let start = Instant::now();
    let f = run_to_exit(&args, timeout);
    let secs = start.elapsed().as_secs_f64();
    let out = &f.output;
    assert_eq!(f.code(), 0, "{out}");
    let line = out
        .lines()
        .find(|l| l.contains("SKVM-DISTRO"))
        .unwrap_or_else(|| panic!("no report:\n{out}"));
    // Every unit started: no failed one ("degraded").
    assert_eq!(report_value(line, "state"), "running", "{out}");
    assert_eq!(report_value(line, "cpus"), "2", "{out}");
    assert!(out.contains("SKVM-CMD-EXIT 0"), "{out}");
    assert!(
        out.contains("systemd-shutdown[1]: Syncing filesystems"),
        "{out}"
    );
    assert_clean(&image);
    eprintln!("{tag}: {line} ({secs:.0} s from exec to exit)");
    secs
}

#[test]
#[ignore = "slow (6.5 minutes on an Intel emulating host, about 18 on an AMD one): scripts/test-slow.sh runs it"]
fn debian_with_systemd_boots_three_times_in_a_row_and_powers_off_with_systemctl() {
    for i in 0..3 {
        boot_and_systemctl_poweroff(&format!("default{i}"), &[], DISTRO_TIMEOUT);
    }
}

#[test]
#[ignore = "slow (11.5 minutes on an Intel emulating host; over an hour on an AMD one before its later speed-ups): scripts/test-slow.sh runs it"]
fn debian_with_systemd_boots_on_debians_stock_kernel_through_skvms_initramfs() {
    let (kernel, initrd) = guest_tests::stock_kernel();
    boot_and_systemctl_poweroff(
        "stock",
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
        ],
        STOCK_TIMEOUT,
    );
}
