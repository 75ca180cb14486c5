//! Device restarts and the control socket: device processes killed with
//! SIGKILL in the middle of guest I/O come back without the guest
//! noticing (128 MiB written and read back on virtio-blk through 20 kills,
//! rng reads going on), `skvm ctl` reports, pauses, resumes, restarts on
//! request and shuts down, and the restart limit holds.
//!
//! Kernel I/O errors would show on the console, which is checked.

// Test code: a panic is a failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use guest_tests::{
    alive, booted, ctl, device_pids, device_status, field, new_device_pid, sigkill, Scratch,
    TestVm, CMD_EXIT_MARKER, MIB,
};

const TIMEOUT: Duration = Duration::from_secs(900);

/// What the guest kernel prints when block I/O fails.
const IO_ERRORS: [&str; 3] = ["I/O error", "blk_update_request", "critical medium error"];

fn socket(s: &Scratch) -> PathBuf {
    s.path("ctl.sock")
}

/// The one process of device `name` once it differs from `old`.
fn new_pid(vm: &TestVm, name: &str, old: u32) -> u32 {
    new_device_pid(vm, name, old, Duration::from_secs(30))
}

/// The processes the spawner (skvm's child) has forked, from the kernel's
/// list (/proc/PID/task/PID/children: quick enough to see a new one before
/// it execs).
fn spawned(vm: &TestVm) -> Vec<u32> {
    let mut out = Vec::new();
    for s in guest_tests::children(vm.pid()) {
        let list =
            std::fs::read_to_string(format!("/proc/{s}/task/{s}/children")).unwrap_or_default();
        out.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    out
}

/// Kills device process `pid`, then the instance the spawner forks to
/// replace it the moment it exists (before it has served): skvm must count
/// that as one more death and start another. Returns the pid of the
/// instance that was killed second.
fn kill_and_kill_successor(vm: &TestVm, pid: u32) -> u32 {
    let known = spawned(vm);
    sigkill(pid);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(p) = spawned(vm).into_iter().find(|p| !known.contains(p)) {
            sigkill(p);
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "no new device process\n{}",
            vm.output()
        );
    }
}

/// How many times skvm logged restarting `name` after a death.
fn restarts_of(vm: &TestVm, name: &str) -> usize {
    let prefix = format!("device {name} (pid ");
    vm.output()
        .lines()
        .filter(|l| l.contains(&prefix) && l.contains("restarted it (pid"))
        .count()
}

#[test]
fn blk_write_and_read_back_survive_twenty_kills_of_the_device() {
    let mib: u64 = std::env::var("SKVM_RESTART_TEST_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    let s = Scratch::new("restart", "blk");
    let target = s.blank("target.img", mib * MIB);
    let source = s.pattern("source.img", mib * MIB, 5);
    let readback = s.blank("readback.img", mib * MIB);
    // vda: target, vdb: source (read-only), vdc: what the guest read back.
    let script = "echo SKVM-START; \
                  dd if=/dev/vdb of=/dev/vda bs=1M iflag=direct oflag=direct 2>/dev/null; \
                  echo SKVM-WRITE $?; \
                  dd if=/dev/vda of=/dev/vdc bs=1M iflag=direct oflag=direct 2>/dev/null; \
                  echo SKVM-READBACK $?";
    let disk = |p: &Path, opts: &str| format!("{}{opts}", p.display());
    let args = [
        "run".to_owned(),
        "--disk".to_owned(),
        disk(&target, ""),
        "--disk".to_owned(),
        disk(&source, ",ro"),
        "--disk".to_owned(),
        disk(&readback, ""),
        "--run".to_owned(),
        script.to_owned(),
    ];
    let mut vm = TestVm::spawn(&args);
    vm.wait_for("SKVM-START", TIMEOUT);
    // Kill the disk both copies go through, every 0.75 s, 20 times (the
    // first copy alone takes about 35 s here).
    let mut pid = device_pids(vm.pid(), "blk0")[0];
    for kill in 0..20 {
        std::thread::sleep(Duration::from_millis(750));
        assert!(
            !vm.output().contains("SKVM-READBACK"),
            "the guest finished before kill {kill}: use more data (SKVM_RESTART_TEST_MIB)"
        );
        sigkill(pid);
        pid = new_pid(&vm, "blk0", pid);
    }
    let f = vm.wait_exit(TIMEOUT);
    let out = &f.output;
    assert_eq!(f.code(), 0, "{out}");
    assert_eq!(field(out, CMD_EXIT_MARKER).as_deref(), Some("0"), "{out}");
    assert_eq!(field(out, "SKVM-WRITE").as_deref(), Some("0"), "{out}");
    assert_eq!(field(out, "SKVM-READBACK").as_deref(), Some("0"), "{out}");
    for e in IO_ERRORS {
        assert!(!out.contains(e), "guest saw an I/O error:\n{out}");
    }
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("device blk0 (pid ") && l.contains("restarted it"))
            .count(),
        20,
        "{out}"
    );
    let want = std::fs::read(&source).unwrap();
    assert!(
        std::fs::read(&target).unwrap() == want,
        "written data corrupted"
    );
    assert!(
        std::fs::read(&readback).unwrap() == want,
        "data read back corrupted"
    );
}

/// A guest that reads the rng every second and says how it went.
const RNG_LOOP: &str = "i=0; while [ $i -lt 600 ]; do \
                        dd if=/dev/hwrng of=/tmp/r bs=64 count=4 2>/dev/null; \
                        echo SKVM-TICK $i $?; i=$((i+1)); sleep 1; done";

/// Waits for `n` more ticks than there are now, all of them successful
/// reads. A tick still being printed (no newline yet) is checked next time.
fn more_ticks(vm: &mut TestVm, n: usize) {
    let seen = vm.output().matches("SKVM-TICK").count();
    vm.wait_for_count("SKVM-TICK", seen + n, Duration::from_secs(120));
    let out = vm.output();
    let complete = out.rfind('\n').map_or("", |end| &out[..end]);
    for line in complete.lines().filter(|l| l.starts_with("SKVM-TICK")) {
        assert!(
            line.trim_end().ends_with(" 0"),
            "a read failed: {line}\n{out}"
        );
    }
}

#[test]
fn ctl_reports_pauses_restarts_and_shuts_down_and_rng_reads_survive_kills() {
    let s = Scratch::new("restart", "ctl");
    let sock = socket(&s);
    let disk = s.blank("disk.img", 4 * MIB);
    let args = [
        "--rng".to_owned(),
        "--disk".to_owned(),
        disk.display().to_string(),
        "--ctl".to_owned(),
        sock.display().to_string(),
        "--restart-limit".to_owned(),
        "5".to_owned(),
        "--user".to_owned(),
        "4242:4243".to_owned(),
        "--run".to_owned(),
        RNG_LOOP.to_owned(),
    ];
    let mut vm = booted(&args);
    vm.wait_for("SKVM-TICK 1 ", TIMEOUT);
    // What follows (status, restarts, pause) works from a VMM that holds no
    // privilege, and the spawner removes the socket at the end.
    guest_tests::assert_holds_no_privilege(vm.pid(), (4242, 4243));
    guest_tests::assert_spawner_holds_no_privilege(vm.pid(), (4242, 4243), true);

    // Status: both devices, their processes, no restarts.
    let (code, st) = ctl(&sock, "status");
    assert_eq!(code, 0, "{st}");
    assert_eq!(st["state"], "running");
    let rng = device_status(&st, "rng0");
    let rng_pid = u32::try_from(rng["pid"].as_u64().unwrap()).unwrap();
    assert_eq!(device_pids(vm.pid(), "rng0"), vec![rng_pid]);
    assert_eq!(rng["state"], "running");
    assert_eq!(rng["restarts"], 0);
    assert!(rng["rss_kib"].as_u64().unwrap() > 0, "{st}");
    assert_eq!(device_status(&st, "blk0")["state"], "running");

    // Restart on request: a new process, the old one gone, reads go on.
    let (code, r) = ctl(&sock, "device-restart rng0");
    assert_eq!(code, 0, "{r}");
    let new = u32::try_from(r["pid"].as_u64().unwrap()).unwrap();
    assert_ne!(new, rng_pid);
    for step in ["save_us", "spawn_us", "restore_us"] {
        assert!(r[step].is_u64(), "{r}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(rng_pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(rng_pid), "the replaced process is still running");
    assert_eq!(device_pids(vm.pid(), "rng0"), vec![new]);
    more_ticks(&mut vm, 2);

    // Pause: no tick for three seconds; resume: ticks again.
    let (code, p) = ctl(&sock, "pause");
    assert_eq!((code, p["state"].as_str()), (0, Some("paused")), "{p}");
    let (_, st) = ctl(&sock, "status");
    assert_eq!(st["state"], "paused");
    assert_eq!(device_status(&st, "rng0")["state"], "paused");
    let ticks = vm.output().matches("SKVM-TICK").count();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(vm.output().matches("SKVM-TICK").count(), ticks);
    let (code, r) = ctl(&sock, "resume");
    assert_eq!((code, r["state"].as_str()), (0, Some("running")), "{r}");
    more_ticks(&mut vm, 2);

    // Killed in the middle of reads: restarted, the guest reads on.
    let mut pid = new;
    for _ in 0..2 {
        sigkill(pid);
        pid = new_pid(&vm, "rng0", pid);
        more_ticks(&mut vm, 1);
    }
    // Killed again, and its successor killed the moment it is forked,
    // before it serves: one more death, restarted (and counted) like any
    // other.
    let successor = kill_and_kill_successor(&vm, pid);
    pid = new_pid(&vm, "rng0", successor);
    vm.wait_for(
        &format!("restarted it (pid {pid})"),
        Duration::from_secs(30),
    );
    more_ticks(&mut vm, 1);
    let (_, st) = ctl(&sock, "status");
    assert_eq!(
        device_status(&st, "rng0")["restarts"],
        5,
        "{st}\n{}",
        vm.output()
    );
    // Four deaths: three restarted, and the successor that died before it
    // served tried again (unless the kill came after all).
    let retried = vm
        .output()
        .lines()
        .filter(|l| l.contains("device rng0 (pid ") && l.contains("; trying again"))
        .count();
    eprintln!("kills during a restore, tried again: {retried}");
    assert_eq!(restarts_of(&vm, "rng0") + retried, 4, "{}", vm.output());

    // Bad commands: a clear answer and exit status 1.
    let (code, e) = ctl(&sock, "device-restart nosuch0");
    assert_eq!(code, 1);
    assert!(
        e["error"].as_str().unwrap().contains("no device nosuch0"),
        "{e}"
    );

    // The limit counts deaths, not requests: five restarts within the
    // minute (four kills above, this one); the next death is final.
    sigkill(pid);
    pid = new_pid(&vm, "rng0", pid);
    // Killed once it serves, not while skvm restores it (a death during
    // the restore would take the last restart the limit allows).
    vm.wait_for(
        &format!("restarted it (pid {pid})"),
        Duration::from_secs(30),
    );
    sigkill(pid);
    vm.wait_for("not restarted: 5 restarts within a minute", TIMEOUT);
    let (_, st) = ctl(&sock, "status");
    assert_eq!(device_status(&st, "rng0")["state"], "failed", "{st}");
    assert!(device_pids(vm.pid(), "rng0").is_empty());

    let (code, r) = ctl(&sock, "shutdown");
    assert_eq!(code, 0, "{r}");
    let f = vm.wait_exit(Duration::from_secs(60));
    assert_eq!(f.code(), 0, "{}", f.output);
    assert!(!sock.exists(), "the control socket outlived skvm");
}

#[test]
fn device_threads_restart_on_request_too() {
    let s = Scratch::new("restart", "thread");
    let sock = socket(&s);
    let args = [
        "--rng".to_owned(),
        "--device-mode".to_owned(),
        "thread".to_owned(),
        "--ctl".to_owned(),
        sock.display().to_string(),
        "--run".to_owned(),
        RNG_LOOP.to_owned(),
    ];
    let mut vm = booted(&args);
    vm.wait_for("SKVM-TICK 1 ", TIMEOUT);
    for _ in 0..3 {
        let (code, r) = ctl(&sock, "device-restart rng0");
        assert_eq!(code, 0, "{r}");
        assert!(r["pid"].is_null(), "{r}");
        more_ticks(&mut vm, 1);
    }
    let (_, st) = ctl(&sock, "status");
    assert_eq!(device_status(&st, "rng0")["restarts"], 3, "{st}");
}

#[test]
fn a_ctl_path_that_is_not_a_socket_is_refused_and_kept() {
    let s = Scratch::new("restart", "notsock");
    let file = s.path("file");
    std::fs::write(&file, b"keep").unwrap();
    let f = guest_tests::run_to_exit(
        &["--rng", "--ctl", file.to_str().unwrap(), "--run", "true"],
        Duration::from_secs(30),
    );
    assert_eq!(f.code(), 1, "{}", f.output);
    assert!(f.output.contains("not a socket"), "{}", f.output);
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    let (code, _) = ctl(&s.path("nothing.sock"), "status");
    assert_eq!(code, 1);
}
