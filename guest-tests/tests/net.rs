//! virtio-net over a tap, in a network namespace each test creates and
//! deletes (no address outside it is ever used): the guest pings the host
//! side and is pinged, TCP data crosses each way with the right checksum at
//! MTU 1500 and 9000 (at 1500 while the device process is killed and
//! restarted three times), a tap skvm creates lives exactly as long as
//! skvm, and creating one without CAP_NET_ADMIN fails clearly.
//!
//! The host side of the TCP transfers runs in a thread that joined the
//! namespace (setns affects the calling thread only). Transfers are
//! `SKVM_NET_TEST_MIB` MiB each way (default 2, which keeps the test command
//! inside CI's time and still lasts the three kills; `scripts/soak.sh` runs
//! them with 64). This host's KVM emulates guest kernel code, and the
//! guest's TCP stack is the bottleneck.

// Test code: a panic is a failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use guest_tests::{
    booted_with, code_and_text, field, md5, pattern, sigkill, skvm_bin, tcp_round_trip, Netns,
    TestVm, GUEST_IP, HOST_IP,
};

const TIMEOUT: Duration = Duration::from_secs(2400);

fn transfer_bytes() -> usize {
    let mib: usize = std::env::var("SKVM_NET_TEST_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    mib << 20
}

/// What the guest runs: address, MTU, a ping of the host, then receive a
/// file on port 5001, print its md5, and send it back to the host's port
/// 5002. One command at a time (see docs/ARCHITECTURE.md).
fn guest_script(mtu: u32, ping_size: u32) -> String {
    format!(
        "ip addr add {GUEST_IP}/24 dev eth0; ip link set eth0 mtu {mtu}; ip link set eth0 up; \
         ping -c 3 -s {ping_size} {HOST_IP}; ip -s link show eth0; ip neigh; \
         nc -l -p 5001 > /tmp/in; md5sum /tmp/in; nc {HOST_IP} 5002 < /tmp/in"
    )
}

/// The host side: send `data` to the guest once it listens, ping it with
/// `ping_size` bytes (not fragmented), and take the guest's copy back.
/// Returns (ping output, what came back).
fn host_side(ns: &Netns, data: Vec<u8>, ping_size: u32) -> (String, Vec<u8>) {
    let ping_ns = ns.name().to_owned();
    tcp_round_trip(ns, data, move || {
        let ping = Command::new("ip")
            .args([
                "netns", "exec", &ping_ns, "ping", "-c", "3", "-w", "60", "-M", "do",
            ])
            .args(["-s", &ping_size.to_string(), GUEST_IP])
            .output()
            .unwrap();
        String::from_utf8_lossy(&ping.stdout).into_owned()
    })
}

/// The vCPUs and memory of the net tests' machine. The transfer tests and
/// the created-tap test all give them, so that they start from one snapshot.
const MACHINE: [&str; 4] = ["--cpus", "2", "--mem", "512M"];

/// Boots a guest on tap `tap` in `ns` and moves data both ways; `kills`
/// times during the transfer to the guest, kills the device process (which
/// skvm restarts).
fn ping_and_transfer(ns: &Netns, mode: &str, mtu: u32, kills: usize) {
    let tap = "skvmt0";
    ns.tap(tap, mtu);
    ns.ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", tap]);
    // The largest ICMP payload a frame of this MTU carries.
    let ping_size = mtu - 28;
    let vm = booted_with(
        || ns.exec(skvm_bin().to_str().unwrap()),
        [
            &MACHINE[..],
            &[
                "--device-mode",
                mode,
                "--net",
                &format!("tap={tap}"),
                "--run",
                &guest_script(mtu, ping_size),
            ],
        ]
        .concat(),
    );
    let data = pattern(transfer_bytes());
    let sent_md5 = md5(&data);
    let (ping, back) = std::thread::scope(|scope| {
        let vm = &vm;
        scope.spawn(move || kill_during_transfer(vm, kills));
        host_side(ns, data, ping_size)
    });
    let f = vm.wait_exit(TIMEOUT);
    let out = &f.output;
    assert_eq!(f.code(), 0, "{out}");
    assert_eq!(field(out, "SKVM-CMD-EXIT").as_deref(), Some("0"), "{out}");
    // The guest pinged the host, with full-size frames. (Its counters
    // and the tap's say where a lost one went.)
    assert!(
        out.contains("3 packets transmitted, 3 packets received"),
        "{out}\nthe host's side:\n{}",
        ns.link_report(tap)
    );
    assert!(
        out.contains(&format!("{} bytes from {HOST_IP}", ping_size + 8)),
        "{out}"
    );
    // The host pinged the guest, unfragmented. Without `-w` ping waits
    // only two round trips for the last reply, which a guest whose kernel
    // code is emulated, busy with a transfer, can miss; with it ping goes
    // on until three replies came, so more may have been sent.
    assert!(
        ping.contains(" 3 received,"),
        "{ping}\n{out}\nthe host's side:\n{}",
        ns.link_report(tap)
    );
    // Host to guest: the guest's md5 of what it got.
    assert!(
        out.contains(&format!("{sent_md5}  /tmp/in")),
        "the guest's copy differs (sent {sent_md5}):\n{out}"
    );
    // Guest to host.
    assert_eq!(back.len(), transfer_bytes());
    assert_eq!(md5(&back), sent_md5);
    let restarts = out
        .lines()
        .filter(|l| l.contains("device net0 (pid ") && l.contains("restarted it"))
        .count();
    assert_eq!(restarts, kills, "{out}");
}

/// Once the guest has pinged the host (its transfer comes next), kills the
/// net0 process `kills` times, a second apart, each time once skvm has
/// restarted it.
fn kill_during_transfer(vm: &TestVm, kills: usize) {
    if kills == 0 {
        return;
    }
    let deadline = Instant::now() + TIMEOUT;
    while !vm.output().contains("packets received") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut last = 0;
    for _ in 0..kills {
        std::thread::sleep(Duration::from_secs(1));
        let pid = guest_tests::new_device_pid(vm, "net0", last, TIMEOUT);
        sigkill(pid);
        last = pid;
    }
}

#[test]
fn a_process_device_pings_and_moves_data_both_ways_at_mtu_1500_through_three_kills() {
    let ns = Netns::new("n1500");
    ping_and_transfer(&ns, "process", 1500, 3);
}

#[test]
fn a_thread_device_pings_and_moves_data_both_ways_at_mtu_9000() {
    let ns = Netns::new("n9000");
    ping_and_transfer(&ns, "thread", 9000, 0);
}

#[test]
fn a_created_tap_lives_exactly_as_long_as_skvm() {
    let ns = Netns::new("ncreate");
    // Ends normally: the tap goes with skvm.
    let skvm = || ns.exec(skvm_bin().to_str().unwrap());
    // The machine of the transfer tests above, started from its snapshot.
    let machine = [&MACHINE[..], &["--net", "tap"]].concat();
    let mut vm = booted_with(skvm, [&machine[..], &["--run", "true"]].concat());
    vm.wait_for("created tap skvmtap0", Duration::from_secs(60));
    assert!(ns.has_link("skvmtap0"));
    let f = vm.wait_exit(TIMEOUT);
    assert_eq!(f.code(), 0, "{}", f.output);
    assert!(!ns.has_link("skvmtap0"), "the tap outlived skvm");
    // Killed: the kernel removes it all the same once the device process,
    // which dies with skvm, has gone.
    let mut vm = booted_with(
        skvm,
        [&machine[..], &["--run", "echo SKVM-UP; sleep 600"]].concat(),
    );
    vm.wait_for("created tap skvmtap0", Duration::from_secs(60));
    vm.wait_for("SKVM-UP", Duration::from_secs(600));
    sigkill(vm.pid());
    let deadline = Instant::now() + Duration::from_secs(10);
    while ns.has_link("skvmtap0") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!ns.has_link("skvmtap0"), "the tap outlived a killed skvm");
}

/// Runs skvm in `ns` with `args` up to its exit (it must fail before
/// booting); returns (exit code, output).
fn refused(ns: &Netns, wrapper: &[&str], args: &[&str]) -> (i32, String) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns.name()])
        .args(wrapper)
        .arg(skvm_bin())
        .arg("run")
        .args(args)
        .args(["--run", "true"]);
    let out = cmd.output().unwrap();
    code_and_text(&out)
}

#[test]
fn tap_errors_are_one_clear_line() {
    let ns = Netns::new("nerr");
    // No CAP_NET_ADMIN: creating a tap is refused.
    let no_admin = [
        "setpriv",
        "--inh-caps=-net_admin",
        "--bounding-set=-net_admin",
        "--",
    ];
    let (code, out) = refused(&ns, &no_admin, &["--net", "tap"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("cannot create a tap device: permission denied")
            && out.contains("CAP_NET_ADMIN"),
        "{out}"
    );
    assert!(!out.contains("panicked"), "{out}");
    assert!(!ns.has_link("skvmtap0"));
    // A tap that does not exist, and something that is not a tap.
    let (code, out) = refused(&ns, &[], &["--net", "tap=nosuchtap"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("tap nosuchtap does not exist"), "{out}");
    let (code, out) = refused(&ns, &[], &["--net", "tap=lo"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("lo is not a tap device"), "{out}");
    // A tap another process holds.
    ns.ip(&["tuntap", "add", "busy0", "mode", "tap"]);
    let holder = ns.run_in(|| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .unwrap()
    });
    attach(&holder, "busy0");
    let (code, out) = refused(&ns, &[], &["--net", "tap=busy0"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("tap busy0 is in use by another process"),
        "{out}"
    );
    // Bad options.
    for bad in ["tap,mac=01:02:03:04:05:06", "tap=a/b", "vde", "tap,speed=1"] {
        let (code, out) = refused(&ns, &[], &["--net", bad]);
        assert_eq!(code, 1, "{bad}: {out}");
        assert_eq!(out.lines().count(), 1, "{bad}: {out}");
        assert!(out.contains("--net"), "{bad}: {out}");
    }
}

/// Attaches `tun` (an open /dev/net/tun) to tap `name`.
fn attach(tun: &std::fs::File, name: &str) {
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        pad: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; 16],
        flags: 0x0002 | 0x1000,
        pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one struct ifreq.
    let r = unsafe { libc::ioctl(tun.as_raw_fd(), 0x4004_54ca, &mut req) };
    assert_eq!(r, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
}
