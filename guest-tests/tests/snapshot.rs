//! Whole-VM snapshots: a guest that counts, writes each count to a disk and
//! reads its rng is snapshotted (`skvm ctl SOCKET snapshot DIR`), stops,
//! and is started again from the snapshot, twice (`skvm run --restore`),
//! and once from an earlier snapshot taken with `--resume`, after which
//! the first guest went on counting:
//! the count goes on from where it stopped, the devices run in new
//! processes and serve the guest, and the disk keeps what was written; the
//! two restored guests are told of their new VM generation ID, reseed, and
//! no longer draw the same random bytes.
//! Snapshots that are damaged, of another version, not snapshots, or that
//! do not match the command line are refused with one line and a non-zero
//! exit, before any guest runs.

// Test code: a panic is a failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ops::RangeInclusive;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use guest_tests::{
    code_and_text, ctl, device_status, md5, pattern, skvm_bin, tcp_round_trip, Netns, Scratch,
    TestVm, GUEST_IP, HOST_IP, MIB,
};

const TIMEOUT: Duration = Duration::from_secs(600);

/// Counts once a second: the count onto the disk's first sector (O_DIRECT,
/// so the device has it), 16 bytes from the rng, the count on the console
/// with the guest's uptime and 8 bytes of /dev/urandom.
const COUNTER: &str = "i=0; while true; do \
    printf 'SKVM-DISK %d\\n' $i | dd of=/dev/vda bs=512 count=1 conv=sync oflag=direct 2>/dev/null; \
    r=$(head -c 16 /dev/hwrng | wc -c); \
    u=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' '); \
    echo \"SKVM-COUNT $i rng=$r up=$(cut -d' ' -f1 /proc/uptime) urandom=$u\"; \
    echo \"SKVM-KMSG $i\" > /dev/kmsg; \
    i=$((i + 1)); sleep 1; done";

/// The guest's uptime at each count against its printk time (the
/// scheduler clock), from the console: (count, uptime, printk seconds).
fn clocks(out: &str) -> Vec<(u64, f64, f64)> {
    let mut up = std::collections::HashMap::new();
    let mut found = Vec::new();
    for l in out.lines() {
        if let Some(rest) = l.split("SKVM-COUNT ").nth(1) {
            let mut w = rest.split_whitespace();
            let i = w.next().and_then(|n| n.parse::<u64>().ok());
            let u = w
                .find_map(|f| f.strip_prefix("up="))
                .and_then(|v| v.parse::<f64>().ok());
            if let (Some(i), Some(u)) = (i, u) {
                up.insert(i, u);
            }
        } else if let Some((stamp, rest)) = l.split_once("] SKVM-KMSG ") {
            let t = stamp.trim_start_matches(['[', ' ']).parse::<f64>().ok();
            let i = rest.trim().parse::<u64>().ok();
            if let (Some(t), Some(i)) = (t, i) {
                if let Some(u) = up.get(&i) {
                    found.push((i, *u, t));
                }
            }
        }
    }
    found
}

/// The /dev/urandom bytes the guest printed with count `i`.
fn urandom_at(out: &str, i: u64) -> Option<String> {
    count_lines(out)
        .find(|(n, _)| *n == i)
        .and_then(|(_, rest)| {
            rest.split_whitespace()
                .find_map(|f| f.strip_prefix("urandom="))
        })
        .map(str::to_owned)
}

/// Each count line on the console: the count and what follows it.
fn count_lines(out: &str) -> impl Iterator<Item = (u64, &str)> {
    out.lines()
        .filter_map(|l| l.split("SKVM-COUNT ").nth(1))
        .filter_map(|rest| {
            let (n, fields) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            Some((n.parse().ok()?, fields))
        })
}

/// The counts printed so far, in order.
fn counts(out: &str) -> Vec<u64> {
    count_lines(out).map(|(n, _)| n).collect()
}

/// The pid of each device, from `skvm ctl status`.
fn pids(sock: &Path) -> Vec<u64> {
    let (code, st) = ctl(sock, "status");
    assert_eq!(code, 0, "{st}");
    ["rng0", "blk0"]
        .iter()
        .map(|d| device_status(&st, d)["pid"].as_u64().unwrap())
        .collect()
}

fn args(extra: &[&str], disk: &Path, sock: &Path) -> Vec<String> {
    let mut a: Vec<String> = vec!["run".into()];
    a.extend(extra.iter().map(|s| (*s).to_owned()));
    a.extend([
        "--rng".into(),
        "--disk".into(),
        disk.display().to_string(),
        "--ctl".into(),
        sock.display().to_string(),
    ]);
    a
}

/// Starts the snapshot in `dir` and checks that the guest counts on from a
/// count in `first`, reading its rng, with devices in new processes (not `old`), and
/// that it reseeded for its new VM generation ID; stops it with ctl
/// shutdown. Returns the /dev/urandom bytes of its second count.
fn restore_and_count_on(
    dir: &Path,
    disk: &Path,
    sock: &Path,
    first: RangeInclusive<u64>,
    old: &[u64],
) -> String {
    let dir = dir.display().to_string();
    let mut vm = TestVm::spawn(args(&["--restore", &dir], disk, sock));
    vm.wait_for_count("SKVM-COUNT", 3, TIMEOUT);
    let out = vm.output();
    let after = counts(&out);
    assert!(
        first.contains(&after[0]),
        "the count did not go on from {first:?}:\n{out}"
    );
    assert!(
        after.windows(2).all(|w| w[1] == w[0] + 1),
        "counts {after:?}:\n{out}"
    );
    assert!(out.contains("rng=16"), "no rng read after restore:\n{out}");
    // Linux's vmgenid driver took the new ID (CONFIG_VMGENID).
    assert!(
        out.contains("crng reseeded due to virtual machine fork"),
        "the guest did not reseed for its new generation id:\n{out}"
    );
    // The second count's line is whole: the third has begun.
    let drawn = urandom_at(&out, after[0] + 1).unwrap_or_else(|| panic!("no urandom:\n{out}"));
    // Every clock of the guest moved alike: its uptime and its printk time
    // agree after the restore (on a host that keeps the guest's TSC at the
    // host's, both move on by the time the snapshot waited; else neither).
    let c = clocks(&out);
    assert!(!c.is_empty(), "no uptime or printk time:\n{out}");
    for (i, up, printk) in c {
        assert!(
            (up - printk).abs() < 3.0,
            "count {i}: uptime {up} s, printk {printk} s:\n{out}"
        );
    }
    assert!(!out.contains("Linux version"), "the guest booted:\n{out}");
    let now = pids(sock);
    for (n, o) in now.iter().zip(old) {
        assert_ne!(n, o, "a device kept its process");
    }
    let (code, r) = ctl(sock, "shutdown");
    assert_eq!(code, 0, "{r}");
    let f = vm.wait_exit(TIMEOUT);
    assert_eq!(f.code(), 0, "{}", f.output);
    assert!(!f.output.contains("forbidden syscall"), "{}", f.output);
    drawn
}

/// `skvm run` with `extra` over the snapshot in `dir`: fails at once with a
/// line containing `why`.
fn refused(extra: &[&str], why: &str) {
    let out = Command::new(skvm_bin()).args(extra).output().unwrap();
    let (code, text) = code_and_text(&out);
    assert_ne!(code, 0, "{text}");
    assert!(text.contains(why), "expected {why:?}:\n{text}");
    assert!(!text.contains("Linux version"), "{text}");
}

fn copy_dir(from: &Path, to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for name in ["state", "memory"] {
        let status = Command::new("cp")
            .arg("--sparse=always")
            .arg(from.join(name))
            .arg(to.join(name))
            .status()
            .unwrap();
        assert!(status.success());
    }
    to.to_owned()
}

#[test]
fn a_counting_guest_goes_on_from_its_snapshot_twice_and_bad_snapshots_are_refused() {
    let s = Scratch::new("snapshot", "count");
    let disk = s.blank("disk.img", 4 * MIB);
    let sock = s.path("ctl.sock");
    let dir = s.path("snap");
    let mut vm = TestVm::spawn(args(&["--run", COUNTER], &disk, &sock));
    vm.wait_for("SKVM-COUNT 3 ", TIMEOUT);
    let old = pids(&sock);

    // With --resume the guest goes on counting after its snapshot.
    let early = s.path("early");
    let (code, r) = ctl(&sock, &format!("snapshot {} --resume", early.display()));
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["resumed"], true, "{r}");
    let seen = *counts(&vm.output()).last().unwrap();
    vm.wait_for(&format!("SKVM-COUNT {} ", seen + 2), TIMEOUT);

    let (code, r) = ctl(&sock, &format!("snapshot {}", dir.display()));
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["resumed"], false, "{r}");
    let f = vm.wait_exit(TIMEOUT);
    assert_eq!(f.code(), 0, "{}", f.output);
    assert!(
        f.output.contains("stopped after its snapshot"),
        "{}",
        f.output
    );
    let last = *counts(&f.output).last().unwrap();
    // Sparse: the guest's 256 MiB hold a few dozen MiB of data.
    let memory = std::fs::metadata(dir.join("memory")).unwrap();
    assert_eq!(memory.len(), 256 * MIB);
    assert!(
        memory.blocks() * 512 < 128 * MIB,
        "{} blocks",
        memory.blocks()
    );
    assert_eq!(r["memory_bytes"].as_u64().unwrap() % 4096, 0, "{r}");

    // The snapshot taken with --resume goes on from where it was taken:
    // after count 3, at a count the first guest printed after it.
    let taken = std::time::Instant::now();
    restore_and_count_on(&early, &disk, &sock, 4..=last, &old);
    // Twice from the same snapshot: each goes on from `last`, the second
    // at least 15 s after the snapshot (its clocks must still agree).
    let clone1 = restore_and_count_on(&dir, &disk, &sock, last + 1..=last + 1, &old);
    std::thread::sleep(Duration::from_secs(15).saturating_sub(taken.elapsed()));
    let clone2 = restore_and_count_on(&dir, &disk, &sock, last + 1..=last + 1, &old);
    // Clones of one guest do not share their random bytes.
    assert_ne!(clone1, clone2, "both clones drew the same urandom bytes");
    // The disk has the counts the restored guests wrote.
    let sector = std::fs::read(&disk).unwrap();
    let first = String::from_utf8_lossy(&sector[..32]).to_string();
    let written: u64 = first
        .strip_prefix("SKVM-DISK ")
        .and_then(|r| r.split('\n').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("disk starts with {first:?}"));
    assert!(written > last, "disk has count {written}, snapshot {last}");

    // Refused, each with its reason, before any guest runs.
    let d = dir.display().to_string();
    let disk_arg = disk.display().to_string();
    refused(
        &["run", "--restore", &d],
        "the snapshot's devices are blk0, rng0",
    );
    let with_disk = |disk: &str, extra: &[&str], why: &str| {
        let mut a = vec!["run", "--restore", &d, "--rng", "--disk", disk];
        a.extend_from_slice(extra);
        refused(&a, why);
    };
    with_disk(&disk_arg, &["--cpus", "2"], "the snapshot has 1 vCPUs");
    let small = s.blank("small.img", 2 * MIB).display().to_string();
    with_disk(&small, &[], "the image given is 2097152 bytes");
    let good = std::fs::read(dir.join("state")).unwrap();
    let with_state = |name: &str, bytes: &[u8]| {
        let copy = copy_dir(&dir, &s.path(name));
        std::fs::write(copy.join("state"), bytes).unwrap();
        copy.display().to_string()
    };
    let run =
        |d: &str, why: &str| refused(&["run", "--restore", d, "--rng", "--disk", &disk_arg], why);
    let mut corrupt = good.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0x40;
    run(&with_state("corrupt", &corrupt), "corrupted (checksum");
    run(&with_state("cut", &good[..good.len() - 100]), "truncated");
    run(
        &with_state("foreign", b"#!/bin/sh\necho hi\n"),
        "not a skvm snapshot",
    );
    let mut v2 = good.clone();
    v2[8] = 99;
    run(&with_state("v99", &v2), "format version 99");
    let short = copy_dir(&dir, &s.path("short-memory"));
    std::fs::OpenOptions::new()
        .write(true)
        .open(short.join("memory"))
        .unwrap()
        .set_len(128 * MIB)
        .unwrap();
    run(
        &short.display().to_string(),
        "the memory file is 134217728 bytes",
    );
    run(&s.path("nothing").display().to_string(), "cannot open");
}

/// Thread mode, memory added by mem-add and a net card: the restored guest
/// keeps its MemTotal, and its TCP listener takes a connection from the
/// host and sends the data back.
#[test]
fn a_guest_with_hot_added_memory_and_a_net_card_restores_in_thread_mode() {
    let s = Scratch::new("snapshot", "net");
    let ns = Netns::new("snapshot");
    let tap = "skvms0";
    ns.tap(tap, 1500);
    ns.ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", tap]);
    let sock = s.path("ctl.sock");
    let dir = s.path("snap");
    let mem = "$(awk '/MemTotal/ {print $2}' /proc/meminfo)";
    let script = format!(
        "ip addr add {GUEST_IP}/24 dev eth0; ip link set eth0 up; echo SKVM-UP {mem}; \
         m={mem}; while [ {mem} -le $m ]; do sleep 1; done; echo SKVM-MEM {mem}; \
         nc -l -p 5001 > /tmp/in; echo SKVM-AFTER {mem}; md5sum /tmp/in; \
         ping -c 2 {HOST_IP}; nc {HOST_IP} 5002 < /tmp/in"
    );
    let vm_args = |extra: &[&str]| {
        let mut cmd = ns.exec(skvm_bin().to_str().unwrap());
        cmd.args(["run", "--device-mode", "thread", "--hotplug-mem", "1G"])
            .args(["--net", &format!("tap={tap}")])
            .arg("--ctl")
            .arg(&sock)
            .args(extra);
        cmd
    };
    let mut vm = TestVm::spawn_command(vm_args(&["--run", &script]));
    vm.wait_for("SKVM-UP", TIMEOUT);
    let (code, r) = ctl(&sock, "mem-add 128M");
    assert_eq!(code, 0, "{r}");
    vm.wait_for("SKVM-MEM", TIMEOUT);
    let grown: u64 = guest_tests::field(&vm.output(), "SKVM-MEM")
        .and_then(|v| v.parse().ok())
        .unwrap();
    let (code, r) = ctl(&sock, &format!("snapshot {}", dir.display()));
    assert_eq!(code, 0, "{r}");
    let f = vm.wait_exit(TIMEOUT);
    assert_eq!(f.code(), 0, "{}", f.output);
    // Boot RAM and the added region, one after the other.
    assert_eq!(
        std::fs::metadata(dir.join("memory")).unwrap().len(),
        (256 + 128) * MIB
    );

    let vm = TestVm::spawn_command(vm_args(&["--restore", &dir.display().to_string()]));
    let data = pattern(64 * 1024);
    let want = md5(&data);
    let ((), back) = tcp_round_trip(&ns, data.clone(), || ());
    let f = vm.finish(TIMEOUT);
    let out = &f.output;
    assert_eq!(f.code(), 0, "{out}");
    assert!(back == data, "the data came back changed:\n{out}");
    assert!(out.contains(&want), "{out}");
    assert!(out.contains(" 0% packet loss"), "{out}");
    let after: u64 = guest_tests::field(out, "SKVM-AFTER")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(after, grown, "MemTotal changed across the snapshot:\n{out}");
    assert!(!out.contains("Linux version"), "the guest booted:\n{out}");
}
