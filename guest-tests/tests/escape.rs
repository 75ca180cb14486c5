//! The escape suite: a device process, fully confined (namespaces, empty
//! root, no capabilities, rlimits, its kind's seccomp policy), attempts
//! hostile actions, and each must fail (killed by seccomp or refused) while
//! the VMM side carries on. Runs `skvm-escape` (the workspace's `escape`
//! crate: the vmm library with the escape suite's kinds and steps, never
//! the skvm people run; $SKVM_ESCAPE_BIN, default
//! target/release/skvm-escape); the escrng/escblk/escnet/escconsole/
//! escvsock/escfs device kinds get exactly rng's, blk's, net's, console's,
//! vsock's and fs's confinement (escfs with a share as its root, and the
//! share escapes besides).
//!
//! With a guest running: `SKVM_ESCAPE_DEVICE=ACTIONS` makes `skvm run` start
//! its devices as escape devices that attempt ACTIONS once the guest's
//! driver has activated them; the guest must finish its command and skvm
//! exit 0.
//!
//! The VMM's own filters (`--sandbox`) are attacked the same way: with
//! `SKVM_ESCAPE_VMM=ACTION` (or `all`), vCPU 0 attempts ACTION under its
//! filter once the guest has run.

// Test code: a panic is a failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use guest_tests::{code_and_text, device_pids, TestVm, CMD_EXIT_MARKER};

const ACTIONS: &[&str] = &[
    "read-passwd",
    "open-socket",
    "connect-host",
    "exec-shell",
    "ptrace-vmm",
    "kill-vmm",
    "mmap-exec",
    "mprotect-exec",
    "write-foreign-fd",
    "setuid",
    "mount",
    "unshare",
    "fork",
    "chdir-out",
    "read-proc-environ",
];

fn escape_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SKVM_ESCAPE_BIN") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/skvm-escape");
    assert!(
        p.is_file(),
        "no skvm-escape: run scripts/test.sh, or cargo build --release -p skvm-escape"
    );
    p
}

/// Runs one action; returns skvm's output (its exit status must be 0: the
/// VMM side carries on).
fn attempt(device: &str, mode: &str, action: &str) -> String {
    attempt_with(device, mode, action, &[])
}

/// [`attempt`] with more options (escfs's `--share DIR`).
fn attempt_with(device: &str, mode: &str, action: &str, more: &[&str]) -> String {
    let out = Command::new(escape_bin())
        .args(["attempt", "--device", device, "--seccomp", mode])
        .args(more)
        .arg(action)
        .output()
        .unwrap();
    let (_, text) = code_and_text(&out);
    assert!(out.status.success(), "{device} {mode} {action}: {text}");
    assert!(
        text.contains(&format!("escape={action} device={device} outcome=")),
        "{text}"
    );
    text
}

fn outcome(text: &str) -> &str {
    text.split("outcome=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
}

fn suite(device: &str) {
    suite_with(device, &[]);
}

fn suite_with(device: &str, more: &[&str]) {
    let attempt = |device, mode, action| attempt_with(device, mode, action, more);
    for action in ACTIONS {
        // Kill mode (the default): the kernel kills the process, or the
        // other layers refuse the action before seccomp matters.
        let t = attempt(device, "kill", action);
        let o = outcome(&t);
        assert!(
            t.contains("outcome=killed signal=31") || o == "refused",
            "{device} kill {action}: {t}"
        );
        // Trap mode: refused, and reported by name when seccomp caught it.
        let t = attempt(device, "trap", action);
        assert_eq!(outcome(&t), "refused", "{device} trap {action}: {t}");
        if *action != "write-foreign-fd" {
            assert!(
                t.contains(&format!("device {device} (pid "))
                    && t.contains("made forbidden syscall"),
                "{device} trap {action}: not reported: {t}"
            );
        }
        // Log mode does not enforce seccomp: namespaces, the empty root,
        // capabilities and rlimits must still stop everything but what
        // only seccomp forbids (a socket in an empty network namespace, and
        // executable memory).
        let t = attempt(device, "log", action);
        let only_seccomp = matches!(*action, "open-socket" | "mmap-exec" | "mprotect-exec");
        if !only_seccomp {
            assert_eq!(outcome(&t), "refused", "{device} log {action}: {t}");
        }
    }
}

#[test]
fn an_rng_device_process_cannot_escape() {
    suite("escrng0");
}

#[test]
fn a_blk_device_process_cannot_escape() {
    suite("escblk0");
}

#[test]
fn a_net_device_process_cannot_escape() {
    suite("escnet0");
}

#[test]
fn a_console_device_process_cannot_escape() {
    suite("escconsole0");
}

#[test]
fn a_vsock_device_process_cannot_escape() {
    suite("escvsock0");
}

/// A tmpfs mounted inside a share for one test, with a file in it.
struct InnerMount(PathBuf);

impl InnerMount {
    fn new(at: PathBuf) -> Self {
        std::fs::create_dir_all(&at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "skvm-test"])
            .arg(&at)
            .status()
            .unwrap();
        assert!(ok.success(), "cannot mount a tmpfs at {}", at.display());
        std::fs::write(at.join("secret"), "inner").unwrap();
        Self(at)
    }
}

impl Drop for InnerMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Names and contents of the regular files below `dir`, sorted.
fn tree(dir: &std::path::Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            out.extend(tree(&e.path()));
        } else if t.is_file() {
            out.push((e.path(), std::fs::read(e.path()).unwrap()));
        } else {
            out.push((e.path(), Vec::new()));
        }
    }
    out.sort();
    out
}

/// The share escapes (`skvm-escape`'s last actions), each with calls fs's
/// filter allows, so that only the device's root (the share, bound as the
/// root of its mount namespace) stops them.
const SHARE_ESCAPES: &[&str] = &[
    "dotdot-out",
    "symlink-out",
    "proc-magic",
    "hidden-mount",
    "rename-out",
    "link-out",
];

#[test]
fn an_fs_device_process_cannot_escape_or_leave_its_share() {
    let s = guest_tests::Scratch::new("escape", "fs");
    let share = s.path("share");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(s.path("outside"), "outside").unwrap();
    std::fs::write(share.join("victim"), "victim").unwrap();
    std::os::unix::fs::symlink("../../../../../../../../etc", share.join("up")).unwrap();
    let (uid, gid) = guest_tests::outside_ids();
    std::os::unix::fs::chown(&share, Some(uid), Some(gid)).unwrap();
    std::os::unix::fs::chown(share.join("victim"), Some(uid), Some(gid)).unwrap();
    let inner = InnerMount::new(share.join("m"));
    let before = tree(&s.0);
    let share_arg = share.to_str().unwrap();
    // Every escape any device attempts.
    suite_with("escfs0", &["--share", share_arg]);
    // The share's own: refused in kill mode and in log mode alike (the
    // filter lets each call through).
    for action in SHARE_ESCAPES {
        for mode in ["kill", "log"] {
            let t = attempt_with("escfs0", mode, action, &["--share", share_arg]);
            assert_eq!(outcome(&t), "refused", "escfs0 {mode} {action}: {t}");
        }
    }
    // A file created in a share: refused by the read-only mount, while the
    // same call in a writable share works (so it is the mount that refuses).
    let ro = ["--share", share_arg, "--read-only"];
    let t = attempt_with("escfs0", "kill", "write-ro", &ro);
    assert_eq!(outcome(&t), "refused", "{t}");
    assert!(t.contains("Read-only file system"), "{t}");
    assert_eq!(tree(&s.0), before, "something changed around the share");
    let t = attempt_with("escfs0", "kill", "write-ro", &["--share", share_arg]);
    assert_eq!(outcome(&t), "escaped", "{t}");
    std::fs::remove_file(share.join("written")).unwrap();
    drop(inner);
    assert_eq!(
        std::fs::read_to_string(s.path("outside")).unwrap(),
        "outside"
    );
}

#[test]
fn forbidden_syscalls_are_named_in_trap_mode() {
    let t = attempt("escblk0", "trap", "read-passwd");
    assert!(t.contains("made forbidden syscall openat"), "{t}");
    let t = attempt("escrng0", "trap", "exec-shell");
    assert!(t.contains("made forbidden syscall execve"), "{t}");
}

#[test]
fn a_device_flooding_its_stderr_is_cut_and_cannot_send_control_characters() {
    let t = attempt("escrng0", "kill", "flood-stderr");
    assert_eq!(outcome(&t), "refused", "{t}");
    assert!(t.contains("wrote 1048"), "{t}");
    // Some lines went through, their escape sequences made harmless.
    assert!(t.contains("?[2J?[31mFLOOD?[0m ?"), "{t}");
    assert!(!t.contains(['\x1b', '\x07']), "control characters passed");
    // The rest was dropped, and said so.
    assert!(
        t.contains("skvm: device log: more than 64 KiB at once"),
        "{t}"
    );
    assert!(t.len() < 256 * 1024, "{} bytes of output", t.len());
}

#[test]
fn a_device_sending_an_empty_message_is_killed_not_taken_for_gone() {
    let t = attempt("escblk0", "kill", "send-empty");
    assert!(t.contains("outcome=killed signal=9"), "{t}");
    assert!(t.contains("misbehaved: empty message; killing it"), "{t}");
}

#[test]
fn a_device_that_closes_its_control_socket_is_killed_not_left_running() {
    let t = attempt("escrng0", "kill", "close-control");
    assert!(t.contains("outcome=killed signal=9"), "{t}");
}

/// What a compromised VMM would try (the escape build's SKVM_ESCAPE_VMM
/// actions, attempted on vCPU 0 under its filter once the guest has run):
/// one per group `--sandbox on` denies, then files, sockets, other
/// processes, privileges, kernel attack surface and an x32 call.
const VMM_ACTIONS: &[&str] = &[
    "exec-shell",
    "fork",
    "setuid",
    "unshare",
    "setpriority",
    "open-read",
    "open-write",
    "proc-mem",
    "netlink",
    "inet",
    "connect",
    "ptrace-spawner",
    "kill-spawner",
    "kill-device",
    "mount",
    "mprotect-exec",
    "init-module",
    "bpf",
    "perf-event-open",
    "io-uring-setup",
    "userfaultfd",
    "keyctl",
    "x32",
];

fn vmm_escape(action: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(escape_bin());
    cmd.env("SKVM_ESCAPE_VMM", action)
        .args(["run", "--rng"])
        .args(args);
    cmd
}

#[test]
fn the_vcpu_filter_kills_skvm_on_every_vmm_attack() {
    for action in VMM_ACTIONS {
        // Killed at the vCPU's first exit; were the call allowed, the
        // guest would boot and skvm exit 0.
        let out = vmm_escape(action, &["--run", "true"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGSYS),
            "{action}: {:?} {text}",
            out.status
        );
        assert!(!text.contains("outcome=done"), "{action}: {text}");
    }
}

/// One guest in trap mode for both suites (a boot is dear): vCPU 0
/// attempts every VMM attack once the guest has run, and an escape rng
/// and an escape disk attempt every device escape at activation. Each is
/// refused and named, nothing is killed, and the guest carries on.
#[test]
fn in_trap_mode_every_vmm_and_device_attack_is_named_and_the_guest_carries_on() {
    let image = Image::new("escape-trap");
    let mut cmd = vmm_escape(
        "all",
        &[
            "--seccomp",
            "trap",
            "--disk",
            image.0.to_str().unwrap(),
            "--run",
            "echo SKVM-GUEST-ALIVE",
        ],
    );
    cmd.env("SKVM_ESCAPE_DEVICE", "all");
    cmd.env_remove("SKVM_DEBUG");
    let f = TestVm::spawn_command(cmd).finish(Duration::from_secs(600));
    let out = &f.output;
    assert_eq!(f.code(), 0, "{out}");
    assert!(!out.contains("outcome=escaped"), "{out}");
    assert!(!out.contains("was killed"), "{out}");
    for action in VMM_ACTIONS {
        let needle = format!("escape-vmm={action} outcome=refused");
        assert!(out.contains(&needle), "no '{needle}':\n{out}");
    }
    for needle in [
        "the VMM made forbidden syscall execve",
        "the VMM made forbidden syscall openat",
        "the VMM made forbidden syscall socket",
        "the VMM made forbidden syscall ptrace",
        "the VMM made forbidden syscall (an x32 call)",
        "SKVM-GUEST-ALIVE",
    ] {
        assert!(out.contains(needle), "no '{needle}':\n{out}");
    }
    for kind in ["rng", "blk"] {
        let dev = format!("esc{kind}0");
        for action in ACTIONS {
            assert!(
                out.contains(&format!("escape={action} device={dev} outcome=failed")),
                "{kind} {action}:\n{out}"
            );
        }
        // All but the write to a foreign fd (EBADF first) are seccomp's.
        let named = out.matches(&format!("device {dev} (pid ")).count();
        assert!(named >= ACTIONS.len() - 1, "{named}:\n{out}");
    }
}

#[test]
fn in_log_mode_the_vmms_user_capabilities_and_empty_root_still_refuse() {
    // The filter only logs here: what stops these is that the VMM runs as
    // nobody, without capabilities, in an empty root of its own. (Signals
    // to the spawner are not among them: it runs as that same user, and
    // stopping it harms only this VM.)
    let mut cmd = vmm_escape(
        "all",
        &["--seccomp", "log", "--run", "echo SKVM-GUEST-ALIVE"],
    );
    cmd.env_remove("SKVM_DEBUG");
    let f = TestVm::spawn_command(cmd).finish(Duration::from_secs(600));
    assert_eq!(f.code(), 0, "{}", f.output);
    // Calls reach the kernel: a harmless one succeeds.
    assert!(
        f.output.contains("escape-vmm=fork outcome=done"),
        "{}",
        f.output
    );
    for action in [
        "exec-shell",
        "setuid",
        "unshare",
        "open-read",
        "open-write",
        "proc-mem",
        "ptrace-spawner",
        "mount",
        "init-module",
    ] {
        let needle = format!("escape-vmm={action} outcome=refused");
        assert!(f.output.contains(&needle), "no '{needle}':\n{}", f.output);
    }
    assert!(f.output.contains("SKVM-GUEST-ALIVE"), "{}", f.output);
}

#[test]
fn a_group_the_user_allows_is_added_to_the_vcpu_list() {
    let mut vm = TestVm::spawn_command(vmm_escape(
        "fork",
        &["--sandbox", "on,spawn=allow", "--run", "true"],
    ));
    vm.wait_for("escape-vmm=fork outcome=done", Duration::from_secs(60));
    // Dropping the VM stops it.
}

#[test]
fn without_a_filter_the_attacks_reach_the_kernel() {
    // The control for the tests above: with --sandbox off the same probe
    // runs and a harmless action succeeds.
    let mut vm = TestVm::spawn_command(vmm_escape(
        "kill-device",
        &["--sandbox", "off", "--run", "true"],
    ));
    vm.wait_for(
        "escape-vmm=kill-device outcome=done",
        Duration::from_secs(60),
    );
}

/// A scratch disk image, removed on drop.
struct Image(PathBuf);

impl Image {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("skvm-escape-{tag}-{}.img", std::process::id()));
        std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
        Self(p)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The one line of `out` that says how device `dev` ended.
fn end_of<'a>(out: &'a str, dev: &str) -> &'a str {
    out.lines()
        .find(|l| {
            l.contains(&format!("device {dev} (pid "))
                && (l.contains(" was killed by ") || l.contains(" exited with status "))
        })
        .unwrap_or_else(|| panic!("no end of {dev}:\n{out}"))
}

/// Hostile devices, one of each on one guest (a boot is dear): escblk2
/// tries to escape (exec a shell) and is killed by its filter; the others
/// try to slip out of supervision rather than out of their sandbox:
/// escblk0 writes past the end of its image, escblk1 allocates memory
/// without bound, escrng0 answers and then ignores Shutdown. Each ends
/// killed, the VMM and the guest run on (the guest runs its command after
/// all four attacks), and skvm stops on time with no device left behind.
#[test]
fn hostile_devices_are_killed_and_the_guest_runs_on() {
    let grow = Image::new("grow");
    let alloc = Image::new("alloc");
    let exec = Image::new("exec");
    let mut cmd = Command::new(escape_bin());
    cmd.env(
        "SKVM_ESCAPE_DEVICE",
        "escblk0:grow-image,escblk1:alloc-unbounded,escblk2:exec-shell,\
         escrng0:ignore-shutdown",
    )
    .args(["run", "--rng", "--disk", grow.0.to_str().unwrap()])
    .args(["--disk", alloc.0.to_str().unwrap()])
    .args(["--disk", exec.0.to_str().unwrap()])
    .args(["--run", "echo SKVM-GUEST-ALIVE"]);
    let mut vm = TestVm::spawn_command(cmd);
    vm.wait_for(
        "escape=ignore-shutdown device=escrng0 outcome=",
        Duration::from_secs(600),
    );
    let ignorer = device_pids(vm.pid(), "escrng0");
    assert_eq!(ignorer.len(), 1, "{ignorer:?}\n{}", vm.output());
    vm.wait_for(CMD_EXIT_MARKER, Duration::from_secs(600));
    let stopping = Instant::now();
    let f = vm.finish(Duration::from_secs(60));
    let stop = stopping.elapsed();
    let out = &f.output;
    assert_eq!(f.code(), 0, "{out}");
    assert!(out.contains("SKVM-GUEST-ALIVE"), "{out}");
    assert!(!out.contains("outcome=escaped"), "{out}");

    // Past the end of its image: SIGXFSZ ends it (its handler: the first
    // process of a pid namespace is not killed by a default action), and
    // the file did not grow.
    assert!(
        out.contains("escape=grow-image device=escblk0 outcome=failed"),
        "{out}"
    );
    let end = end_of(out, "escblk0");
    assert!(end.contains("file-size limit (SIGXFSZ)"), "{out}");
    assert_eq!(std::fs::metadata(&grow.0).unwrap().len(), 1 << 20);

    // An escape: its filter kills it with SIGSYS, and only it.
    assert!(
        out.contains("escape=exec-shell device=escblk2 outcome=failed"),
        "{out}"
    );
    assert!(
        end_of(out, "escblk2").contains("was killed by signal 31 (SIGSYS"),
        "{out}"
    );

    // Without bound: the allocator fails at the data limit and the process
    // dies (std aborts; abort's signal calls are not in its allowlist).
    assert!(
        out.contains("escape=alloc-unbounded device=escblk1 outcome=failed"),
        "{out}"
    );
    assert!(out.contains("memory allocation of"), "{out}");
    assert!(!out.contains("alloc-unbounded: holding"), "{out}");
    end_of(out, "escblk1");

    // Ignoring Shutdown: killed after its grace (one second), skvm done
    // well within a few seconds of the guest's end, and the process gone.
    assert!(
        out.contains("escape=ignore-shutdown device=escrng0 outcome=failed"),
        "{out}"
    );
    let pid = ignorer[0];
    assert!(
        out.contains(&format!(
            "device escrng0 (pid {pid}) did not exit when asked; killing it"
        )),
        "{out}"
    );
    assert!(
        stop < Duration::from_secs(10),
        "skvm took {stop:?} to stop:\n{out}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let alive = || {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.starts_with(b"skvm-dev\0escrng0\0"))
    };
    while alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(), "escrng0 (pid {pid}) outlived skvm:\n{out}");
    eprintln!("skvm stopped {stop:?} after the guest's command");
}
