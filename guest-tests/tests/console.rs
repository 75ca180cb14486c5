//! The serial console's backends (`--serial`): a socket clients attach to
//! and detach from, a pty, a file, and none; the escape key, exit statuses
//! and panic detection with each. The virtio console (`--console`): hvc0
//! as the guest's console on a socket, through a device restart and a
//! snapshot, and on skvm's terminal; a pty and a file; bad values.

// Test code: a panic is a failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use guest_tests::{ctl, device_pids, Scratch, TestVm};

/// Boot to a shell prompt, with the machine shared with other tests.
const BOOT: Duration = Duration::from_secs(600);
/// The default initramfs's shell prompt.
const PROMPT: &[u8] = b"~# ";

/// Reads from `r` until `marker` has arrived (and returns everything read),
/// or panics after `timeout` with what came.
fn read_until(r: &mut impl Read, marker: &[u8], timeout: Duration) -> Vec<u8> {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(marker.len()).any(|w| w == marker) {
        assert!(
            start.elapsed() < timeout,
            "no {:?} within {timeout:?}:\n{}",
            String::from_utf8_lossy(marker),
            String::from_utf8_lossy(&got)
        );
        match r.read(&mut buf) {
            Ok(0) => panic!(
                "the console closed before {:?}:\n{}",
                String::from_utf8_lossy(marker),
                String::from_utf8_lossy(&got)
            ),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("reading the console: {e}"),
        }
    }
    got
}

/// A client of the console socket at `path`, once skvm listens there.
fn attach(path: &Path) -> UnixStream {
    let start = Instant::now();
    loop {
        if let Ok(s) = UnixStream::connect(path) {
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            return s;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no {path:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn a_socket_console_serves_one_client_at_a_time_and_keeps_the_boot_log_for_the_next() {
    let scratch = Scratch::new("console", "socket");
    let sock = scratch.path("serial.sock");
    let ctl_sock = scratch.path("ctl.sock");
    let vm = TestVm::spawn([
        "run",
        "--serial",
        &format!("socket={}", sock.display()),
        "--ctl",
        ctl_sock.to_str().unwrap(),
    ]);
    // The first client sees the boot up to the shell, then leaves.
    let mut first = attach(&sock);
    let boot = read_until(&mut first, PROMPT, BOOT);
    assert!(
        contains(&boot, "Linux version"),
        "{}",
        String::from_utf8_lossy(&boot)
    );
    let (_, st) = ctl(&ctl_sock, "status");
    assert_eq!(st["serial"]["backend"], "socket", "{st}");
    assert_eq!(st["serial"]["attached"], true, "{st}");
    // A second one, while the first is attached, is turned away.
    let mut other = attach(&sock);
    let mut refused = String::new();
    let _ = other.read_to_string(&mut refused);
    assert!(refused.contains("another client"), "{refused:?}");
    first.write_all(b"echo SKVM-FIRST-$((6*7))\n").unwrap();
    read_until(&mut first, b"SKVM-FIRST-42", Duration::from_secs(120));
    drop(first);
    // Detached: the guest goes on, and the next client gets the last
    // 64 KiB of output (the boot log, what the first client did) first.
    let start = Instant::now();
    while ctl(&ctl_sock, "status").1["serial"]["attached"] != false {
        assert!(start.elapsed() < Duration::from_secs(30), "still attached");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut second = attach(&sock);
    let kept = read_until(&mut second, b"SKVM-FIRST-42", Duration::from_secs(30));
    assert!(
        contains(&kept, "Linux version"),
        "{}",
        String::from_utf8_lossy(&kept)
    );
    second.write_all(b"echo SKVM-SECOND-$((6*7))\n").unwrap();
    read_until(&mut second, b"SKVM-SECOND-42", Duration::from_secs(120));
    // The escape key works from a client: skvm stops the VM, exits 0 and
    // removes the socket.
    second.write_all(&[0x01, b'x']).unwrap();
    let f = vm.wait_exit(Duration::from_secs(60));
    assert_eq!(f.code(), 0, "{}", f.output);
    assert!(!f.output.contains("Linux version"), "{}", f.output);
    assert!(!sock.exists() && !ctl_sock.exists());
}

#[test]
fn a_pty_console_takes_input_and_powers_off_with_the_guest() {
    let mut vm = TestVm::spawn(["run", "--serial", "pty"]);
    vm.wait_for("serial console on /dev/pts/", Duration::from_secs(30));
    let out = vm.output();
    let path = out
        .lines()
        .find_map(|l| l.split("serial console on ").nth(1))
        .unwrap()
        .trim()
        .to_owned();
    let mut pty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&path)
        .unwrap();
    let got = read_until(&mut pty, PROMPT, BOOT);
    assert!(
        contains(&got, "Run /init"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    pty.write_all(b"echo SKVM-PTY-$((6*7)); poweroff -f\n")
        .unwrap();
    read_until(&mut pty, b"SKVM-PTY-42", Duration::from_secs(120));
    let f = vm.wait_exit(Duration::from_secs(120));
    assert_eq!(f.code(), 0, "{}", f.output);
}

#[test]
fn a_file_console_appends_and_an_off_console_still_reports_a_guest_panic() {
    let scratch = Scratch::new("console", "file");
    let log = scratch.path("console.log");
    std::fs::write(&log, "kept\n").unwrap();
    let f = TestVm::spawn([
        "run",
        "--serial",
        &format!("file={}", log.display()),
        "--run",
        "echo SKVM-IN-FILE",
    ])
    .wait_exit(BOOT);
    assert_eq!(f.code(), 0, "{}", f.output);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.starts_with("kept\n") && text.contains("Linux version"),
        "{text}"
    );
    assert!(
        text.contains("SKVM-IN-FILE") && text.contains("SKVM-CMD-EXIT 0"),
        "{text}"
    );
    assert!(!f.output.contains("SKVM-IN-FILE"), "{}", f.output);
    // busybox as init exits at once: the kernel panics, which skvm sees
    // with no console to print it on.
    let f = TestVm::spawn(["run", "--serial", "off", "--cmdline", "rdinit=/bin/busybox"])
        .wait_exit(BOOT);
    assert_eq!(f.code(), 2, "{}", f.output);
    assert!(
        f.output.contains(
            "skvm: error: guest kernel panic: Kernel panic - not syncing: Attempted to kill init"
        ),
        "{}",
        f.output
    );
    assert!(!f.output.contains("Linux version"), "{}", f.output);
}

/// Each value of `option` in `cases` stops skvm before it boots, with a
/// non-zero exit and one line that holds the expected words.
fn refused(option: &str, cases: &[(String, &str)]) {
    for (arg, want) in cases {
        let f = TestVm::spawn(["run", option, arg]).wait_exit(Duration::from_secs(30));
        assert_ne!(f.code(), 0, "{option} {arg}: {}", f.output);
        assert!(f.output.contains(want), "{option} {arg}: {}", f.output);
        assert!(
            !f.output.contains("panicked"),
            "{option} {arg}: {}",
            f.output
        );
    }
}

#[test]
fn bad_serial_options_are_refused_with_a_clear_line() {
    let scratch = Scratch::new("console", "bad");
    let dir = scratch.path("");
    refused(
        "--serial",
        &[
            (
                "tty".to_owned(),
                "expected stdio, pty, socket=PATH, file=PATH or off",
            ),
            ("socket=".to_owned(), "the path is empty"),
            (
                format!("socket={}", dir.display()),
                "exists and is not a socket",
            ),
            (
                format!("file={}/no/such/dir/log", dir.display()),
                "--serial file=",
            ),
            (
                format!("socket={}/no/such/dir/s.sock", dir.display()),
                "cannot listen",
            ),
        ],
    );
}

/// The shell prompt of the default initramfs's interactive shell.
const SHELL_PROMPT: &[u8] = b"skvm:~# ";

#[test]
fn hvc0_on_a_socket_is_the_guests_console_and_survives_a_device_restart() {
    let scratch = Scratch::new("console", "hvc-socket");
    let sock = scratch.path("hvc.sock");
    let ctl_sock = scratch.path("ctl.sock");
    let mut vm = TestVm::spawn([
        "run",
        "--console",
        &format!("socket={}", sock.display()),
        "--ctl",
        ctl_sock.to_str().unwrap(),
        "--cmdline",
        "console=hvc0",
    ]);
    // /dev/console is hvc0 (the last console= wins): the init's shell is
    // there, and a client gets what it printed before it attached.
    vm.wait_for("Run /init as init process", BOOT);
    std::thread::sleep(Duration::from_secs(5));
    let mut first = attach(&sock);
    let got = read_until(&mut first, SHELL_PROMPT, BOOT);
    assert!(
        contains(&got, "guest shell"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let (_, st) = ctl(&ctl_sock, "status");
    let dev = &st["devices"][0];
    assert_eq!(dev["name"], "console0", "{st}");
    assert_eq!(dev["backend"]["backend"], "socket", "{st}");
    assert_eq!(dev["backend"]["path"], sock.to_str().unwrap(), "{st}");
    // One client at a time.
    let mut other = attach(&sock);
    let mut refused = String::new();
    let _ = other.read_to_string(&mut refused);
    assert!(refused.contains("another client"), "{refused:?}");
    first.write_all(b"echo SKVM-HVC-$((6*7))\n").unwrap();
    read_until(&mut first, b"SKVM-HVC-42", Duration::from_secs(120));
    // The device process dies: skvm starts another, which takes clients
    // on the same socket; the guest's shell carries on.
    let pid = dev["pid"].as_u64().unwrap();
    assert_eq!(
        device_pids(vm.pid(), "console0"),
        [u32::try_from(pid).unwrap()]
    );
    let pid = i32::try_from(pid).unwrap();
    // SAFETY: kill(2) of a pid this test read from skvm's status.
    let killed = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(killed, 0);
    vm.wait_for("device console0 (pid ", Duration::from_secs(60));
    let start = Instant::now();
    let mut second = loop {
        let (_, st) = ctl(&ctl_sock, "status");
        if st["devices"][0]["restarts"] == 1 && st["devices"][0]["state"] == "running" {
            break attach(&sock);
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{st}");
        std::thread::sleep(Duration::from_millis(100));
    };
    second.write_all(b"echo SKVM-AFTER-$((6*7))\n").unwrap();
    read_until(&mut second, b"SKVM-AFTER-42", Duration::from_secs(120));
    // A restart asked for saves the device's state into the next one.
    let (code, answer) = ctl(&ctl_sock, "device-restart console0");
    assert_eq!(code, 0, "{answer}");
    let mut third = attach(&sock);
    third.write_all(b"echo SKVM-SAVED-$((6*7))\n").unwrap();
    read_until(&mut third, b"SKVM-SAVED-42", Duration::from_secs(120));
    let (_, st) = ctl(&ctl_sock, "status");
    assert_eq!(st["devices"][0]["restarts"], 2, "{st}");
    third.write_all(b"exit\n").unwrap();
    let f = vm.wait_exit(Duration::from_secs(120));
    assert_eq!(f.code(), 0, "{}", f.output);
    assert!(
        f.output.contains("restarted it"),
        "no restart reported: {}",
        f.output
    );
    assert!(!sock.exists() && !ctl_sock.exists());
}

#[test]
fn hvc0_on_a_pty_takes_input_and_hvc1_appends_to_a_file() {
    let scratch = Scratch::new("console", "hvc-pty");
    let log = scratch.path("hvc1.log");
    std::fs::write(&log, "kept\n").unwrap();
    let mut vm = TestVm::spawn([
        "run",
        "--console",
        "pty",
        "--console",
        &format!("file={}", log.display()),
        "--run",
        "(echo SKVM-TO-FILE > /dev/hvc1); echo SKVM-HVC-READY; \
         echo GOT=$(head -c 5 /dev/hvc0)",
    ]);
    vm.wait_for(
        "device console0: hvc0 on /dev/pts/",
        Duration::from_secs(30),
    );
    let out = vm.output();
    let path = out
        .lines()
        .find_map(|l| l.split("hvc0 on ").nth(1))
        .unwrap()
        .trim()
        .to_owned();
    let mut pty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&path)
        .unwrap();
    vm.wait_for("SKVM-HVC-READY", BOOT);
    // A line: hvc0 is in canonical mode.
    pty.write_all(b"typed\n").unwrap();
    let f = vm.wait_exit(Duration::from_secs(120));
    assert_eq!(f.code(), 0, "{}", f.output);
    assert!(f.output.contains("GOT=typed"), "{}", f.output);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.starts_with("kept\n") && text.contains("SKVM-TO-FILE"),
        "{text:?}"
    );
}

#[test]
fn bad_console_options_are_refused_with_a_clear_line() {
    let scratch = Scratch::new("console", "hvc-bad");
    let dir = scratch.path("");
    refused(
        "--console",
        &[
            (
                "stdio".to_owned(),
                "--console stdio: skvm's terminal is the 8250's",
            ),
            ("tty".to_owned(), "--console 'tty': expected"),
            (
                format!("socket={}", dir.display()),
                "exists and is not a socket",
            ),
            (
                format!("socket={}/no/such/dir/s.sock", dir.display()),
                "cannot listen",
            ),
            (
                format!("file={}/no/such/dir/log", dir.display()),
                "--console file=",
            ),
        ],
    );
    // Two consoles cannot share skvm's terminal.
    let f = TestVm::spawn([
        "run",
        "--serial",
        "off",
        "--console",
        "stdio",
        "--console",
        "stdio",
    ])
    .wait_exit(Duration::from_secs(30));
    assert_ne!(f.code(), 0, "{}", f.output);
    assert!(
        f.output
            .contains("only one console can have skvm's terminal"),
        "{}",
        f.output
    );
}

#[test]
fn a_guest_shell_on_hvc0_goes_on_after_a_snapshot_restored_onto_another_socket() {
    let scratch = Scratch::new("console", "hvc-snapshot");
    let first_sock = scratch.path("first.sock");
    let second_sock = scratch.path("second.sock");
    let ctl_sock = scratch.path("ctl.sock");
    let snap = scratch.path("snap");
    let mut vm = TestVm::spawn([
        "run",
        "--console",
        &format!("socket={}", first_sock.display()),
        "--ctl",
        ctl_sock.to_str().unwrap(),
        "--cmdline",
        "console=hvc0",
    ]);
    vm.wait_for("Run /init as init process", BOOT);
    let mut client = attach(&first_sock);
    read_until(&mut client, SHELL_PROMPT, BOOT);
    let (code, answer) = ctl(&ctl_sock, &format!("snapshot {}", snap.display()));
    assert_eq!(code, 0, "{answer}");
    let f = vm.wait_exit(Duration::from_secs(60));
    assert_eq!(f.code(), 0, "{}", f.output);
    // The restored console serves the socket this run names; the shell
    // that was waiting for input reads it.
    let restored = TestVm::spawn([
        "run",
        "--restore",
        snap.to_str().unwrap(),
        "--console",
        &format!("socket={}", second_sock.display()),
    ]);
    let mut client = attach(&second_sock);
    client
        .write_all(b"echo SKVM-RESTORED-$((6*7)); poweroff -f\n")
        .unwrap();
    read_until(&mut client, b"SKVM-RESTORED-42", Duration::from_secs(120));
    let f = restored.wait_exit(Duration::from_secs(120));
    assert_eq!(f.code(), 0, "{}", f.output);
    assert!(!second_sock.exists() && !first_sock.exists());
}

#[test]
fn hvc0_on_skvms_terminal_takes_what_is_typed_and_the_escape_key_still_quits() {
    let (mut vm, mut stdin) = TestVm::spawn_typing([
        "run",
        "--serial",
        "off",
        "--console",
        "stdio",
        "--cmdline",
        "console=hvc0",
    ]);
    // The prompt ends no line, which wait_for needs: look for it.
    let start = Instant::now();
    while !vm.output().contains("skvm:~# ") {
        assert!(start.elapsed() < BOOT, "no prompt:\n{}", vm.output());
        std::thread::sleep(Duration::from_millis(200));
    }
    stdin.write_all(b"echo SKVM-TYPED-$((6*7))\n").unwrap();
    vm.wait_for("SKVM-TYPED-42", Duration::from_secs(120));
    // Ctrl-A x is skvm's, not the guest's: skvm stops the VM and exits 0.
    stdin.write_all(&[0x01, b'x']).unwrap();
    let f = vm.wait_exit(Duration::from_secs(60));
    assert_eq!(f.code(), 0, "{}", f.output);
    assert!(!f.output.contains("Power down"), "{}", f.output);
}
