//! Networking for guest tests: a network namespace per test, the
//! addresses the guest and the host side use in it, and a TCP round trip
//! through the guest.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::run_ok;

/// The host end of the tap, in the test's namespace.
pub const HOST_IP: &str = "10.0.2.1";
/// The guest's address.
pub const GUEST_IP: &str = "10.0.2.15";

/// A network namespace for one test, deleted (with its interfaces) when
/// dropped, also when the test fails. Its name carries `tag`, the test
/// process's pid and a counter, so parallel tests do not meet.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace (after deleting a leftover of the same name)
    /// with its loopback up.
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("skvm-{tag}-{}-{n}", std::process::id());
        let ns = Netns { name };
        let _ = Command::new("ip")
            .args(["netns", "del", &ns.name])
            .stderr(Stdio::null())
            .status();
        run_ok(Command::new("ip").args(["netns", "add", &ns.name]));
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Its name, for `ip netns exec` and /run/netns.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip ARGS` in the namespace; panics if it fails.
    pub fn ip(&self, args: &[&str]) {
        run_ok(Command::new("ip").arg("-n").arg(&self.name).args(args));
    }

    /// Whether interface `name` exists in the namespace.
    pub fn has_link(&self, name: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.name, "link", "show", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    /// The counters of link `name` and the neighbour table, for a
    /// failure's message.
    pub fn link_report(&self, name: &str) -> String {
        let mut text = String::new();
        for args in [&["-s", "link", "show", name][..], &["neigh"]] {
            if let Ok(out) = Command::new("ip")
                .arg("-n")
                .arg(&self.name)
                .args(args)
                .output()
            {
                text.push_str(&String::from_utf8_lossy(&out.stdout));
            }
        }
        text
    }

    /// A command that runs `program` inside the namespace.
    pub fn exec(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Adds tap `tap` at `mtu` and brings it up.
    pub fn tap(&self, tap: &str, mtu: u32) {
        self.ip(&["tuntap", "add", tap, "mode", "tap"]);
        self.ip(&["link", "set", tap, "mtu", &mtu.to_string(), "up"]);
    }

    /// Runs `f` in a thread inside the namespace (setns changes the
    /// calling thread's namespace only).
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on an open namespace fd; it changes this
            // thread's network namespace only.
            let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Deterministic pseudo-random data (xorshift64).
pub fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// md5sum of `data`, by the host's coreutils (as the guest prints it).
pub fn md5(data: &[u8]) -> String {
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let owned = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&owned).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// The host side of a round trip through a guest that receives a file on
/// [`GUEST_IP`] port 5001 and sends it back to [`HOST_IP`] port 5002: from
/// inside `ns`, connects (retrying for up to 15 minutes while the guest
/// boots), sends `data`, runs `between` once the guest has it all, and
/// takes back what the guest sends. Returns `between`'s result and that.
pub fn tcp_round_trip<T: Send + 'static>(
    ns: &Netns,
    data: Vec<u8>,
    between: impl FnOnce() -> T + Send + 'static,
) -> (T, Vec<u8>) {
    ns.run_in(move || {
        let listener = TcpListener::bind((HOST_IP, 5002)).unwrap();
        let start = Instant::now();
        let mut s = loop {
            match TcpStream::connect((GUEST_IP, 5001_u16)) {
                Ok(s) => break s,
                Err(_) if start.elapsed() < Duration::from_secs(900) => {
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => panic!("the guest never listened: {e}"),
            }
        };
        s.write_all(&data).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        drop(s);
        let t = between();
        let (mut back, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        back.read_to_end(&mut got).unwrap();
        (t, got)
    })
}
