//! virtio-rng through the virtio-pci transport with MSI-X, in a device
//! process and in a VMM thread: the guest reads /dev/hwrng, the device
//! process shows in `ps`, dies without taking the guest down, and the VMM
//! stays off the data path.

// Test code: a panic is a failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use guest_tests::{booted, device_pids, field, sigkill, TestVm, CMD_EXIT_MARKER};

const TIMEOUT: Duration = Duration::from_secs(600);

/// Reads `kib` KiB from /dev/hwrng and reports what the guest saw. Byte
/// statistics cover the last 64 KiB (busybox `sort` on a mebibyte of lines
/// needs more than the default guest's RAM).
fn read_hwrng(kib: u32) -> String {
    format!(
        "printf 'SKVM-RNG-CURRENT '; cat /sys/class/misc/hw_random/rng_current; \
         dd if=/dev/hwrng of=/tmp/r bs=1024 count={kib} 2>/dev/null; \
         printf 'SKVM-RNG-BYTES '; wc -c < /tmp/r; \
         tail -c 65536 /tmp/r > /tmp/t; head -c 65536 /tmp/r > /tmp/h; \
         od -An -v -tx1 /tmp/t > /tmp/o; tr ' ' '\\n' < /tmp/o > /tmp/l; \
         grep . /tmp/l > /tmp/g; sort -u /tmp/g > /tmp/s; \
         printf 'SKVM-RNG-DISTINCT '; wc -l < /tmp/s; \
         printf 'SKVM-RNG-HEAD '; md5sum < /tmp/h; \
         printf 'SKVM-RNG-TAIL '; md5sum < /tmp/t; \
         printf 'SKVM-MSI '; grep -c PCI-MSI /proc/interrupts; \
         printf 'SKVM-RNG-FEATURES '; cat /sys/bus/virtio/devices/virtio0/features"
    )
}

fn mmio_exits(output: &str) -> u64 {
    let line = output
        .lines()
        .find(|l| l.contains("exits ") && l.contains("mmio "))
        .unwrap_or_else(|| panic!("no exit statistics:\n{output}"));
    let after = line.split("mmio ").nth(1).unwrap();
    after
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn read_in_mode(mode: &str, kib: u32) -> String {
    read_with(&["--device-mode", mode], kib)
}

/// The guest reads `kib` KiB from its hwrng with `extra` options; checks
/// them and returns the output.
fn read_with(extra: &[&str], kib: u32) -> String {
    let script = read_hwrng(kib);
    let args: Vec<&str> = ["--rng", "--debug", "--run", &script]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let f = booted(args).wait_exit(TIMEOUT);
    assert_eq!(f.code(), 0, "{}", f.output);
    assert_eq!(
        field(&f.output, CMD_EXIT_MARKER).as_deref(),
        Some("0"),
        "{}",
        f.output
    );
    assert_eq!(
        field(&f.output, "SKVM-RNG-CURRENT").as_deref(),
        Some("virtio_rng.0"),
        "{}",
        f.output
    );
    let bytes = (kib * 1024).to_string();
    assert_eq!(
        field(&f.output, "SKVM-RNG-BYTES").as_deref(),
        Some(bytes.as_str()),
        "{}",
        f.output
    );
    // Random bytes take (nearly) all 256 values; zeros or a pattern do not.
    let distinct: u32 = field(&f.output, "SKVM-RNG-DISTINCT")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        distinct >= 250,
        "only {distinct} distinct byte values:\n{}",
        f.output
    );
    // The first and last 64 KiB differ: not a repeated buffer.
    if kib >= 128 {
        let head = field(&f.output, "SKVM-RNG-HEAD").unwrap();
        let tail = field(&f.output, "SKVM-RNG-TAIL").unwrap();
        assert_ne!(head, tail, "repeated data:\n{}", f.output);
    }
    // The features the driver took, bit 0 first: event indexes (bit 29)
    // unless they were turned off.
    let features = field(&f.output, "SKVM-RNG-FEATURES").unwrap();
    let event_idx = !extra.windows(2).any(|w| w == ["--event-idx", "off"]);
    assert_eq!(
        features.as_bytes().get(29),
        Some(if event_idx { &b'1' } else { &b'0' }),
        "features {features}:\n{}",
        f.output
    );
    // The queue interrupt and the config interrupt use MSI-X vectors.
    let msi: u32 = field(&f.output, "SKVM-MSI").unwrap().parse().unwrap();
    assert!(
        msi >= 2,
        "no PCI-MSI vectors in /proc/interrupts:\n{}",
        f.output
    );
    f.output
}

/// What the guest reads in the data tests: 256 KiB is at least 4096
/// requests (the guest's hw_random core asks for at most 64 bytes at a
/// time), so an exit per request would show, and the guest's emulated
/// kernel code keeps it to about a minute here.
const READ_KIB: u32 = 256;

#[test]
fn guest_reads_from_a_device_process_and_vmm_exits_do_not_grow_with_the_bytes() {
    // Through the VMM each request would be at least one exit: the exits
    // of a 256 KiB read stay within 2000 of a 16 KiB one's.
    let small = mmio_exits(&read_in_mode("process", 16));
    let large = mmio_exits(&read_in_mode("process", READ_KIB));
    assert!(
        large < small + 2000,
        "mmio exits grew from {small} (16 KiB) to {large} ({READ_KIB} KiB)"
    );
}

#[test]
fn guest_reads_from_a_device_thread() {
    read_in_mode("thread", READ_KIB);
}

#[test]
fn without_event_indexes_the_guest_reads_all_the_same() {
    // `--event-idx off`: the driver is not offered them (read_with checks
    // the bit) and every request is answered.
    read_with(&["--event-idx", "off"], 64);
}

#[test]
fn guest_reads_from_a_device_process_that_polls_its_queue() {
    // Adaptive polling changes when the device looks, not what it serves.
    read_with(&["--device-poll-us", "200"], 64);
    let out = std::process::Command::new(guest_tests::skvm_bin())
        .args(["run", "--rng", "--device-poll-us", "1001"])
        .output()
        .unwrap();
    let (code, text) = guest_tests::code_and_text(&out);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("--device-poll-us"), "{text}");
}

#[test]
fn one_process_per_device_and_with_reset_killing_it_leaves_the_guest_running() {
    let script = "dd if=/dev/hwrng of=/tmp/r bs=64 count=16 2>/dev/null; echo SKVM-READY; \
                  i=0; while [ $i -lt 400 ]; do echo SKVM-TICK $i; i=$((i+1)); sleep 1; done";
    let mut vm = booted(["--rng", "--on-device-failure", "reset", "--run", script]);
    vm.wait_for("SKVM-READY", TIMEOUT);
    let pids = device_pids(vm.pid(), "rng0");
    assert_eq!(pids.len(), 1, "device processes: {pids:?}");
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", pids[0])).unwrap();
    assert_eq!(comm.trim(), "skvm-dev rng0");
    sigkill(pids[0]);
    let report = format!("device rng0 (pid {}) was killed by signal 9", pids[0]);
    vm.wait_for(&report, Duration::from_secs(30));
    // The guest keeps running: ticks go on after the report.
    let seen = vm.output();
    let after = seen.matches("SKVM-TICK").count();
    vm.wait_for_count("SKVM-TICK", after + 3, Duration::from_secs(120));
    assert!(device_pids(vm.pid(), "rng0").is_empty());
}

/// Boots with `--rng` plus `extra`, waits for the device to be in use, and
/// returns the VM with the device's pid.
fn vm_with_live_device(extra: &[&str]) -> (TestVm, u32) {
    let script = "dd if=/dev/hwrng of=/tmp/r bs=64 count=16 2>/dev/null; echo SKVM-READY; \
                  while true; do sleep 1; done";
    let mut args = vec!["--rng"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--run", script]);
    let mut vm = booted(args);
    vm.wait_for("SKVM-READY", TIMEOUT);
    let pids = device_pids(vm.pid(), "rng0");
    assert_eq!(pids.len(), 1, "device processes: {pids:?}");
    (vm, pids[0])
}

#[test]
fn on_device_failure_exit_stops_the_vm_with_the_reason() {
    let (vm, pid) = vm_with_live_device(&["--on-device-failure", "exit"]);
    sigkill(pid);
    let f = vm.wait_exit(Duration::from_secs(60));
    assert_ne!(f.code(), 0, "{}", f.output);
    let report = format!("skvm: error: device rng0 (pid {pid}) was killed by signal 9");
    assert!(f.output.contains(&report), "{}", f.output);
}
