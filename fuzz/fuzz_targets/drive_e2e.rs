//! End to end: fuzzed queues fed to real, sandboxed device processes through
//! the host-side harness (`skvm drive --fuzz-stdin`), started exactly as
//! `skvm run` starts them. The first byte picks the device (even: rng0,
//! odd: blk0 over a 1 MiB memfd image); the rest is written over the
//! harness's guest memory from address 0 (the queue layout of
//! fuzz_targets/common). The device process must survive every input: a
//! death (a crash, or a seccomp kill on a syscall its policy forgot) is a
//! finding. The device processes are not instrumented, so this target is
//! guided only by the harness's side; the *_queue targets cover the same
//! code with coverage.
#![no_main]

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;

const MAX_INPUT: usize = 0x1_0000;

struct Server {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
}

static SERVERS: Mutex<[Option<Server>; 2]> = Mutex::new([None, None]);

fn skvm() -> String {
    std::env::var("SKVM_BIN").unwrap_or_else(|_| "target/release/skvm".to_owned())
}

/// A 1 MiB memfd the blk device serves, as a path skvm can open.
fn image_path() -> String {
    // SAFETY: memfd_create with a valid name; the fd stays open (and the
    // image alive) for the fuzzer's lifetime and goes away with it.
    let fd = unsafe { libc::memfd_create(c"skvm-fuzz-image".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: sizes the memfd just created.
    assert_eq!(unsafe { libc::ftruncate(fd, 1 << 20) }, 0, "ftruncate");
    format!("/proc/{}/fd/{fd}", std::process::id())
}

fn start(which: usize) -> Server {
    let mut cmd = Command::new(skvm());
    cmd.args(["drive", "--fuzz-stdin"]);
    if which == 0 {
        cmd.args(["--device", "rng0"]);
    } else {
        cmd.args(["--device", "blk0", "--disk", &image_path()]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {} (set SKVM_BIN): {e}", skvm()));
    let stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    Server {
        child,
        stdin,
        stdout,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((pick, input)) = data.split_first() else {
        return;
    };
    let input = &input[..input.len().min(MAX_INPUT)];
    let which = usize::from(pick & 1);
    let mut servers = SERVERS.lock().unwrap_or_else(|e| e.into_inner());
    let server = servers[which].get_or_insert_with(|| start(which));
    let len = u32::try_from(input.len()).expect("bounded").to_le_bytes();
    let sent = server
        .stdin
        .write_all(&len)
        .and_then(|()| server.stdin.write_all(input))
        .and_then(|()| server.stdin.flush());
    let mut answer = [0u8; 1];
    let got = sent.and_then(|()| server.stdout.read_exact(&mut answer));
    if got.is_err() || answer != *b"0" {
        let mut why = String::new();
        if let Some(mut err) = server.child.stderr.take() {
            let _ = err.read_to_string(&mut why);
        }
        let status = server.child.wait();
        panic!("the device process did not survive this input: {why} ({status:?})");
    }
});
