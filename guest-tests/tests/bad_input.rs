//! Bad input gets one clear error line and a non-zero exit, and leaves no
//! process behind.

// Test code: a panic is a failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use guest_tests::{default_guest, run_to_exit, skvm_bin, Finished, TestVm};

const QUICK: Duration = Duration::from_secs(30);

/// A scratch directory, removed when dropped (also when a test fails).
struct TmpDir(PathBuf);

impl TmpDir {
    fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("skvm-bad-input-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        // The directory may be unreadable by design: make it removable.
        let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o755));
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Asserts a clean failure: non-zero status and exactly one `skvm: error:`
/// line containing `needle`.
fn assert_one_error(f: &Finished, needle: &str) {
    assert_ne!(f.code(), 0, "expected failure:\n{}", f.output);
    let errors: Vec<&str> = f
        .output
        .lines()
        .filter(|l| l.starts_with("skvm: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "want one error line:\n{}", f.output);
    assert!(
        errors[0].contains(needle),
        "error line lacks '{needle}': {}",
        errors[0]
    );
    assert_eq!(f.output.lines().count(), 1, "extra output:\n{}", f.output);
}

#[test]
fn missing_kernel_is_reported() {
    let f = run_to_exit(&["--kernel", "/nonexistent/vmlinux"], QUICK);
    assert_one_error(&f, "cannot read kernel /nonexistent/vmlinux");
}

#[test]
fn unreadable_kernel_is_reported() {
    let scratch = TmpDir::new("unreadable");
    let dir = scratch.0.clone();
    let k = dir.join("vmlinux");
    std::fs::copy(default_guest().join("vmlinux"), &k).unwrap();
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o000)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Root reads anything; run as nobody so the permission bits count.
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(skvm_bin())
        .args(["run", "--kernel"])
        .arg(&k);
    let f = TestVm::spawn_command(cmd).wait_exit(QUICK);
    drop(scratch);
    assert_one_error(&f, "Permission denied");
}

#[test]
fn file_that_is_not_a_kernel_is_reported() {
    let scratch = TmpDir::new("notkernel");
    let dir = scratch.0.clone();
    let k = dir.join("junk");
    std::fs::write(&k, vec![0x5au8; 64 * 1024]).unwrap();
    let f = run_to_exit(&["--kernel", k.to_str().unwrap()], QUICK);
    drop(scratch);
    assert_one_error(&f, "is not a Linux kernel");
}

#[test]
fn directory_as_kernel_is_reported() {
    let f = run_to_exit(&["--kernel", "/"], QUICK);
    assert_one_error(&f, "cannot read kernel /");
}

#[test]
fn initrd_that_does_not_fit_is_reported() {
    let scratch = TmpDir::new("bigInitrd");
    let dir = scratch.0.clone();
    let i = dir.join("initrd");
    // Sparse: 200 MiB of initrd for a 64 MiB guest.
    std::fs::File::create(&i)
        .unwrap()
        .set_len(200 << 20)
        .unwrap();
    let k = default_guest().join("vmlinux");
    let f = run_to_exit(
        &[
            "--kernel",
            k.to_str().unwrap(),
            "--initrd",
            i.to_str().unwrap(),
            "--mem",
            "64M",
        ],
        QUICK,
    );
    drop(scratch);
    assert_one_error(&f, "does not fit in guest memory");
}

#[test]
fn memory_too_small_is_reported() {
    let f = run_to_exit(&["--mem", "1M"], QUICK);
    assert_one_error(&f, "too small");
}

#[test]
fn memory_larger_than_the_host_is_reported() {
    let f = run_to_exit(&["--mem", "64T"], QUICK);
    assert_one_error(&f, "more than this host has");
}

#[test]
fn malformed_memory_size_is_reported() {
    let f = run_to_exit(&["--mem", "lots"], QUICK);
    assert_one_error(&f, "invalid --mem");
}

#[test]
fn zero_cpus_is_reported() {
    let f = run_to_exit(&["--cpus", "0"], QUICK);
    assert_one_error(&f, "--cpus 0 is out of range");
}

#[test]
fn cpus_above_the_limit_are_reported() {
    let f = run_to_exit(&["--cpus", "1000"], QUICK);
    assert_one_error(&f, "--cpus 1000");
}

#[test]
fn missing_dev_kvm_is_reported() {
    // A private mount namespace with an empty /dev.
    let script = format!(
        "mount --make-rprivate / && mount -t tmpfs none /dev && exec {} run",
        skvm_bin().display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "sh", "-c", &script]);
    let f = TestVm::spawn_command(cmd).wait_exit(QUICK);
    assert_one_error(&f, "/dev/kvm does not exist");
}

#[test]
fn no_permission_on_dev_kvm_is_reported() {
    // A kernel nobody can read, so only /dev/kvm's permissions stop skvm.
    let scratch = TmpDir::new("nokvm");
    let dir = scratch.0.clone();
    let kernel = dir.join("vmlinux");
    std::fs::copy(default_guest().join("vmlinux"), &kernel).unwrap();
    std::fs::set_permissions(&kernel, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(skvm_bin())
        .args(["run", "--kernel"])
        .arg(&kernel);
    let f = TestVm::spawn_command(cmd).wait_exit(QUICK);
    drop(scratch);
    assert_one_error(&f, "no permission to open /dev/kvm");
}
