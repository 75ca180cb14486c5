//! `skvm drive`: the rng, blk, net, console, vsock and fs devices, started as
//! `skvm run` starts them (a confined process with its seccomp filter in kill mode, or a
//! thread), are driven from the host through their real queues, eventfds
//! and ipc. net runs over a tap in a network namespace each test creates
//! and deletes (no interface or address outside it is touched).

// Test code: a panic is a failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use guest_tests::{
    assert_no_forbidden_syscall, code_and_text, field, outside_ids, skvm_bin, Netns, Scratch,
};

fn drive(args: &[&str]) -> (i32, String) {
    run_drive(Command::new(skvm_bin()), args)
}

/// Runs `skvm drive ARGS` through `skvm` (the binary, or a wrapper that
/// runs it); no run may make a forbidden syscall.
fn run_drive(mut skvm: Command, args: &[&str]) -> (i32, String) {
    let out = skvm
        .arg("drive")
        .args(args)
        .output()
        .expect("cannot run skvm drive");
    let (code, text) = code_and_text(&out);
    assert_no_forbidden_syscall(&text);
    (code, text)
}

fn value(out: &str, key: &str) -> f64 {
    let v = field(&out.replace(' ', "\n").replace('=', " "), key)
        .unwrap_or_else(|| panic!("no {key} in {out}"));
    v.parse().unwrap_or(0.0)
}

#[test]
fn the_rng_device_serves_a_host_driver_in_both_modes() {
    for mode in ["process", "thread"] {
        for depth in ["1", "32"] {
            let (code, out) = drive(&[
                "--device-mode",
                mode,
                "--depth",
                depth,
                "--requests",
                "2000",
                "--size",
                "512",
            ]);
            assert_eq!(code, 0, "{mode} depth {depth}: {out}");
            assert!(value(&out, "mb_per_s") > 0.0, "{out}");
            assert!(value(&out, "p50_us") > 0.0, "{out}");
            // The device's own CPU time, found for a process and a thread.
            assert!(value(&out, "cpu_us_per_req") > 0.0, "{out}");
        }
    }
}

#[test]
fn devices_that_poll_and_a_driver_that_polls_serve_the_same_requests() {
    let img = Image::new("polled", 0x33);
    let disk = img.arg("");
    for mode in ["process", "thread"] {
        for device in [
            &["--size", "64"][..],
            &["--device", "blk0", "--disk", &disk],
        ] {
            let (code, out) = drive(
                &[
                    device,
                    &["--device-mode", mode, "--requests", "3000"],
                    &["--device-poll-us", "50", "--halt-poll-us", "200"],
                ]
                .concat(),
            );
            assert_eq!(code, 0, "{mode} {device:?}: {out}");
            assert!(value(&out, "req_per_s") > 0.0, "{out}");
            assert!(value(&out, "cpu_us_per_req") > 0.0, "{out}");
        }
    }
    let (code, out) = drive(&["--device-poll-us", "1001"]);
    assert_eq!(code, 2, "{out}");
}

#[test]
fn a_driver_with_event_indexes_gets_every_answer_at_depth_1_and_32() {
    let img = Image::new("event-idx", 0x44);
    let disk = img.arg("");
    for depth in ["1", "32"] {
        for device in [
            &["--size", "512"][..],
            &["--device", "blk0", "--disk", &disk],
        ] {
            let (code, out) = drive(
                &[
                    device,
                    &["--event-idx", "--requests", "3000", "--depth", depth],
                ]
                .concat(),
            );
            assert_eq!(code, 0, "{device:?} depth {depth}: {out}");
            assert!(value(&out, "req_per_s") > 0.0, "{out}");
        }
    }
    let (code, out) = drive(&["--device", "console0", "--event-idx"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("--event-idx drives rng, blk and fs"), "{out}");
}

#[test]
fn the_console_device_echoes_through_a_host_peer_in_both_modes() {
    for mode in ["process", "thread"] {
        for size in ["1", "64", "4096"] {
            let (code, out) = drive(&[
                "--device",
                "console0",
                "--device-mode",
                mode,
                "--requests",
                "500",
                "--size",
                size,
            ]);
            assert_eq!(code, 0, "{mode} size {size}: {out}");
            assert!(value(&out, "p50_us") > 0.0, "{out}");
        }
    }
}

#[test]
fn the_vsock_device_carries_a_host_programs_stream_in_both_modes() {
    for mode in ["process", "thread"] {
        for size in ["1", "64", "65536"] {
            let (code, out) = drive(&[
                "--device",
                "vsock0",
                "--device-mode",
                mode,
                "--requests",
                "300",
                "--size",
                size,
            ]);
            assert_eq!(code, 0, "{mode} size {size}: {out}");
            assert!(value(&out, "p50_us") > 0.0, "{out}");
        }
    }
    // Without a guest listening there, --connect says so.
    let scratch = Scratch::new("drive", "connect");
    let (code, out) = drive(&[
        "--device",
        "vsock0",
        "--connect",
        scratch.path("none.sock").to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cannot connect to"), "{out}");
}

#[test]
fn the_device_process_is_small() {
    let (code, out) = drive(&["--requests", "100"]);
    assert_eq!(code, 0, "{out}");
    let pss = value(&out, "pss_kib");
    assert!(pss > 0.0 && pss < 2048.0, "device PSS {pss} KiB: {out}");
}

/// A 4 MiB image of a repeated byte, removed when dropped.
struct Image(std::path::PathBuf);

impl Image {
    fn new(name: &str, fill: u8) -> Self {
        let p = std::env::temp_dir().join(format!("skvm-drive-{name}-{}", std::process::id()));
        std::fs::write(&p, vec![fill; 4 << 20]).unwrap();
        Self(p)
    }
    fn arg(&self, opts: &str) -> String {
        format!("{}{opts}", self.0.display())
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn the_blk_device_serves_a_host_driver_in_both_modes() {
    let img = Image::new("modes", 0x11);
    for mode in ["process", "thread"] {
        for (op, size, depth) in [
            ("read", "65536", "1"),
            ("write", "65536", "1"),
            ("randread", "4096", "32"),
            ("randwrite", "4096", "32"),
        ] {
            let disk = img.arg("");
            let (code, out) = drive(&[
                "--device",
                "blk0",
                "--disk",
                &disk,
                "--device-mode",
                mode,
                "--op",
                op,
                "--size",
                size,
                "--depth",
                depth,
                "--requests",
                "500",
            ]);
            assert_eq!(code, 0, "{mode} {op}: {out}");
            assert!(value(&out, "mb_per_s") > 0.0, "{out}");
        }
    }
    // The driver's writes reached the image (its buffers start zeroed).
    let data = std::fs::read(&img.0).unwrap();
    assert!(
        data.iter().any(|&b| b != 0x11),
        "no write reached the image"
    );
    assert_eq!(data.len(), 4 << 20);
}

#[test]
fn a_read_only_blk_device_is_driven_for_reads_only() {
    let img = Image::new("ro", 0x22);
    let disk = img.arg(",ro");
    let (code, out) = drive(&["--device", "blk0", "--disk", &disk, "--requests", "200"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = drive(&["--device", "blk0", "--disk", &disk, "--op", "write"]);
    assert_eq!(code, 1, "{out}");
    assert!(std::fs::read(&img.0).unwrap().iter().all(|&b| b == 0x22));
}

#[test]
fn the_fs_device_serves_a_host_driver_in_both_modes() {
    use std::os::unix::fs::PermissionsExt;
    let share = Scratch::new("drive", "fs");
    let (uid, gid) = outside_ids();
    std::os::unix::fs::chown(&share.0, Some(uid), Some(gid)).unwrap();
    let spec = format!("tag=t,path={}", share.0.display());
    let cases = [
        ("write", "65536", "1"),
        ("read", "4096", "32"),
        ("create", "8", "1"),
        ("stat", "8", "16"),
        ("unlink", "8", "4"),
    ];
    for mode in ["process", "thread"] {
        for (op, size, depth) in cases {
            let (code, out) = drive(&[
                "--device",
                "fs0",
                "--fs",
                &spec,
                "--device-mode",
                mode,
                "--op",
                op,
                "--requests",
                "300",
                "--size",
                size,
                "--depth",
                depth,
            ]);
            assert_eq!(code, 0, "{mode} {op}: {out}");
            assert!(value(&out, "req_per_s") > 0.0, "{out}");
            if op == "read" || op == "write" {
                assert!(value(&out, "mb_per_s") > 0.0, "{out}");
            }
            let left: Vec<_> = std::fs::read_dir(&share.0).unwrap().collect();
            assert!(left.is_empty(), "{mode} {op} left {left:?}");
        }
    }
    let ro = format!("{spec},ro");
    let refusals: [(&[&str], &str); 3] = [
        (&["--fs", &ro, "--op", "write"], "the share is read-only"),
        (
            &["--fs", &spec, "--op", "create", "--requests", "20000"],
            "at most 10000 files",
        ),
        (
            &["--fs", &spec, "--size", "200000"],
            "an fs read or write is 8 to",
        ),
    ];
    for (args, why) in refusals {
        let (code, out) = drive(&[&["--device", "fs0"], args].concat());
        assert_eq!(code, 1, "{args:?}: {out}");
        assert!(out.contains(why), "{args:?}: {out}");
    }
    // A share the device may not write: the device's answer, named, and
    // nothing left behind.
    std::fs::set_permissions(&share.0, std::fs::Permissions::from_mode(0o555)).unwrap();
    let (code, out) = drive(&["--device", "fs0", "--fs", &spec, "--op", "write"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("Permission denied") && out.contains("must be able to write the share"),
        "{out}"
    );
    assert_eq!(std::fs::read_dir(&share.0).unwrap().count(), 0);
}

#[test]
fn a_share_its_device_process_cannot_reach_by_path_is_refused_before_it_starts() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "this test makes a directory only root may enter: run it as root"
    );
    // A share below a directory only root may enter (as /root is): the
    // device process, nobody, cannot bind it by its path.
    let s = Scratch::new("drive", "unreachable");
    let locked = s.path("locked");
    let share = locked.join("share");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).unwrap();
    let (uid, gid) = outside_ids();
    std::os::unix::fs::chown(&share, Some(uid), Some(gid)).unwrap();
    let spec = format!("tag=t,path={}", share.display());
    let args = [
        "--device",
        "fs0",
        "--fs",
        &spec,
        "--requests",
        "10",
        "--op",
        "create",
    ];
    let (code, out) = drive(&[&args[..], &["--device-mode", "process"]].concat());
    assert_eq!(code, 1, "{out}");
    let want = format!("{} is not searchable by user {uid}", locked.display());
    assert!(out.contains(&want), "{out}");
    assert!(
        !out.contains("peer closed"),
        "the process was started: {out}"
    );
    // A device thread works from the VMM's fd, which needs no path.
    let (code, out) = drive(&[&args[..], &["--device-mode", "thread"]].concat());
    assert_eq!(code, 0, "{out}");
}

#[test]
fn devices_that_cannot_be_driven_are_refused() {
    let refusals: [(&[&str], &str); 11] = [
        (&["--device", "blk0"], "--disk"),
        (&["--device", "net0"], "give the tap with --net"),
        (
            &["--device", "gpu0"],
            "only rng, blk, net, console, vsock and fs devices",
        ),
        (
            &["--device", "vsock0", "--size", "70000"],
            "a vsock request is at most 65536 bytes",
        ),
        (
            &["--connect", "/tmp/v.sock"],
            "--connect drives the vsock device of a running VM",
        ),
        (
            &["--device", "console0", "--size", "5000"],
            "a console request is at most 4096 bytes",
        ),
        (
            &["--device", "console0", "--hostile", "loop"],
            "--hostile drives rng, blk and net devices only",
        ),
        (&["--net", "tap=t0"], "--net is for net devices"),
        (&["--op", "tx"], "--op tx is not for rng devices"),
        (&["--device", "fs0"], "give the shared directory with --fs"),
        (&["--fs", "tag=t,path=/tmp"], "--fs is for fs devices"),
    ];
    for (args, why) in refusals {
        let (code, out) = drive(args);
        assert_eq!(code, 1, "{args:?}: {out}");
        assert!(out.contains(why), "{args:?}: {out}");
    }
    let img = Image::new("bad", 0);
    let disk = img.arg("");
    let (code, out) = drive(&["--device", "blk0", "--disk", &disk, "--size", "1000"]);
    assert_eq!(code, 1, "{out}");
    let (code, out) = drive(&["--size", "100000"]);
    assert_eq!(code, 1, "{out}");
    let (code, out) = drive(&["--size", "0"]);
    assert_eq!(code, 2, "{out}");
}

#[test]
fn hostile_queues_are_handled_and_the_devices_keep_serving() {
    let img = Image::new("hostile", 0x33);
    let disk = img.arg("");
    for mode in ["process", "thread"] {
        for case in ["loop", "outside", "zero-len", "huge-len", "readonly"] {
            let (code, out) = drive(&["--device-mode", mode, "--hostile", case]);
            assert_eq!(code, 0, "rng {mode} {case}: {out}");
            assert!(
                out.contains("outcome=handled") && out.contains("then=served"),
                "{out}"
            );
        }
        for case in [
            "loop",
            "outside",
            "past-end",
            "partial-sector",
            "split-header",
            "no-status",
            "unknown-type",
        ] {
            let (code, out) = drive(&[
                "--device",
                "blk0",
                "--disk",
                &disk,
                "--device-mode",
                mode,
                "--hostile",
                case,
            ]);
            assert_eq!(code, 0, "blk {mode} {case}: {out}");
            assert!(
                out.contains("outcome=handled") && out.contains("then=served"),
                "{out}"
            );
        }
    }
    let (code, _) = drive(&["--hostile", "no-such-case"]);
    assert_eq!(code, 1);
}

/// `Cpus_allowed_list` of task `tid` of process `pid`.
fn cpus_allowed(pid: u32, tid: u32) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or("")
        .trim()
        .to_owned()
}

#[test]
fn cpus_pins_the_harness_and_the_device_in_both_modes() {
    // The device on the last CPU, the harness on the first.
    let last = std::thread::available_parallelism().map_or(1, |n| n.get()) - 1;
    let pin = format!("0,{last}");
    for mode in ["process", "thread"] {
        let mut child = Command::new(skvm_bin())
            .args(["drive", "--device-mode", mode, "--requests", "100000000"])
            .args(["--cpus", &pin])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let harness = child.id();
        let start = std::time::Instant::now();
        // The device's task: its process, or the thread named for it.
        let device = loop {
            let found = if mode == "process" {
                guest_tests::device_pids(harness, "rng0")
                    .first()
                    .map(|p| (*p, *p))
            } else {
                std::fs::read_dir(format!("/proc/{harness}/task"))
                    .unwrap()
                    .filter_map(Result::ok)
                    .find(|t| {
                        std::fs::read_to_string(t.path().join("comm"))
                            .is_ok_and(|c| c.trim() == "skvm-dev-rng0")
                    })
                    .and_then(|t| t.file_name().to_str()?.parse().ok())
                    .map(|t| (harness, t))
            };
            if let Some((p, t)) = found.filter(|(p, t)| cpus_allowed(*p, *t) == last.to_string()) {
                break (p, t);
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "{mode}: the device was not pinned to CPU {last}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        // Every other thread of the harness is on CPU 0.
        for t in std::fs::read_dir(format!("/proc/{harness}/task")).unwrap() {
            let tid: u32 = t.unwrap().file_name().to_str().unwrap().parse().unwrap();
            if (harness, tid) != device {
                assert_eq!(cpus_allowed(harness, tid), "0", "{mode}: thread {tid}");
            }
        }
        guest_tests::sigkill(harness);
        let _ = child.wait();
    }
    // Bad values: the option's own error, and a CPU the host has not.
    for bad in ["0", "a,1", "0,-1", "0,4096"] {
        let (code, out) = drive(&["--cpus", bad]);
        assert_eq!(code, 2, "--cpus {bad}: {out}");
    }
    let (code, out) = drive(&["--cpus", "0,1000", "--requests", "10"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cannot pin the device to CPU 1000"), "{out}");
    assert!(!out.contains("panicked"), "{out}");
    // A VM's device is not drive's to place.
    let (code, out) = drive(&[
        "--device",
        "vsock0",
        "--connect",
        "/nonexistent",
        "--cpus",
        "0,0",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("with --connect it starts none"), "{out}");
}

#[test]
fn the_unconfined_benchmark_mode_is_for_processes_only() {
    // What bench-devices.sh compares the confined process with.
    let (code, out) = drive(&["--unconfined", "--requests", "200"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("mode=process-unconfined"), "{out}");
    let (code, out) = drive(&["--unconfined", "--device-mode", "thread"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("--unconfined is for --device-mode process"),
        "{out}"
    );
}

#[test]
fn the_fuzz_harness_mode_answers_each_input_and_rejects_oversized_ones() {
    use std::io::Write;
    use std::process::Stdio;
    let mut frames = Vec::new();
    // Empty memory, a garbage queue, and an available index past the ring
    // (the device must refuse that queue and stay alive).
    let mut garbage = vec![0xa5u8; 0x400];
    garbage[0x102] = 0xff;
    garbage[0x103] = 0xff;
    for input in [Vec::new(), vec![0x5au8; 0x300], garbage] {
        frames.extend_from_slice(&u32::try_from(input.len()).unwrap().to_le_bytes());
        frames.extend_from_slice(&input);
    }
    let mut child = Command::new(skvm_bin())
        .args(["drive", "--fuzz-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&frames).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(out.stdout, b"000", "{err}");
    assert_no_forbidden_syscall(&err);
    // More than 64 KiB is not an input the harness takes.
    let mut child = Command::new(skvm_bin())
        .args(["drive", "--fuzz-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&0x2_0000u32.to_le_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most"));
}

/// `skvm drive ARGS` inside `ns`.
fn drive_in(ns: &Netns, args: &[&str]) -> (i32, String) {
    run_drive(ns.exec(skvm_bin().to_str().unwrap()), args)
}

/// `skvm drive` of net0 on `tap` inside `ns`, in `mode`, `op`, and `more`.
fn drive_net(ns: &Netns, tap: &str, mode: &str, op: &str, more: &[&str]) -> (i32, String) {
    let tap = format!("tap={tap}");
    let args = [
        "--device",
        "net0",
        "--net",
        &tap,
        "--device-mode",
        mode,
        "--op",
        op,
    ];
    drive_in(ns, &[&args[..], more].concat())
}

#[test]
fn the_net_device_sends_and_receives_frames_through_a_tap_in_both_modes() {
    let ns = Netns::new("drvnet");
    ns.tap("skvmd0", 1500);
    ns.tap("skvmd1", 9000);
    for mode in ["process", "thread"] {
        for op in ["tx", "rx"] {
            for depth in ["1", "32"] {
                let (code, out) = drive_net(
                    &ns,
                    "skvmd0",
                    mode,
                    op,
                    &["--depth", depth, "--requests", "2000"],
                );
                assert_eq!(code, 0, "{mode} {op} depth {depth}: {out}");
                assert!(out.contains(&format!("op={op} mode={mode}")), "{out}");
                assert!(value(&out, "mb_per_s") > 0.0, "{out}");
                assert!(value(&out, "p50_us") > 0.0, "{out}");
                if mode == "process" {
                    let pss = value(&out, "pss_kib");
                    assert!(pss > 0.0 && pss < 2048.0, "device PSS {pss} KiB: {out}");
                }
            }
            // Jumbo frames, and the smallest.
            for (tap, size) in [("skvmd1", "9014"), ("skvmd0", "60")] {
                let (code, out) = drive_net(
                    &ns,
                    tap,
                    mode,
                    op,
                    &["--size", size, "--depth", "8", "--requests", "400"],
                );
                assert_eq!(code, 0, "{mode} {op} size {size}: {out}");
                assert!(out.contains(&format!("size={size}")), "{out}");
            }
            // Both sides polling: the device looks at the tap between its
            // looks at the queues, the driver at the used index (received
            // frames too); every frame is still checked.
            let polling = ["--device-poll-us", "50", "--halt-poll-us", "200"];
            let (code, out) = drive_net(
                &ns,
                "skvmd0",
                mode,
                op,
                &[&["--size", "60", "--requests", "2000"][..], &polling].concat(),
            );
            assert_eq!(code, 0, "{mode} {op} polled: {out}");
            assert!(value(&out, "p50_us") > 0.0, "{out}");
        }
    }
    // The taps are free again: no device outlived its run.
    let (code, out) = drive_in(&ns, &["--device", "net0", "--net", "tap=skvmd0"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn hostile_net_queues_are_dropped_counted_and_the_device_keeps_serving() {
    let ns = Netns::new("drvhostile");
    ns.tap("skvmh0", 1500);
    for mode in ["process", "thread"] {
        for case in [
            "tx-short",
            "tx-oversized",
            "tx-writable",
            "tx-outside",
            "tx-loop",
            "rx-readable",
            "rx-outside",
            "rx-zero-len",
            "rx-loop",
        ] {
            let (code, out) = drive_in(
                &ns,
                &[
                    "--device",
                    "net0",
                    "--net",
                    "tap=skvmh0",
                    "--device-mode",
                    mode,
                    "--hostile",
                    case,
                ],
            );
            assert_eq!(code, 0, "{mode} {case}: {out}");
            assert!(
                out.contains(&format!(
                    "hostile={case} outcome=handled used_len=0 then=served"
                )),
                "{out}"
            );
            // The device counted exactly the hostile chain's drop.
            let counted = if case.starts_with("tx-") {
                "dropped 1 malformed transmit chains and 0 received frames"
            } else {
                "dropped 0 malformed transmit chains and 1 received frames"
            };
            assert!(
                out.contains(&format!("device net0: {counted}")),
                "{mode} {case}: {out}"
            );
        }
    }
    let (code, out) = drive_in(
        &ns,
        &[
            "--device",
            "net0",
            "--net",
            "tap=skvmh0",
            "--hostile",
            "rx-nonsense",
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("unknown net hostile case"), "{out}");
}

/// A device process cannot write regular files (its file-size limit is 0):
/// with skvm's stderr on a file, its log lines reach the file through the
/// spawner, in both modes.
#[test]
fn device_log_lines_reach_a_stderr_file() {
    let ns = Netns::new("drvlog");
    ns.tap("skvml0", 1500);
    let dir = Scratch::new("drive", "log");
    for mode in ["process", "thread"] {
        let path = dir.path(&format!("{mode}.err"));
        let err = std::fs::File::create(&path).unwrap();
        let status = ns
            .exec(skvm_bin().to_str().unwrap())
            .args(["drive", "--device", "net0", "--net", "tap=skvml0"])
            .args(["--device-mode", mode, "--hostile", "tx-short"])
            .stdout(std::process::Stdio::null())
            .stderr(err)
            .status()
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(status.success(), "{mode}: {text}");
        assert!(
            text.contains("device net0: dropped 1 malformed transmit chains"),
            "{mode}: {text:?}"
        );
        assert_no_forbidden_syscall(&text);
    }
}

#[test]
fn net_driving_errors_are_one_clear_line_and_a_created_tap_goes_away() {
    let ns = Netns::new("drverr");
    ns.tap("skvme0", 1500);
    ns.ip(&["tuntap", "add", "skvmdown", "mode", "tap"]);
    let cases: [(&[&str], &str); 6] = [
        (&["--net", "tap=nosuchtap"], "tap nosuchtap does not exist"),
        (&["--net", "tap=skvmdown"], "tap skvmdown is down"),
        (&["--net", "tap=lo"], "lo is not a tap device"),
        (
            &["--net", "tap=skvme0", "--size", "4000"],
            "--size 4000: frames on tap skvme0 (MTU 1500) are 60 to 1514 bytes",
        ),
        (
            &["--net", "tap=skvme0", "--op", "randread"],
            "--op randread is not for net devices",
        ),
        (
            &["--net", "tap=skvme0", "--fuzz-stdin"],
            "--fuzz-stdin drives rng and blk devices only",
        ),
    ];
    for (args, message) in cases {
        let mut all = vec!["--device", "net0"];
        all.extend_from_slice(args);
        let (code, out) = drive_in(&ns, &all);
        assert_eq!(code, 1, "{args:?}: {out}");
        assert!(out.contains(message), "{args:?}: {out}");
        assert_eq!(out.lines().count(), 1, "{args:?}: {out}");
    }
    // A tap created for the run is gone after it.
    let (code, out) = drive_in(
        &ns,
        &[
            "--device",
            "net0",
            "--net",
            "tap",
            "--op",
            "rx",
            "--requests",
            "200",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        !ns.has_link("skvmtap0"),
        "the created tap outlived skvm drive"
    );
}
