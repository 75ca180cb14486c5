//! virtio-fs (`--fs tag=TAG,path=DIR[,ro]`) with the default guest: two
//! shares mounted at once, one read-write (files and directories created,
//! written, read back, renamed, linked and removed from the guest and seen
//! on the host; a directory of 1000 host files listed whole; a symlink the
//! host planted is the guest's to follow, not the device's), one read-only
//! (every change refused in the guest, nothing changed on the host);
//! both device modes; bad options.

// Test code: a panic is a failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use guest_tests::{code_and_text, outside_ids, run_to_exit, skvm_bin, Scratch};

const TIMEOUT: Duration = Duration::from_secs(600);

/// What the guest runs: mounts both shares and works in them, printing
/// `SKVM-FS <what> <result>` lines.
const SCRIPT: &str = r#"
mkdir -p /mnt/rw /mnt/ro
mount -t virtiofs work /mnt/rw || echo "SKVM-FS mount-rw failed"
mount -t virtiofs keep /mnt/ro || echo "SKVM-FS mount-ro failed"
cd /mnt/rw
echo "SKVM-FS host-file $(cat from-host.txt)"
echo "guest wrote this" > made.txt
mkdir -p sub/deeper
echo deep > sub/deeper/f
mv made.txt sub/moved.txt
ln sub/moved.txt hard.txt
ln -s sub/moved.txt soft.txt
echo "SKVM-FS via-symlink $(cat soft.txt)"
echo "SKVM-FS listed $(ls many | wc -l)"
dd if=/dev/zero of=big bs=64k count=16 2>/dev/null
echo "SKVM-FS big $(stat -c %s big)"
rm big
truncate -s 5 sub/deeper/f
chmod 600 sub/deeper/f
echo "SKVM-FS mode $(stat -c %a sub/deeper/f) size $(stat -c %s sub/deeper/f)"
echo "SKVM-FS etc-link $(readlink etc-link)"
touch /mnt/ro/new 2>/dev/null && echo "SKVM-FS ro-create allowed" || echo "SKVM-FS ro-create refused"
echo x >> /mnt/ro/kept.txt 2>/dev/null && echo "SKVM-FS ro-append allowed" || echo "SKVM-FS ro-append refused"
rm /mnt/ro/kept.txt 2>/dev/null && echo "SKVM-FS ro-remove allowed" || echo "SKVM-FS ro-remove refused"
echo "SKVM-FS ro-read $(cat /mnt/ro/kept.txt)"
cd /
sync
umount /mnt/rw && umount /mnt/ro && echo "SKVM-FS unmounted"
"#;

fn share_and_check(mode: &str) {
    let s = Scratch::new("fs", mode);
    let rw = s.path("rw");
    let ro = s.path("ro");
    fs::create_dir_all(rw.join("many")).unwrap();
    fs::create_dir_all(&ro).unwrap();
    fs::write(rw.join("from-host.txt"), "hello from the host").unwrap();
    for i in 0..1000 {
        fs::write(rw.join(format!("many/f{i}")), b"").unwrap();
    }
    std::os::unix::fs::symlink("/etc", rw.join("etc-link")).unwrap();
    fs::write(ro.join("kept.txt"), "kept").unwrap();
    // The device works as skvm's unprivileged user (nobody when skvm is
    // root): the writable share is that user's.
    let (uid, gid) = outside_ids();
    std::os::unix::fs::chown(&rw, Some(uid), Some(gid)).unwrap();
    let rw_arg = format!("tag=work,path={}", rw.display());
    let ro_arg = format!("tag=keep,path={},ro", ro.display());
    let f = run_to_exit(
        &[
            "--device-mode",
            mode,
            "--fs",
            &rw_arg,
            "--fs",
            &ro_arg,
            "--run",
            SCRIPT,
        ],
        TIMEOUT,
    );
    let out = &f.output;
    assert_eq!(f.code(), 0, "{out}");
    guest_tests::assert_no_forbidden_syscall(out);
    for want in [
        "SKVM-FS host-file hello from the host",
        "SKVM-FS via-symlink guest wrote this",
        "SKVM-FS listed 1000",
        "SKVM-FS big 1048576",
        "SKVM-FS mode 600 size 5",
        "SKVM-FS etc-link /etc",
        "SKVM-FS ro-create refused",
        "SKVM-FS ro-append refused",
        "SKVM-FS ro-remove refused",
        "SKVM-FS ro-read kept",
        "SKVM-FS unmounted",
    ] {
        assert!(out.contains(want), "no {want:?}:\n{out}");
    }
    assert!(!out.contains("failed"), "{out}");
    // What the guest did is on the host.
    assert_eq!(
        fs::read_to_string(rw.join("sub/moved.txt")).unwrap(),
        "guest wrote this\n"
    );
    assert!(!rw.join("made.txt").exists());
    assert!(!rw.join("big").exists());
    assert_eq!(
        fs::read_to_string(rw.join("sub/deeper/f")).unwrap(),
        "deep\n"
    );
    let hard = fs::metadata(rw.join("hard.txt")).unwrap();
    assert_eq!(hard.nlink(), 2);
    assert_eq!(
        hard.ino(),
        fs::metadata(rw.join("sub/moved.txt")).unwrap().ino()
    );
    assert_eq!(
        fs::read_link(rw.join("soft.txt")).unwrap().to_str(),
        Some("sub/moved.txt")
    );
    assert_eq!(
        fs::metadata(rw.join("sub/deeper/f")).unwrap().mode() & 0o777,
        0o600
    );
    // The read-only share is as it was.
    assert_eq!(fs::read_to_string(ro.join("kept.txt")).unwrap(), "kept");
    assert_eq!(fs::read_dir(&ro).unwrap().count(), 1);
    // /etc of the host was never touched: the link is still a link.
    assert!(fs::symlink_metadata(rw.join("etc-link"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn two_shares_one_read_only_in_a_device_process() {
    share_and_check("process");
}

#[test]
fn two_shares_one_read_only_in_a_device_thread() {
    share_and_check("thread");
}

#[test]
fn bad_fs_options_are_refused_with_a_clear_line() {
    let s = Scratch::new("fs", "bad");
    let file = s.path("file");
    fs::write(&file, b"").unwrap();
    let long = format!("tag={},path=/tmp", "t".repeat(37));
    let not_dir = format!("tag=a,path={}", file.display());
    for (value, says) in [
        ("tag=a", "needs both tag=TAG and path=DIR"),
        ("path=/tmp", "needs both"),
        ("tag=a,path=/no/such/dir", "not a directory"),
        (not_dir.as_str(), "not a directory"),
        (long.as_str(), "a tag is 1 to 36 bytes"),
        ("tag=a,path=/tmp,exec", "'exec'"),
    ] {
        let out = std::process::Command::new(skvm_bin())
            .args(["run", "--fs", value])
            .output()
            .unwrap();
        let (code, text) = code_and_text(&out);
        assert_ne!(code, 0, "{value}: {text}");
        assert!(text.contains(says), "{value}: expected {says:?}:\n{text}");
        assert!(!text.contains("Linux version"), "{text}");
    }
}
