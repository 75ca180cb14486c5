//! virtio-blk on real image files: the guest copies a 64 MiB pattern with
//! O_DIRECT, makes and fills an ext4 file system that the host's e2fsck
//! finds clean, cannot write a read-only disk, discards sectors so that the
//! host file becomes sparse; flushed writes survive kill -9 of the device
//! process and of the VMM; bad images are refused with one clear line.
//!
//! Where guest kernel code is emulated, buffered I/O and kernel-generated
//! data (/dev/zero, /dev/urandom) cost seconds per MiB in the guest, so the
//! scripts move data with O_DIRECT between disks the host filled.

// Test code: a panic is a failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use guest_tests::{
    alive, booted, children, default_guest, device_pids, field, run_to_exit, sigkill, Scratch,
    TestVm, CMD_EXIT_MARKER, MIB,
};

const TIMEOUT: Duration = Duration::from_secs(900);

fn read_all(p: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    File::open(p).unwrap().read_to_end(&mut v).unwrap();
    v
}

/// Bytes allocated on the host file system (what `du` counts).
fn allocated(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().blocks() * 512
}

fn disk_arg(p: &Path, opts: &str) -> String {
    format!("{}{opts}", p.display())
}

fn assert_field(output: &str, key: &str, want: &str) {
    assert_eq!(
        field(output, key).as_deref(),
        Some(want),
        "{key}:\n{output}"
    );
}

#[test]
fn three_disks_pattern_copy_read_only_and_discard() {
    let s = Scratch::new("blk", "three");
    let target = s.blank("target.img", 64 * MIB);
    let source = s.pattern("source.img", 64 * MIB, 7);
    let trim = s.pattern("trim.img", 32 * MIB, 11);
    let source_before = read_all(&source);
    let source_mtime = std::fs::metadata(&source).unwrap().mtime();
    let trim_before = allocated(&trim);
    assert!(trim_before >= 32 * MIB, "{trim_before}");

    let script = "printf 'SKVM-SERIAL '; cat /sys/block/vda/serial; echo; \
                  printf 'SKVM-RO '; cat /sys/block/vdb/ro; \
                  echo SKVM-READY; sleep 2; \
                  dd if=/dev/vdb of=/dev/vda bs=1M iflag=direct oflag=direct conv=fsync 2>/dev/null; \
                  echo SKVM-COPY $?; \
                  dd if=/dev/zero of=/dev/vdb bs=4096 count=1 oflag=direct 2>/dev/null; \
                  echo SKVM-ROWRITE $?; \
                  blkdiscard /dev/vdc; echo SKVM-DISCARD $?";
    let args = [
        "run".to_owned(),
        "--disk".to_owned(),
        disk_arg(&target, ",serial=skvm-target"),
        "--disk".to_owned(),
        disk_arg(&source, ",ro"),
        "--disk".to_owned(),
        disk_arg(&trim, ""),
        "--run".to_owned(),
        script.to_owned(),
    ];
    let mut vm = TestVm::spawn(&args);
    vm.wait_for("SKVM-READY", TIMEOUT);
    // Each disk is its own process.
    for name in ["blk0", "blk1", "blk2"] {
        let pids = device_pids(vm.pid(), name);
        assert_eq!(pids.len(), 1, "{name}: {pids:?}\n{}", vm.output());
    }
    let f = vm.wait_exit(TIMEOUT);
    let out = &f.output;
    assert_eq!(f.code(), 0, "{out}");
    assert_field(out, CMD_EXIT_MARKER, "0");
    assert_field(out, "SKVM-SERIAL", "skvm-target");
    assert_field(out, "SKVM-RO", "1");
    assert_field(out, "SKVM-COPY", "0");
    assert_ne!(field(out, "SKVM-ROWRITE").as_deref(), Some("0"), "{out}");
    assert_field(out, "SKVM-DISCARD", "0");

    // The pattern arrived whole, and the read-only disk is unchanged to the
    // byte.
    assert!(
        read_all(&target) == source_before,
        "target differs from the pattern"
    );
    assert!(read_all(&source) == source_before, "read-only disk changed");
    assert_eq!(std::fs::metadata(&source).unwrap().mtime(), source_mtime);
    // Discard punched holes: the file is as long but nearly unallocated.
    assert_eq!(std::fs::metadata(&trim).unwrap().len(), 32 * MIB);
    let trim_after = allocated(&trim);
    assert!(
        trim_after < MIB,
        "discard left {trim_after} of {trim_before} bytes allocated"
    );
    assert!(read_all(&trim).iter().all(|&b| b == 0));
}

#[test]
fn guest_ext4_is_clean_for_the_host_e2fsck() {
    let s = Scratch::new("blk", "ext4");
    let img = s.blank("fs.img", 96 * MIB);
    let initrd = default_guest().join("initramfs-disk.cpio");
    assert!(
        initrd.is_file(),
        "{} missing: run scripts/setup.sh",
        initrd.display()
    );
    // Kernel code is emulated on some hosts: no /dev/urandom or /dev/zero
    // (the kernel generating megabytes), just copies of what is there.
    let script = "mkfs.ext4 -q -F /dev/vda; echo SKVM-MKFS $?; \
                  mount -t ext4 /dev/vda /mnt; echo SKVM-MOUNT $?; \
                  cp -a /bin /etc /mnt/; echo SKVM-CP $?; \
                  cp /bin/busybox /mnt/data; \
                  printf 'SKVM-MD5 '; md5sum /mnt/data; \
                  umount /mnt; echo SKVM-UMOUNT $?";
    let f = run_to_exit(
        &[
            "--initrd",
            initrd.to_str().unwrap(),
            "--mem",
            "384M",
            "--disk",
            img.to_str().unwrap(),
            "--run",
            script,
        ],
        TIMEOUT,
    );
    let out = &f.output;
    assert_eq!(f.code(), 0, "{out}");
    for key in ["SKVM-MKFS", "SKVM-MOUNT", "SKVM-CP", "SKVM-UMOUNT"] {
        assert_field(out, key, "0");
    }
    let fsck = Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(&img)
        .output()
        .expect("e2fsck (e2fsprogs) must be installed: scripts/setup.sh does");
    assert!(
        fsck.status.success(),
        "e2fsck -fn: {}\n{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    // The data file reads back on the host as the guest wrote it.
    let dumped = s.path("data");
    let dump = Command::new("debugfs")
        .arg("-R")
        .arg(format!("dump /data {}", dumped.display()))
        .arg(&img)
        .output()
        .unwrap();
    assert!(dump.status.success(), "{dump:?}");
    let digest = Command::new("md5sum").arg(&dumped).output().unwrap();
    let host_md5 = String::from_utf8_lossy(&digest.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert_field(out, "SKVM-MD5", &host_md5);
    assert!(std::fs::metadata(&dumped).unwrap().len() > 100_000);
}

/// Writes 4 MiB through the guest's page cache with a final fsync (FLUSH),
/// then kills `victim` with SIGKILL; the data must be in the host file.
/// The guest copies one disk to another with a flush; then the `victim`
/// (the blk0 process, or the VMM) is killed with SIGKILL and the copy must
/// be on the host. A killed VMM must also leave no process behind: its
/// spawners and every device process (the two disks' and an rng's) go
/// with it.
fn flushed_writes_survive(victim: &str) {
    let s = Scratch::new("blk", victim);
    let target = s.blank("target.img", 4 * MIB);
    let source = s.pattern("source.img", 4 * MIB, 3);
    let script = "dd if=/dev/vdb of=/dev/vda bs=1M iflag=direct conv=fsync 2>/dev/null; \
                  echo SKVM-FLUSHED $?; while true; do sleep 1; done";
    let args = [
        "--disk".to_owned(),
        disk_arg(&target, ""),
        "--disk".to_owned(),
        disk_arg(&source, ",ro"),
        "--rng".to_owned(),
        "--run".to_owned(),
        script.to_owned(),
    ];
    let mut vm = booted(&args);
    vm.wait_for("SKVM-FLUSHED", TIMEOUT);
    assert_field(&vm.output(), "SKVM-FLUSHED", "0");
    let mut left = Vec::new();
    match victim {
        "device" => {
            let pids = device_pids(vm.pid(), "blk0");
            assert_eq!(pids.len(), 1, "{pids:?}");
            sigkill(pids[0]);
            vm.wait_for("device blk0", Duration::from_secs(30));
            sigkill(vm.pid());
        }
        _ => {
            left = children(vm.pid());
            assert!(!left.is_empty(), "no spawner");
            for device in ["blk0", "blk1", "rng0"] {
                let pids = device_pids(vm.pid(), device);
                assert_eq!(pids.len(), 1, "{device}: {pids:?}");
                left.extend(pids);
            }
            sigkill(vm.pid());
        }
    }
    let f = vm.wait_exit(Duration::from_secs(30));
    assert_eq!(f.status.code(), None, "{}", f.output);
    assert!(
        read_all(&target) == read_all(&source),
        "flushed data lost after kill -9 of the {victim}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let survivors = || -> Vec<u32> { left.iter().copied().filter(|p| alive(*p)).collect() };
    while !survivors().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(survivors().is_empty(), "still running: {:?}", survivors());
}

#[test]
fn flushed_writes_survive_a_killed_device_process() {
    flushed_writes_survive("device");
}

#[test]
fn flushed_writes_and_no_process_survive_a_killed_vmm() {
    flushed_writes_survive("vmm");
}

/// Runs skvm with `disk` and expects one clear error line containing
/// `why`, exit status 1, before any guest runs.
fn refused(disk: &str, why: &str) {
    let f = run_to_exit(&["--disk", disk, "--run", "true"], Duration::from_secs(30));
    assert_eq!(f.code(), 1, "{disk}: {}", f.output);
    let errors: Vec<&str> = f
        .output
        .lines()
        .filter(|l| l.starts_with("skvm: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", f.output);
    assert!(errors[0].contains(why), "{disk}: {}", errors[0]);
    assert!(
        !f.output.contains("Linux version"),
        "a guest ran:\n{}",
        f.output
    );
}

#[test]
fn bad_disks_are_refused_with_a_clear_error() {
    let s = Scratch::new("blk", "bad");
    let odd = s.path("odd.img");
    File::create(&odd).unwrap().set_len(1000).unwrap();
    refused("/nonexistent/disk.img", "/nonexistent/disk.img");
    refused(s.0.to_str().unwrap(), "is a directory");
    refused(odd.to_str().unwrap(), "not a multiple of 512");
    let ok = s.blank("ok.img", MIB);
    refused(&format!("{},cache=none", ok.display()), "unknown option");
    refused(
        &format!("{},serial=a-serial-longer-than-20", ok.display()),
        "serial",
    );
}

#[test]
fn a_second_vm_cannot_use_a_writable_image_in_use() {
    let s = Scratch::new("blk", "lock");
    let img = s.blank("shared.img", MIB);
    let first = TestVm::spawn(["run", "--disk", img.to_str().unwrap(), "--run", "sleep 600"]);
    // The image is locked before the guest starts.
    let mut first = first;
    first.wait_for("Linux version", Duration::from_secs(60));
    refused(img.to_str().unwrap(), "in use");
    refused(&format!("{},ro", img.display()), "in use");
    sigkill(first.pid());
    let _ = first.wait_exit(Duration::from_secs(30));
    // Free again once the first VM and its device process are gone.
    let f = File::options().write(true).open(&img).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        // SAFETY: flock has no memory effects; the file is open.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the image stayed locked after the VM was killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
