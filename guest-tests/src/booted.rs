//! Guests that start from a snapshot of themselves instead of booting.
//!
//! Booting the default guest costs 30 s or more of emulated kernel code on
//! the emulating hosts here; most tests only need a booted guest to run
//! their command in. [`booted`] boots each machine the tests ask for once
//! with `skvm.cmd=-` (the default /init then prints SKVM-CMD-READY and
//! waits for its command on the console), snapshots it there (`skvm ctl
//! SOCKET snapshot DIR`), and starts every test of that machine from the
//! snapshot (`skvm run --restore DIR`), typing the test's command into the
//! console. Every such test therefore also restores a whole VM, with new
//! device processes, which is what issue 19 asks the suite to lean on.
//!
//! The machine is what the guest sees: the kernel and initramfs (the
//! files, by size and modification time), `--cpus`, `--mem`,
//! `--hotplug-mem`, `--name`, the devices and their options, with each
//! disk's path replaced by its size and each tap, share directory and
//! vsock host socket left out. What the guest does not see (device mode
//! and polling, `--ctl`, the sandbox options, the restart policy,
//! `--debug`) is given again to the restoring run, as are the images,
//! taps, directories and sockets. Snapshots are kept in
//! `guest-snapshots/` beside the skvm binary, in a directory per build of
//! skvm and the guest: a snapshot taken by another build is never
//! restored, and is removed.

use std::collections::hash_map::DefaultHasher;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{ctl, default_guest, skvm_bin, TestVm};

/// Options whose value the guest does not see: given to the restoring run,
/// left out of the machine.
const RUN_ONLY_WITH_VALUE: &[&str] = &[
    "--ctl",
    "--device-mode",
    "--device-poll-us",
    "--on-device-failure",
    "--restart-limit",
    "--sandbox",
    "--sandbox-degraded",
    "--seccomp",
    "--vmm-sandbox",
    "--stop-timeout",
    "--user",
];

/// Flags the guest does not see.
const RUN_ONLY_FLAGS: &[&str] = &["--debug"];

/// Options of the boot only: a restoring run may not give them.
const BOOT_ONLY_WITH_VALUE: &[&str] = &["--kernel", "--initrd"];

/// How long the first boot of a machine may take to reach its /init's
/// prompt (minutes on an emulating host with a second guest beside it).
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

/// `skvm run ARGS` (ARGS with `--run COMMAND`, as for a booting guest),
/// started from the snapshot of its machine (taken first if there is none).
/// Stdin is the command; the returned VM runs it and powers off.
pub fn booted<I, S>(args: I) -> TestVm
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    booted_with(|| Command::new(skvm_bin()), args)
}

/// As [`booted`], with skvm started by the commands `skvm` makes (e.g.
/// `ip netns exec NS skvm`): the boot that takes the snapshot and the
/// restoring run both.
pub fn booted_with<I, S>(skvm: impl Fn() -> Command, args: I) -> TestVm
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let args: Vec<S> = args.into_iter().collect();
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let split = Split::new(&args);
    let dir = snapshot_of(&skvm, &split);
    // Lines of 76 characters, and an empty one to end them.
    let mut lines = base64(split.command.as_bytes());
    lines.push('\n');
    let mut cmd = skvm();
    cmd.arg("run")
        .arg("--restore")
        .arg(&dir)
        .args(&split.restore);
    TestVm::spawn_with_input(cmd, Some(lines.as_bytes()))
}

/// A test's arguments, sorted.
struct Split {
    /// What `--run` gave.
    command: String,
    /// The machine (paths and tap names left out), for the key.
    machine: Vec<String>,
    /// The arguments of the boot that takes the snapshot.
    boot: Vec<String>,
    /// The arguments of a restoring run.
    restore: Vec<String>,
    /// Files whose contents the machine depends on (kernel, initrd).
    files: Vec<PathBuf>,
}

impl Split {
    fn new(args: &[&str]) -> Self {
        let mut s = Split {
            command: String::new(),
            machine: Vec::new(),
            boot: Vec::new(),
            restore: Vec::new(),
            files: Vec::new(),
        };
        let mut command = None;
        let mut it = args.iter().copied();
        while let Some(a) = it.next() {
            let mut value = || {
                it.next()
                    .unwrap_or_else(|| panic!("{a} without a value"))
                    .to_owned()
            };
            match a {
                "--run" => command = Some(value()),
                "--cmdline" | "--restore" => panic!("booted(): {a} is not for a snapshot"),
                _ if BOOT_ONLY_WITH_VALUE.contains(&a) => {
                    let v = value();
                    s.files.push(PathBuf::from(&v));
                    s.machine.extend([a.to_owned(), v.clone()]);
                    s.boot.extend([a.to_owned(), v]);
                }
                _ if RUN_ONLY_WITH_VALUE.contains(&a) => {
                    let v = value();
                    // The boot answers on a socket of its own.
                    if a != "--ctl" {
                        s.boot.extend([a.to_owned(), v.clone()]);
                    }
                    s.restore.extend([a.to_owned(), v]);
                }
                _ if RUN_ONLY_FLAGS.contains(&a) => {
                    s.boot.push(a.to_owned());
                    s.restore.push(a.to_owned());
                }
                "--disk" | "--net" | "--fs" | "--vsock" => {
                    let v = value();
                    s.machine.extend([a.to_owned(), machine_value(a, &v)]);
                    s.boot.extend([a.to_owned(), v.clone()]);
                    s.restore.extend([a.to_owned(), v]);
                }
                _ => {
                    s.machine.push(a.to_owned());
                    s.boot.push(a.to_owned());
                    s.restore.push(a.to_owned());
                }
            }
        }
        s.command = command.expect("booted(): give --run COMMAND");
        s
    }

    /// The build and the machine, as a file name.
    fn key(&self) -> (String, String) {
        let stamp = |p: &Path, h: &mut DefaultHasher| {
            let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, m.len(), m.mtime(), m.mtime_nsec()).hash(h);
        };
        let mut build = DefaultHasher::new();
        stamp(&skvm_bin(), &mut build);
        let guest = default_guest();
        for name in ["vmlinux", "initramfs.cpio", "initramfs.cpio.gz"] {
            let p = guest.join(name);
            if p.exists() {
                stamp(&p, &mut build);
            }
        }
        for f in &self.files {
            stamp(f, &mut build);
        }
        let mut machine = DefaultHasher::new();
        self.machine.hash(&mut machine);
        (
            format!("{:016x}", build.finish()),
            format!("{:016x}", machine.finish()),
        )
    }
}

/// A device's option value as the guest sees it: a disk's path becomes its
/// size; a net card's tap (named or not), a share's host directory and a
/// vsock device's host socket go (a restore takes them from its own
/// command line).
fn machine_value(option: &str, value: &str) -> String {
    let mut parts = value.split(',');
    let mut out = Vec::new();
    if option == "--disk" {
        let path = parts.next().unwrap_or_default();
        let len = std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("disk {path}: {e}"))
            .len();
        out.push(format!("size={len}"));
    }
    let host_only = |p: &&str| match option {
        "--net" => *p == "tap" || p.starts_with("tap="),
        "--fs" => p.starts_with("path="),
        "--vsock" => p.starts_with("socket="),
        _ => false,
    };
    out.extend(parts.filter(|p| !host_only(p)).map(str::to_owned));
    out.join(",")
}

/// The snapshot's directory for `split`'s machine, taken now (under a lock,
/// so that tests running at once boot each machine once) if there is none.
fn snapshot_of(skvm: &impl Fn() -> Command, split: &Split) -> PathBuf {
    let (build, machine) = split.key();
    let root = skvm_bin()
        .parent()
        .expect("skvm's directory")
        .join("guest-snapshots");
    let builds = root.join(&build);
    std::fs::create_dir_all(&builds).unwrap();
    let lock = File::create(builds.join(format!("{machine}.lock"))).unwrap();
    // SAFETY: flock on an fd we own; released when `lock` is closed, also
    // when the test panics.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
    let dir = builds.join(&machine);
    if dir.join("state").is_file() {
        return dir;
    }
    remove_other_builds(&root, &build);
    let partial = builds.join(format!("{machine}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    let sock = builds.join(format!("{machine}.sock"));
    let mut cmd = skvm();
    cmd.arg("run")
        .args(&split.boot)
        .args(["--cmdline", "skvm.cmd=-", "--ctl"])
        .arg(&sock);
    let mut vm = TestVm::spawn_command(cmd);
    vm.wait_for("SKVM-CMD-READY", BOOT_TIMEOUT);
    let (code, answer) = ctl(&sock, &format!("snapshot {}", partial.display()));
    assert_eq!(code, 0, "snapshot: {answer}\n{}", vm.output());
    let f = vm.wait_exit(BOOT_TIMEOUT);
    assert_eq!(f.code(), 0, "the snapshotted boot: {}", f.output);
    std::fs::rename(&partial, &dir).unwrap();
    dir
}

/// Snapshots of other builds of skvm or the guest are never restored.
fn remove_other_builds(root: &Path, build: &str) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name() != build {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// `data` in base64 lines of 76 characters, each ending in a newline, as
/// the guest's `base64 -d` reads it (coreutils' base64 writes it).
fn base64(data: &[u8]) -> String {
    let mut child = Command::new("base64")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("cannot run base64");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "base64 failed");
    String::from_utf8(out.stdout).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_leaves_out_paths_taps_and_run_only_options() {
        let seen = [
            "--rng",
            "--device-mode",
            "process",
            "--net",
            "tap=skvm0,mtu=9000",
            "--net",
            "tap",
            "--fs",
            "tag=work,path=/tmp/share,ro",
            "--vsock",
            "cid=3,socket=/tmp/v.sock",
            "--device-poll-us",
            "50",
        ];
        let ctl = ["--ctl", "/tmp/x.sock"];
        let a = Split::new(&[&seen[..], &ctl, &["--run", "true"]].concat());
        assert_eq!(a.command, "true");
        assert_eq!(
            a.machine,
            [
                "--rng",
                "--net",
                "mtu=9000",
                "--net",
                "",
                "--fs",
                "tag=work,ro",
                "--vsock",
                "cid=3"
            ]
        );
        assert_eq!(a.boot, seen);
        assert_eq!(a.restore, [&seen[..], &ctl].concat());
    }
}
