//! Guest tests: boot real guests on real KVM through the built `skvm` binary.
//!
//! [`TestVm`] spawns `skvm run`, captures the serial console, waits for
//! markers with timeouts, and kills the VM when dropped. The binary is taken
//! from `$SKVM_BIN`, else `target/release/skvm`, else `target/debug/skvm`.

// This crate is test support: a panic is how it fails a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod booted;
mod net;
pub use booted::{booted, booted_with};
pub use net::{md5, pattern, tcp_round_trip, Netns, GUEST_IP, HOST_IP};

/// The marker the default initramfs prints when its command ends.
pub const CMD_EXIT_MARKER: &str = "SKVM-CMD-EXIT";

/// Where the built `skvm` binary is.
pub fn skvm_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SKVM_BIN") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    for profile in ["release", "debug"] {
        let p = target.join(profile).join("skvm");
        if p.is_file() {
            return p;
        }
    }
    panic!("skvm binary not found: build it (cargo build --release) or set SKVM_BIN");
}

/// The default guest's directory (built by scripts/setup.sh); panics if it
/// is not built, so a test cannot pass without a guest.
pub fn default_guest() -> PathBuf {
    let dir = std::env::var_os("SKVM_GUEST_DIR").map_or_else(
        || {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".local/share/skvm/guest")
        },
        PathBuf::from,
    );
    assert!(
        dir.join("vmlinux").is_file(),
        "default guest not built in {}: run scripts/setup.sh",
        dir.display()
    );
    dir
}

/// A running `skvm` with its output captured.
pub struct TestVm {
    child: Option<Child>,
    output: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

/// A VM that had to be stopped.
#[derive(Debug)]
pub struct Unfinished {
    /// Everything it printed.
    pub output: String,
    /// Stopped because it printed nothing for too long (else: timed out).
    pub stalled: bool,
}

/// What a finished VM left.
#[derive(Debug)]
pub struct Finished {
    /// skvm's exit status.
    pub status: ExitStatus,
    /// Console output and skvm's messages, interleaved.
    pub output: String,
}

impl Finished {
    /// The exit code, or -1 if killed by a signal.
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }
}

impl TestVm {
    /// Starts `skvm` with `args` (stdin closed).
    pub fn spawn<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new(skvm_bin());
        cmd.args(args);
        Self::spawn_command(cmd)
    }

    /// Starts a prepared command (e.g. wrapped in `unshare` or `setpriv`).
    pub fn spawn_command(cmd: Command) -> Self {
        Self::spawn_with_input(cmd, None)
    }

    /// Starts a prepared command with `input`, when given, on its stdin
    /// (which skvm passes to the guest's console), then closed.
    pub fn spawn_with_input(cmd: Command, input: Option<&[u8]>) -> Self {
        let (vm, stdin) = Self::start(cmd, input.is_some());
        if let (Some(input), Some(mut stdin)) = (input, stdin) {
            // Less than a pipe's buffer: the write does not wait for skvm.
            assert!(input.len() < 4096, "{} bytes of input", input.len());
            stdin
                .write_all(input)
                .expect("cannot write to skvm's stdin");
        }
        vm
    }

    /// Starts `skvm` with `args` and a pipe on its stdin, to type into
    /// while it runs.
    pub fn spawn_typing<I, S>(args: I) -> (Self, std::process::ChildStdin)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new(skvm_bin());
        cmd.args(args);
        let (vm, stdin) = Self::start(cmd, true);
        (vm, stdin.expect("stdin"))
    }

    /// Starts `cmd` with its output captured, and stdin a pipe (returned)
    /// when `piped`, else /dev/null.
    fn start(mut cmd: Command, piped: bool) -> (Self, Option<std::process::ChildStdin>) {
        cmd.stdin(if piped { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("cannot start skvm");
        let stdin = child.stdin.take();
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().expect("stdout"));
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().expect("stderr"));
        // SKVM_TEST_ECHO=1: also copy skvm's output to the test's stderr as
        // it comes (with --nocapture, to watch a long boot).
        let echo = std::env::var_os("SKVM_TEST_ECHO").is_some_and(|v| v == "1");
        for mut stream in [out, err] {
            let sink = output.clone();
            readers.push(std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if echo {
                        let _ = std::io::stderr().write_all(&buf[..n]);
                    }
                    sink.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            }));
        }
        (
            Self {
                child: Some(child),
                output,
                readers,
            },
            stdin,
        )
    }

    /// Everything captured so far.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// Waits until `marker` appears; panics with the output on timeout or
    /// if skvm exits first.
    pub fn wait_for(&mut self, marker: &str, timeout: Duration) {
        self.wait_for_count(marker, 1, timeout);
    }

    /// Waits until `marker` has appeared `count` times and the line it
    /// appeared on the last time is complete: a guest's report arrives a
    /// byte at a time through the serial port, and a caller that reads the
    /// fields after the marker must not see half of them.
    pub fn wait_for_count(&mut self, marker: &str, count: usize, timeout: Duration) {
        let start = Instant::now();
        loop {
            if line_complete(&self.output(), marker, count) {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                // Let the readers drain before looking a last time.
                std::thread::sleep(Duration::from_millis(200));
                if self.output().matches(marker).count() >= count {
                    // skvm is gone: a last line without its newline is all
                    // there will be.
                    return;
                }
                panic!(
                    "skvm exited ({status}) before '{marker}':\n{}",
                    self.output()
                );
            }
            if start.elapsed() > timeout {
                panic!(
                    "timed out after {timeout:?} waiting for '{marker}':\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for skvm to exit; kills it and panics on timeout. Fails the
    /// test if a device made a forbidden syscall, or if a state a device
    /// saved (restart, mem-add) was refused: every skvm device is honest.
    pub fn wait_exit(self, timeout: Duration) -> Finished {
        let f = self.finish(timeout);
        assert_no_forbidden_syscall(&f.output);
        assert!(
            !f.output
                .contains("saved state does not match the transport"),
            "an honest device's saved state was refused:\n{}",
            f.output
        );
        f
    }

    /// Waits for skvm to exit; kills it and panics on timeout.
    pub fn finish(self, timeout: Duration) -> Finished {
        match self.finish_watching(timeout, Duration::MAX) {
            Ok(f) => f,
            Err(Unfinished { output, stalled }) => {
                assert!(!stalled);
                panic!("skvm did not exit within {timeout:?}:\n{output}")
            }
        }
    }

    /// Waits for skvm to exit, at most `timeout`, and stops it early when it
    /// prints nothing for `stall`. A VM that is stopped is sent SIGINT
    /// first (skvm stops the VM at once and, with --debug, says where each
    /// vCPU was; SIGTERM would press the power button first), then killed.
    pub fn finish_watching(
        mut self,
        timeout: Duration,
        stall: Duration,
    ) -> Result<Finished, Unfinished> {
        let start = Instant::now();
        let mut child = self.child.take().expect("child");
        let mut seen = 0usize;
        let mut last_output = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            let len = self.output.lock().unwrap().len();
            if len != seen {
                seen = len;
                last_output = Instant::now();
            }
            let stalled = last_output.elapsed() > stall;
            if stalled || start.elapsed() > timeout {
                terminate(&mut child, Duration::from_secs(10));
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                return Err(Unfinished {
                    output: self.output(),
                    stalled,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let output = self.output();
        Ok(Finished { status, output })
    }

    /// The process id, for sending signals.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }
}

/// Sends SIGINT, waits up to `grace` for the child to exit, then kills it.
fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill has no memory effects; the child is ours.
        unsafe { libc::kill(pid, libc::SIGINT) };
    }
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for TestVm {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Fails the test if a device process made a syscall its seccomp policy
/// does not allow (killed by SIGSYS in the default kill mode, or reported in
/// trap mode): the policies must cover everything the devices do in the
/// guest tests. The pinned toolchain (rust-toolchain.toml) keeps std from
/// adding syscalls behind the policies' back.
pub fn assert_no_forbidden_syscall(output: &str) {
    for needle in ["SIGSYS, a forbidden syscall", "made forbidden syscall"] {
        assert!(
            !output.contains(needle),
            "a device made a syscall its policy does not allow:\n{output}"
        );
    }
}

/// Runs `skvm run` with `args` to completion.
pub fn run_to_exit(args: &[&str], timeout: Duration) -> Finished {
    TestVm::spawn(std::iter::once("run").chain(args.iter().copied())).wait_exit(timeout)
}

/// The value printed after `key` on a line of the form `key value`.
pub fn field(output: &str, key: &str) -> Option<String> {
    output.lines().find_map(|l| {
        let l = l.trim_end_matches('\r');
        let pos = l.find(key)?;
        l.get(pos + key.len()..)?
            .split_whitespace()
            .next()
            .map(str::to_owned)
    })
}

/// Pids of processes whose argv is `skvm-dev NAME`, children of children
/// of `skvm` (the spawner's).
pub fn device_pids(skvm: u32, name: &str) -> Vec<u32> {
    let spawners: Vec<u32> = children(skvm);
    let mut found = Vec::new();
    for s in spawners {
        for c in children(s) {
            let cmdline = std::fs::read(format!("/proc/{c}/cmdline")).unwrap_or_default();
            // argv: skvm-dev NAME SECCOMP-MODE NAMESPACES
            if cmdline.starts_with(format!("skvm-dev\0{name}\0").as_bytes()) {
                found.push(c);
            }
        }
    }
    found
}

/// Pids of the processes whose parent is `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        // Field 4 (after the parenthesised comm) is the parent pid.
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().next());
    matches!(state, Some(s) if s != "Z" && s != "X")
}

/// Sends SIGKILL to `pid`, which must exist.
pub fn sigkill(pid: u32) {
    let pid = i32::try_from(pid).unwrap();
    // SAFETY: kill has no memory effects; the test owns the processes it kills.
    let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill {pid}: {}", std::io::Error::last_os_error());
}

/// A finished command's exit code (-1 if killed by a signal) and its stdout
/// followed by its stderr.
pub fn code_and_text(out: &std::process::Output) -> (i32, String) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Runs `cmd`; panics with its stderr if it fails.
pub fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A mebibyte.
pub const MIB: u64 = 1 << 20;

/// The machine of the virtio-fs tests (fs.rs, and hotplug.rs's test of a
/// mounted share): a writable share tagged `work` (extended attributes on)
/// on `work`, a read-only one tagged `keep` on `keep`, 128 MiB of RAM and
/// 128 MiB of room for hotplug. They all give these options, so that
/// [`booted`] boots that machine once for all of them.
pub fn share_machine(work: &Path, keep: &Path) -> Vec<String> {
    vec![
        "--mem".into(),
        "128M".into(),
        "--hotplug-mem".into(),
        "128M".into(),
        "--fs".into(),
        format!("tag=work,path={},xattr", work.display()),
        "--fs".into(),
        format!("tag=keep,path={},ro", keep.display()),
    ]
}

/// Debian's stock cloud kernel and skvm's initramfs for it (fetched by
/// scripts/setup.sh); panics if they are not there.
pub fn stock_kernel() -> (PathBuf, PathBuf) {
    let dir = default_guest().join("debian-cloud");
    let (kernel, initrd) = (dir.join("vmlinuz"), dir.join("initramfs.cpio.gz"));
    assert!(
        kernel.is_file() && initrd.is_file(),
        "stock kernel not fetched in {}: run scripts/setup.sh",
        dir.display()
    );
    (kernel, initrd)
}

/// The unprivileged user skvm's VMM and devices run as: nobody when the
/// tests run as root (sandbox::jail::outside_ids), else the tests' own.
pub fn outside_ids() -> (u32, u32) {
    // SAFETY: geteuid and getegid cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if uid == 0 {
        (65534, 65534)
    } else {
        (uid, gid)
    }
}

/// A scratch directory for one test's files, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A fresh directory for test `name` of `suite` (this process's).
    pub fn new(suite: &str, name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("skvm-{suite}-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// The path of file `name` in it.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// A sparse image of `len` bytes (reads as zeroes).
    pub fn blank(&self, name: &str, len: u64) -> PathBuf {
        let p = self.path(name);
        File::create(&p).unwrap().set_len(len).unwrap();
        p
    }

    /// An image of `len` pseudo-random bytes, all allocated.
    pub fn pattern(&self, name: &str, len: u64, seed: u64) -> PathBuf {
        let p = self.path(name);
        let mut f = File::create(&p).unwrap();
        let mut s = seed | 1;
        let mut buf = vec![0u8; usize::try_from(MIB).unwrap()];
        for _ in 0..len / MIB {
            for chunk in buf.chunks_mut(8) {
                // xorshift64
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                chunk.copy_from_slice(&s.to_le_bytes()[..chunk.len()]);
            }
            f.write_all(&buf).unwrap();
        }
        f.sync_all().unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The one process of device `name` under `vm` once it is not `old` (a
/// restarted device's; 0 takes the first), waiting up to `timeout`.
pub fn new_device_pid(vm: &TestVm, name: &str, old: u32, timeout: Duration) -> u32 {
    let deadline = Instant::now() + timeout;
    loop {
        let pids = device_pids(vm.pid(), name);
        if let [p] = pids.as_slice() {
            if *p != old {
                return *p;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{name} was not restarted: {pids:?}\n{}",
            vm.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The whole value of line `key` ("Uid:") of a /proc status text, trimmed;
/// "?" when there is none.
pub fn status_value(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or("?")
        .trim()
        .to_owned()
}

/// Checks that skvm `vmm`'s spawner runs as `uid`:`gid` with no capability
/// in its effective, permitted, inheritable or ambient set (its bounding
/// set stays: device processes take their namespace's capabilities from
/// it), no_new_privs and a seccomp filter; and, when `remover` (skvm was
/// given --ctl), that the spawner's one other child, the socket remover,
/// is filtered too and not dumpable.
pub fn assert_spawner_holds_no_privilege(vmm: u32, (uid, gid): (u32, u32), remover: bool) {
    let field = status_value;
    let status = |p: u32| std::fs::read_to_string(format!("/proc/{p}/status")).unwrap();
    let comm = |p: u32| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
    let [spawner] = children(vmm)[..] else {
        panic!("skvm {vmm} has not exactly one child: {:?}", children(vmm));
    };
    assert_eq!(comm(spawner).trim(), "skvm-spawner");
    let s = status(spawner);
    let four = |id: u32| format!("{id}\t{id}\t{id}\t{id}");
    assert_eq!(field(&s, "Uid:"), four(uid), "{s}");
    assert_eq!(field(&s, "Gid:"), four(gid), "{s}");
    assert_eq!(field(&s, "Groups:"), "", "{s}");
    for set in ["CapInh:", "CapPrm:", "CapEff:", "CapAmb:"] {
        assert_eq!(field(&s, set), "0000000000000000", "{set}: {s}");
    }
    assert_eq!(field(&s, "NoNewPrivs:"), "1", "{s}");
    assert_eq!(field(&s, "Seccomp:"), "2", "{s}");
    let removers: Vec<u32> = children(spawner)
        .into_iter()
        .filter(|&c| comm(c).trim() == "skvm-remover")
        .collect();
    assert_eq!(removers.len(), usize::from(remover), "{removers:?}");
    for r in removers {
        let s = status(r);
        assert_eq!(field(&s, "Seccomp:"), "2", "{s}");
        assert_eq!(field(&s, "NoNewPrivs:"), "1", "{s}");
        // Not dumpable: its /proc files belong to root, whoever runs it.
        let meta = std::fs::metadata(format!("/proc/{r}/mem")).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0);
    }
}

/// Checks, from outside, that skvm process `pid` gave up every privilege
/// once its guest runs: every thread runs as `ids` (user, group) with no
/// supplementary group, no capability in any set and no_new_privs, in a
/// mount namespace of its own whose root is empty; and that its device
/// processes (it must have one) run as the same user outside.
pub fn assert_holds_no_privilege(pid: u32, (uid, gid): (u32, u32)) {
    let field = status_value;
    let four = |id: u32| format!("{id}\t{id}\t{id}\t{id}");
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    for t in tasks.flatten() {
        let tid = t.file_name().to_string_lossy().into_owned();
        let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")) else {
            continue;
        };
        assert_eq!(field(&s, "Uid:"), four(uid), "thread {tid}: {s}");
        assert_eq!(field(&s, "Gid:"), four(gid), "thread {tid}: {s}");
        assert_eq!(field(&s, "Groups:"), "", "thread {tid}: {s}");
        for set in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
            assert_eq!(
                field(&s, set),
                "0000000000000000",
                "thread {tid} {set}: {s}"
            );
        }
        assert_eq!(field(&s, "NoNewPrivs:"), "1", "thread {tid}: {s}");
    }
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/mnt")).unwrap();
    assert_ne!(
        ns(&pid.to_string()),
        ns("self"),
        "the VMM shares our mounts"
    );
    let root: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(root.is_empty(), "the VMM's root holds {root:?}");
    let mut devices = 0;
    for child in children(pid) {
        for dev in children(child) {
            let s = std::fs::read_to_string(format!("/proc/{dev}/status")).unwrap_or_default();
            if field(&s, "Name:").starts_with("skvm-dev") {
                assert_eq!(field(&s, "Uid:"), four(uid), "device {dev}: {s}");
                devices += 1;
            }
        }
    }
    assert!(devices > 0, "no device process under skvm {pid}");
}

/// Sends `command` to a VM's control socket with `skvm ctl`; returns the
/// exit code and the answer (JSON null when there was none).
pub fn ctl(socket: &Path, command: &str) -> (i32, serde_json::Value) {
    let out = Command::new(skvm_bin())
        .arg("ctl")
        .arg(socket)
        .args(command.split_whitespace())
        .output()
        .unwrap();
    let (code, _) = code_and_text(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    let answer = serde_json::from_str(text.trim()).unwrap_or(serde_json::Value::Null);
    (code, answer)
}

/// The entry of device `name` in a `status` answer.
pub fn device_status(status: &serde_json::Value, name: &str) -> serde_json::Value {
    status["devices"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no {name} in {status}"))
}

/// Whether `output` holds `marker` `count` times with a newline after the
/// last of them.
fn line_complete(output: &str, marker: &str, count: usize) -> bool {
    match output.match_indices(marker).nth(count.saturating_sub(1)) {
        Some((at, _)) => output[at + marker.len()..].contains('\n'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_finds_the_value_after_a_key() {
        let out = "junk\r\nSKVM-NPROC 2\r\nMemTotal:  123 kB\n";
        assert_eq!(field(out, "SKVM-NPROC").as_deref(), Some("2"));
        assert_eq!(field(out, "MemTotal:").as_deref(), Some("123"));
        assert_eq!(field(out, "absent"), None);
    }

    #[test]
    fn a_marker_counts_once_its_line_is_complete() {
        let half = "boot\r\nSKVM-DISTRO target=active ";
        assert!(!line_complete(half, "SKVM-DISTRO", 1));
        let whole = "boot\r\nSKVM-DISTRO target=active init=systemd\r\n";
        assert!(line_complete(whole, "SKVM-DISTRO", 1));
        assert!(!line_complete(whole, "SKVM-DISTRO", 2));
        assert!(!line_complete(whole, "absent", 1));
        let again = "SKVM-TICK 1\nSKVM-TICK 2";
        assert!(line_complete(again, "SKVM-TICK", 1));
        assert!(!line_complete(again, "SKVM-TICK", 2));
    }
}
