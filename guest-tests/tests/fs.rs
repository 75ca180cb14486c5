//! virtio-fs (`--fs tag=TAG,path=DIR[,ro]`) with the default guest: two
//! shares mounted at once, one read-write (files and directories created,
//! written, read back, renamed, linked and removed from the guest and seen
//! on the host; a directory of 1000 host files listed whole; a symlink the
//! host planted is the guest's to follow, not the device's), one read-only
//! (every change refused in the guest, nothing changed on the host);
//! extended attributes on the writable share (`xattr`) and none on the
//! other; both device modes; bad options.

// Test code: a panic is a failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use guest_tests::{
    booted, code_and_text, outside_ids, run_to_exit, share_machine, skvm_bin, Scratch,
};

const TIMEOUT: Duration = Duration::from_secs(600);

/// What the guest runs: mounts both shares and works in them, printing
/// `SKVM-FS <what> <result>` lines.
const SCRIPT: &str = r#"
p() { echo "SKVM-FS $*"; }
n=/dev/null
mkdir -p /mnt/rw /mnt/ro
mount -t virtiofs work /mnt/rw || p "mount-rw failed"
mount -t virtiofs keep /mnt/ro || p "mount-ro failed"
cd /mnt/rw
p "host-file $(cat from-host.txt)"
echo "guest wrote this" > made.txt
mkdir -p sub/deeper
echo deep > sub/deeper/f
mv made.txt sub/moved.txt
ln sub/moved.txt hard.txt
ln -s sub/moved.txt soft.txt
p "via-symlink $(cat soft.txt)"
p "listed $(ls many | wc -l)"
dd if=/dev/zero of=big bs=64k count=16 2>$n
p "big $(stat -c %s big)"
rm big
truncate -s 5 sub/deeper/f
chmod 600 sub/deeper/f
p "mode $(stat -c %a sub/deeper/f) size $(stat -c %s sub/deeper/f)"
p "etc-link $(readlink etc-link)"
xattr set sub/moved.txt user.color blue
p "xattr $(xattr get sub/moved.txt user.color) $(xattr list sub/moved.txt)"
p "no-xattr $(xattr set /mnt/ro/kept.txt user.k v)"
touch /mnt/ro/new 2>$n && p "ro-create allowed" || p "ro-create refused"
echo x >> /mnt/ro/kept.txt 2>$n && p "ro-append allowed" || p "ro-append refused"
rm /mnt/ro/kept.txt 2>$n && p "ro-remove allowed" || p "ro-remove refused"
p "ro-read $(cat /mnt/ro/kept.txt)"
p "fm [$(cat /mnt/ro/m)]"
cd /
sync
umount /mnt/rw && umount /mnt/ro && p "unmounted"
"#;

/// A file bind-mounted on another, unmounted when dropped.
struct BindMount(std::path::PathBuf);

impl BindMount {
    fn new(from: &std::path::Path, on: &std::path::Path) -> Self {
        let ok = std::process::Command::new("mount")
            .arg("--bind")
            .args([from, on])
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount --bind {} {}", from.display(), on.display());
        Self(on.to_owned())
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

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
    // A file the host mounts another file on, as containers do: a device
    // process shows it covered (empty); a device thread serves the VMM's
    // view of the directory, mounts included.
    fs::write(ro.join("m"), "under").unwrap();
    let secret = s.path("secret");
    fs::write(&secret, "secret").unwrap();
    let _mount = BindMount::new(&secret, &ro.join("m"));
    // The device works as skvm's unprivileged user (nobody when skvm is
    // root): the writable share is that user's.
    let (uid, gid) = outside_ids();
    std::os::unix::fs::chown(&rw, Some(uid), Some(gid)).unwrap();
    let mut args = share_machine(&rw, &ro);
    args.extend(["--device-mode", mode, "--run", SCRIPT].map(String::from));
    let f = booted(&args).wait_exit(TIMEOUT);
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
        "XATTR set ok",
        "SKVM-FS xattr XATTR get blue XATTR list user.color,",
        // The read-only share refuses every change, attributes included.
        "SKVM-FS no-xattr XATTR set error 30",
        "SKVM-FS ro-create refused",
        "SKVM-FS ro-append refused",
        "SKVM-FS ro-remove refused",
        "SKVM-FS ro-read kept",
        if mode == "process" {
            "SKVM-FS fm []"
        } else {
            "SKVM-FS fm [secret]"
        },
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
    // The attribute is the host file's.
    let path = std::ffi::CString::new(rw.join("sub/moved.txt").to_str().unwrap()).unwrap();
    let mut buf = [0u8; 16];
    // SAFETY: getxattr into a live buffer of its length.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"user.color".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(
        buf.get(..usize::try_from(n).unwrap_or(0)),
        Some(&b"blue"[..])
    );
    // The read-only share is as it was.
    assert_eq!(fs::read_to_string(ro.join("kept.txt")).unwrap(), "kept");
    assert_eq!(fs::read_dir(&ro).unwrap().count(), 2);
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

/// What the guest runs against a share holding `src` (64 MiB): a copy
/// checked on the host; a second copy during which the test kills the
/// device; then the same share used again, a third copy included. Copies
/// use O_DIRECT: through the page cache, this host's emulated guest kernel
/// copies every byte twice more (a 64 MiB `cp` takes about 35 s here, `dd
/// iflag=direct oflag=direct` about 9 s).
const KILL_SCRIPT: &str = r#"
mount -t virtiofs work /mnt || echo "SKVM-FS mount failed"
cd /mnt
copy() { dd if=src of=$1 bs=1M iflag=direct oflag=direct 2>/tmp/err; echo "SKVM-FS $1 $?"; }
copy first
mkdir kept
echo "SKVM-FS-COPYING"
copy second
echo "SKVM-FS second-error $(head -n 1 /tmp/err)"
echo "SKVM-FS ls $(ls | tr '\n' ' ')"
echo "SKVM-FS host-file $(cat from-host.txt)"
echo after > kept/after.txt && echo "SKVM-FS made $(cat kept/after.txt)"
copy third
cd /
umount /mnt && echo "SKVM-FS unmounted"
"#;

fn sha256(path: &std::path::Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_64_mib_copy_checks_out_and_the_share_outlives_a_device_killed_mid_copy() {
    let s = Scratch::new("fs", "kill");
    let share = s.path("share");
    fs::create_dir_all(&share).unwrap();
    let keep = s.path("keep");
    fs::create_dir_all(&keep).unwrap();
    let src = s.pattern("share/src", 64 * guest_tests::MIB, 21);
    fs::write(share.join("from-host.txt"), "still here").unwrap();
    let (uid, gid) = outside_ids();
    std::os::unix::fs::chown(&share, Some(uid), Some(gid)).unwrap();
    let mut args = share_machine(&share, &keep);
    args.extend(["--run", KILL_SCRIPT].map(String::from));
    let mut vm = booted(&args);
    vm.wait_for("SKVM-FS-COPYING", TIMEOUT);
    // Mid-copy: the copy takes seconds, the kill comes one second in.
    std::thread::sleep(Duration::from_secs(1));
    let pid = guest_tests::device_pids(vm.pid(), "fs0")[0];
    guest_tests::sigkill(pid);
    guest_tests::new_device_pid(&vm, "fs0", pid, Duration::from_secs(30));
    let f = vm.wait_exit(TIMEOUT);
    let out = &f.output;
    assert_eq!(f.code(), 0, "{out}");
    guest_tests::assert_no_forbidden_syscall(out);
    assert!(
        out.contains("device fs0 (pid ") && out.contains("restarted it"),
        "{out}"
    );
    let want = sha256(&src);
    assert_eq!(sha256(&share.join("first")), want, "first copy:\n{out}");
    // The copy the kill cut: its open files are gone with the device, and
    // what the guest still does with them fails with EIO.
    assert!(
        !out.contains("SKVM-FS second 0"),
        "the kill missed the copy:\n{out}"
    );
    let error = out
        .lines()
        .find(|l| l.starts_with("SKVM-FS second-error"))
        .unwrap_or_default();
    assert!(error.ends_with("Input/output error"), "{out}");
    // The share is usable after, through the same mount.
    for line in [
        "SKVM-FS first 0",
        "SKVM-FS host-file still here",
        "SKVM-FS made after",
        "SKVM-FS third 0",
        "SKVM-FS unmounted",
    ] {
        assert!(out.contains(line), "no {line:?}:\n{out}");
    }
    assert!(!out.contains("failed"), "{out}");
    assert_eq!(sha256(&share.join("third")), want, "third copy:\n{out}");
}

#[test]
fn the_hosts_root_boots_read_only_and_a_directory_boots_writable() {
    // As kvmtool boots the host's own root without a disk: the guest's
    // command runs with the host's programs, and nothing can be changed.
    let f = run_to_exit(
        &[
            "--root",
            "/",
            "--run",
            "ls /usr; touch /skvm-root-test 2>&1; echo SKVM-FS-ID $(id -u)",
        ],
        TIMEOUT,
    );
    let out = &f.output;
    assert_eq!(f.code(), 0, "{out}");
    guest_tests::assert_no_forbidden_syscall(out);
    assert!(
        out.contains("skvm-init: running in the virtio-fs share skvm-root (ro)"),
        "{out}"
    );
    for want in [
        "bin",
        "lib",
        "share",
        "Read-only file system",
        "SKVM-FS-ID 0",
    ] {
        assert!(out.contains(want), "no {want:?}:\n{out}");
    }
    assert!(!std::path::Path::new("/skvm-root-test").exists());

    // A root of its own (skvm's initramfs unpacked, device nodes left
    // out), writable with `rw`: what the guest makes is on the host.
    let s = Scratch::new("fs", "root");
    let root = s.path("root");
    fs::create_dir_all(&root).unwrap();
    let cpio = fs::File::open(guest_tests::default_guest().join("initramfs.cpio")).unwrap();
    let unpacked = std::process::Command::new("cpio")
        .args([
            "-idm",
            "--quiet",
            "--no-absolute-filenames",
            "--nonmatching",
            "dev/*",
        ])
        .current_dir(&root)
        .stdin(cpio)
        .status()
        .unwrap();
    assert!(unpacked.success());
    let (uid, gid) = outside_ids();
    std::os::unix::fs::chown(&root, Some(uid), Some(gid)).unwrap();
    let rw = format!("{},rw", root.display());
    let f = run_to_exit(
        &["--root", &rw, "--run", "echo made-in-guest > /made; ls /"],
        TIMEOUT,
    );
    let out = &f.output;
    assert_eq!(f.code(), 0, "{out}");
    assert!(
        out.contains("skvm-init: running in the virtio-fs share skvm-root (rw)"),
        "{out}"
    );
    assert_eq!(
        fs::read_to_string(root.join("made")).unwrap(),
        "made-in-guest\n"
    );
    assert_eq!(fs::metadata(root.join("made")).unwrap().uid(), uid);

    // Bad values, and two roots.
    for (args, says) in [
        (
            vec!["--root", "/no/such/dir"],
            "--root /no/such/dir: not a directory",
        ),
        (vec!["--root", "/,exec"], "'exec': expected DIR[,rw]"),
        (
            vec!["--root", "/", "--disk", "/dev/null,root"],
            "blk0 and fs0 both ask to be the root file system",
        ),
    ] {
        let out = std::process::Command::new(skvm_bin())
            .arg("run")
            .args(&args)
            .output()
            .unwrap();
        let (code, text) = code_and_text(&out);
        assert_ne!(code, 0, "{args:?}: {text}");
        assert!(text.contains(says), "{args:?}: expected {says:?}:\n{text}");
        assert!(!text.contains("Linux version"), "{text}");
    }
}

#[test]
#[ignore = "slow (minutes here: the stock kernel's boot and modules): scripts/test-slow.sh runs it"]
fn debians_stock_kernel_mounts_the_hosts_root_from_its_initramfs() {
    let (kernel, initrd) = guest_tests::stock_kernel();
    let f = guest_tests::TestVm::spawn([
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--mem",
        "512M",
        "--root",
        "/",
        "--run",
        "ls /usr; echo SKVM-FS-KERNEL $(uname -r)",
    ])
    .finish_watching(Duration::from_secs(2400), Duration::from_secs(600))
    .unwrap_or_else(|u| panic!("the stock kernel did not finish:\n{}", u.output));
    let out = &f.output;
    assert_eq!(f.code(), 0, "{out}");
    assert!(
        out.contains("skvm-init: running in the virtio-fs share skvm-root (ro)"),
        "{out}"
    );
    assert!(out.contains("SKVM-FS-KERNEL 6.1.0-"), "{out}");
    for want in ["bin", "lib", "share"] {
        assert!(out.contains(want), "no {want:?}:\n{out}");
    }
}
