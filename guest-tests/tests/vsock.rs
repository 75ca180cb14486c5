//! virtio-vsock (`--vsock cid=N,socket=PATH`) with the default guest and
//! its `vsock` tool (guest/tools/vsock.c): a mebibyte each way on several
//! streams at once, checked byte by byte; a host peer that vanishes
//! mid-stream; a guest that does not read (the device's memory stays
//! bounded); the device killed mid-stream and restarted, with new streams
//! working; bad options; and (slow, scripts/test-slow.sh) Debian's stock
//! kernel with its vsock and console modules.

// Test code: a panic is a failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use guest_tests::{booted, children, ctl, device_pids, new_device_pid, sigkill, Scratch, TestVm};

/// `--vsock` for a device on host socket `sock`. Both tests of a running
/// guest give the same CID, so that they start from one snapshot.
fn vsock_arg(sock: &Path) -> String {
    format!("cid=3,socket={}", sock.display())
}

/// Boot to the guest's command, with the machine shared with other tests.
const BOOT: Duration = Duration::from_secs(600);
/// A mebibyte, each way.
const MIB: usize = 1 << 20;

/// Byte `i` of every stream the tests and the guest tool send.
fn pattern(from: usize, len: usize) -> Vec<u8> {
    (from..from + len)
        .map(|i| u8::try_from(i % 251).unwrap())
        .collect()
}

/// A host program's stream to guest port `port` through skvm's socket
/// `sock`; the host port skvm gave it.
fn connect(sock: &Path, port: u32) -> (UnixStream, u32) {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\n") {
        let n = s.read(&mut b).unwrap();
        assert_eq!(n, 1, "the stream ended after {line:?}");
        line.push(b[0]);
    }
    let line = String::from_utf8(line).unwrap();
    let local = line
        .strip_prefix("OK ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("answer {line:?}"));
    (s, local)
}

/// Sends `len` bytes of the pattern on `s` while reading the echo back;
/// panics unless every byte comes back in order.
fn echo_round_trip(s: UnixStream, len: usize) {
    let mut reader = s.try_clone().unwrap();
    let check = std::thread::spawn(move || {
        let mut got = 0;
        let mut buf = vec![0u8; 64 << 10];
        while got < len {
            let n = reader.read(&mut buf).unwrap();
            assert!(n > 0, "the echo ended after {got} bytes");
            assert_eq!(&buf[..n], &pattern(got, n)[..], "at byte {got}");
            got += n;
        }
    });
    let mut w = s;
    for at in (0..len).step_by(64 << 10) {
        w.write_all(&pattern(at, (64 << 10).min(len - at))).unwrap();
    }
    check.join().unwrap();
}

/// A host echo server on `path` for guest connections: each stream's
/// bytes come back until the guest ends its side.
fn echo_server(path: &Path) -> std::thread::JoinHandle<()> {
    let l = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let _ = std::io::copy(&mut s, &mut w);
            });
        }
    })
}

/// Resident kB of process `pid`.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Waits until `sock` accepts a connection: skvm has bound it.
fn wait_for_socket(sock: &Path) {
    let start = Instant::now();
    while UnixStream::connect(sock).is_err() {
        assert!(start.elapsed() < Duration::from_secs(60), "no {sock:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn streams_carry_a_mebibyte_each_way_and_a_peer_that_goes_or_does_not_read_harms_no_other() {
    let scratch = Scratch::new("vsock", "both-ways");
    let sock = scratch.path("v.sock");
    let _server = echo_server(&scratch.path("v.sock_6000"));
    // The guest listens (echo on 5000, a reader that never reads on 5001),
    // then sends a mebibyte on each of three streams to the host's echo
    // server and checks what comes back.
    let script = "vsock listen 5000 echo & vsock listen 5001 sink & sleep 1; \
                  echo SKVM-LISTENING; \
                  vsock send 2 6000 1048576 > /a & a=$!; vsock send 2 6000 1048576 > /b & b=$!; \
                  vsock send 2 6000 1048576 > /c & c=$!; wait $a $b $c; cat /a /b /c; \
                  echo SKVM-SENT; sleep 100000";
    let mut vm = booted(["--vsock", &vsock_arg(&sock), "--run", script]);
    vm.wait_for("SKVM-LISTENING", BOOT);
    // Host to guest: three streams at once, a mebibyte each.
    let streams: Vec<_> = (0..3)
        .map(|_| {
            let (s, local) = connect(&sock, 5000);
            assert!(local >= 1 << 30, "{local}");
            std::thread::spawn(move || echo_round_trip(s, MIB))
        })
        .collect();
    for t in streams {
        t.join().unwrap();
    }
    vm.wait_for("SKVM-SENT", Duration::from_secs(300));
    let out = vm.output();
    assert_eq!(
        out.matches("VSOCK sent=1048576 got=1048576 bad=0").count(),
        3,
        "{out}"
    );

    // A host peer that goes away mid-stream resets only its stream.
    let (mut gone, _) = connect(&sock, 5000);
    gone.write_all(&pattern(0, 100 << 10)).unwrap();
    drop(gone);
    let (s, _) = connect(&sock, 5000);
    echo_round_trip(s, 64 << 10);

    // A guest that does not read: the host fills its own socket buffer
    // and the guest's credit, and the device holds nothing more.
    let device = device_pids(vm.pid(), "vsock0")[0];
    let before = rss_kb(device);
    let (flood, _) = connect(&sock, 5001);
    flood.set_nonblocking(true).unwrap();
    let mut taken = 0usize;
    let chunk = vec![0x5au8; 64 << 10];
    let start = Instant::now();
    let mut idle = Instant::now();
    while idle.elapsed() < Duration::from_secs(3) {
        match (&flood).write(&chunk) {
            Ok(n) => {
                taken += n;
                idle = Instant::now();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("writing to a guest that does not read: {e}"),
        }
        assert!(start.elapsed() < Duration::from_secs(60), "took {taken}");
    }
    let after = rss_kb(device);
    assert!(taken < 16 * MIB, "the host wrote {taken} bytes");
    assert!(
        after < before + 4096,
        "the device grew from {before} to {after} kB"
    );
    // Other streams still work.
    let (s, _) = connect(&sock, 5000);
    echo_round_trip(s, 64 << 10);
    drop(flood);
    drop(vm);
}

/// skvm's connector (a child of the VMM named skvm-connector) works in
/// `dir`, under a seccomp filter, with no fd but stderr and its channel.
fn connector_holds_only_its_channel(skvm: u32, dir: &Path) {
    let pid = children(skvm)
        .into_iter()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default()
                == "skvm-connector\n"
        })
        .expect("no skvm-connector process");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("\nSeccomp:\t2\n"), "{status}");
    assert!(status.contains("\nNoNewPrivs:\t1\n"), "{status}");
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    assert_eq!(cwd, dir);
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    fds.sort();
    assert_eq!(fds, ["2", "3"]);
}

#[test]
fn a_killed_device_restarts_and_new_streams_work() {
    let scratch = Scratch::new("vsock", "restart");
    let sock = scratch.path("v.sock");
    let ctl_sock = scratch.path("ctl.sock");
    // The machine of the test above: both start from its snapshot.
    let mut vm = booted([
        "--vsock",
        &vsock_arg(&sock),
        "--ctl",
        ctl_sock.to_str().unwrap(),
        "--run",
        "vsock listen 5000 echo & sleep 1; echo SKVM-LISTENING; sleep 100000",
    ]);
    vm.wait_for("SKVM-LISTENING", BOOT);
    wait_for_socket(&sock);
    connector_holds_only_its_channel(vm.pid(), sock.parent().unwrap());
    let (_, st) = ctl(&ctl_sock, "status");
    let dev = guest_tests::device_status(&st, "vsock0");
    assert_eq!(dev["backend"]["backend"], "socket", "{st}");
    assert_eq!(dev["backend"]["path"], sock.to_str().unwrap(), "{st}");
    // A stream open when the device dies: it ends (reset), and the guest
    // carries on.
    let (mut open, _) = connect(&sock, 5000);
    open.write_all(b"before").unwrap();
    let mut b = [0u8; 6];
    open.read_exact(&mut b).unwrap();
    let old = device_pids(vm.pid(), "vsock0")[0];
    sigkill(old);
    new_device_pid(&vm, "vsock0", old, Duration::from_secs(60));
    let mut rest = Vec::new();
    let _ = open.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");
    // A new stream works, through the same socket.
    let (s, _) = connect(&sock, 5000);
    echo_round_trip(s, 256 << 10);
    let out = vm.output();
    assert!(out.contains("device vsock0"), "{out}");
}

/// Each value of `--vsock` in `cases` stops skvm before it boots, with a
/// non-zero exit and one line that holds the expected words.
#[test]
fn bad_vsock_options_are_refused_with_a_clear_line() {
    let scratch = Scratch::new("vsock", "bad");
    let file = scratch.path("not-a-socket");
    std::fs::write(&file, "x").unwrap();
    for (arg, want) in [
        (
            "cid=3,socket=/no/such/dir/v.sock".to_owned(),
            "--vsock socket=/no/such/dir/v.sock: directory /no/such/dir does not exist",
        ),
        (
            format!("cid=3,socket={}", file.display()),
            "the file exists and is not a socket",
        ),
        (
            format!("cid=2,socket={}", scratch.path("v.sock").display()),
            "--vsock cid=2: a guest's CID is 3",
        ),
        ("cid=3".to_owned(), "needs both cid=N and socket=PATH"),
    ] {
        let f = TestVm::spawn(["run", "--vsock", &arg]).wait_exit(Duration::from_secs(30));
        assert_ne!(f.code(), 0, "--vsock {arg}: {}", f.output);
        assert!(f.output.contains(want), "--vsock {arg}: {}", f.output);
        assert!(!f.output.contains("panicked"), "{}", f.output);
        assert_eq!(
            f.output.lines().filter(|l| l.contains("error")).count(),
            1,
            "{}",
            f.output
        );
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
}

#[test]
#[ignore = "slow (about 5 minutes here, the stock kernel's modules loading): scripts/test-slow.sh runs it"]
fn debians_stock_kernel_loads_the_vsock_and_console_modules_and_uses_both() {
    let (kernel, initrd) = guest_tests::stock_kernel();
    let scratch = Scratch::new("vsock", "stock");
    let sock = scratch.path("v.sock");
    let hvc = scratch.path("hvc0.log");
    let _server = echo_server(&scratch.path("v.sock_6000"));
    let f = TestVm::spawn([
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--mem",
        "512M",
        "--vsock",
        &format!("cid=7,socket={}", sock.display()),
        "--console",
        &format!("file={}", hvc.display()),
        "--run",
        "vsock send 2 6000 65536; echo SKVM-ON-HVC0 >/dev/hvc0",
    ])
    .finish_watching(Duration::from_secs(2400), Duration::from_secs(600))
    .unwrap_or_else(|u| panic!("the stock kernel did not finish:\n{}", u.output));
    assert_eq!(f.code(), 0, "{}", f.output);
    assert!(
        f.output.contains("VSOCK sent=65536 got=65536 bad=0"),
        "{}",
        f.output
    );
    let console = std::fs::read_to_string(&hvc).unwrap();
    assert!(console.contains("SKVM-ON-HVC0"), "{console}");
}
