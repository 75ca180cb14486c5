//! Boot real guests on real KVM and check what they report.
//!
//! These tests are slow on hosts whose KVM emulates guest kernel code; the
//! timeouts are sized for such a host.

// Test code: a panic is a failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use guest_tests::{booted, default_guest, field, run_to_exit, TestVm, CMD_EXIT_MARKER};

/// How long the default guest may take to boot, run a command and power off.
const DEFAULT_GUEST: Duration = Duration::from_secs(600);
/// The stock distro kernel is much bigger and slower here.
const STOCK_KERNEL: Duration = Duration::from_secs(2400);
/// The longest a stock boot may print nothing (the longest silence seen in
/// a healthy boot on this host is about 3 minutes, an emulated initcall).
const STOCK_STALL: Duration = Duration::from_secs(600);

/// What the guest reports, in shell builtins only: what is tested here is
/// what the kernel says, not nproc or grep. The online CPUs are "0" or
/// "0-N".
const REPORT: &str = "read -r online </sys/devices/system/cpu/online; \
    case $online in *-*) n=$((${online#*-} + 1)) ;; *) n=1 ;; esac; \
    echo \"SKVM-NPROC $n\"; \
    while read -r key value unit; do \
    [ \"$key\" = MemTotal: ] && echo \"MemTotal: $value $unit\"; \
    done </proc/meminfo; true";

fn mem_total_kib(output: &str) -> u64 {
    field(output, "MemTotal:")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in output:\n{output}"))
}

/// MemTotal is RAM less what the kernel keeps for itself: a little below
/// what was asked, never above.
fn assert_mem_total(output: &str, asked_mib: u64) {
    let got = mem_total_kib(output);
    let asked = asked_mib * 1024;
    assert!(got <= asked, "MemTotal {got} kB above {asked} kB");
    assert!(
        got >= asked * 80 / 100 - 16 * 1024,
        "MemTotal {got} kB too far below {asked} kB:\n{output}"
    );
}

fn boot_and_report(cpus: &str, mem: &str, mem_mib: u64) -> String {
    let f = run_to_exit(
        &["--cpus", cpus, "--mem", mem, "--run", REPORT],
        DEFAULT_GUEST,
    );
    assert_eq!(
        f.code(),
        0,
        "guest did not power off cleanly:\n{}",
        f.output
    );
    assert!(f.output.contains("SKVM-INIT-START"), "{}", f.output);
    assert_eq!(
        field(&f.output, CMD_EXIT_MARKER).as_deref(),
        Some("0"),
        "{}",
        f.output
    );
    assert_eq!(
        field(&f.output, "SKVM-NPROC").as_deref(),
        Some(cpus),
        "{}",
        f.output
    );
    assert_mem_total(&f.output, mem_mib);
    f.output
}

/// 3328 MiB: 3 GiB of RAM below the 32-bit MMIO hole and 256 MiB above it
/// (the guest initialises a page descriptor per 4 KiB, which costs
/// emulated kernel time in proportion, so no more than that). MemTotal
/// above 3 GiB shows the guest uses RAM above the hole: what the kernel
/// keeps for itself here (page descriptors; no swiotlb with the host
/// quirks) is below 256 MiB.
#[test]
fn two_vcpu_guest_with_ram_above_the_mmio_hole_reports_its_cpus_and_memory() {
    let out = boot_and_report("2", "3328M", 3328);
    let got = mem_total_kib(&out);
    assert!(
        got > 3 << 20,
        "MemTotal {got} kB: no RAM above the hole:
{out}"
    );
}

/// The default guest's kernel as a bzImage, with its initramfs (which
/// skvm adds only when --kernel is not given).
fn bzimage_args() -> [String; 4] {
    let dir = default_guest();
    [
        "--kernel".into(),
        dir.join("bzImage").to_str().unwrap().into(),
        "--initrd".into(),
        dir.join("initramfs.cpio").to_str().unwrap().into(),
    ]
}

/// What skvm's debug log says when it decompressed a bzImage itself.
const UNPACKED: &str = "skvm decompressed it";

#[test]
fn a_one_vcpu_128m_guest_reports_its_cpus_memory_and_command_status() {
    // The command's status is reported, and powering off exits 0. The
    // kernel is the bzImage, which skvm decompresses (an LZ4 kernel) and
    // enters at its vmlinux's entry point.
    let script = format!("{REPORT}; exit 7");
    let bz = bzimage_args();
    let mut args: Vec<&str> = bz.iter().map(String::as_str).collect();
    args.extend(["--debug", "--cpus", "1", "--mem", "128M", "--run", &script]);
    let f = run_to_exit(&args, DEFAULT_GUEST);
    assert_eq!(f.code(), 0, "{}", f.output);
    assert!(
        f.output.contains(UNPACKED) && f.output.contains("kernel is Unpacked"),
        "{}",
        f.output
    );
    // The default kernel is not built for KASLR: it stays where it was
    // linked.
    assert!(
        f.output
            .contains("at its link address (not built for KASLR)"),
        "{}",
        f.output
    );
    assert!(f.output.contains("SKVM-INIT-START"), "{}", f.output);
    assert_eq!(
        field(&f.output, CMD_EXIT_MARKER).as_deref(),
        Some("7"),
        "{}",
        f.output
    );
    assert_eq!(
        field(&f.output, "SKVM-NPROC").as_deref(),
        Some("1"),
        "{}",
        f.output
    );
    assert_mem_total(&f.output, 128);
}

#[test]
fn guest_kernel_panic_exits_non_zero_with_a_message() {
    // busybox with no arguments prints its help and exits: init died. The
    // bzImage decompresses itself here, as any kernel skvm cannot unpack
    // does (34 s of emulated kernel code on an emulating host).
    let bz = bzimage_args();
    let mut args: Vec<&str> = bz.iter().map(String::as_str).collect();
    args.extend(["--debug", "--decompress", "guest"]);
    args.extend(["--cmdline", "rdinit=/bin/busybox"]);
    let f = run_to_exit(&args, DEFAULT_GUEST);
    assert!(
        !f.output.contains(UNPACKED) && f.output.contains("kernel is BzImage"),
        "{}",
        f.output
    );
    assert_eq!(f.code(), 2, "{}", f.output);
    let err = f
        .output
        .lines()
        .find(|l| l.starts_with("skvm: error: guest kernel panic:"))
        .unwrap_or_else(|| panic!("no panic message:\n{}", f.output));
    assert!(err.contains("Attempted to kill init"), "{err}");
}

fn send(pid: u32, sig: libc::c_int) {
    let pid = i32::try_from(pid).unwrap();
    // SAFETY: kill has no memory effects; the test owns skvm.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill {pid}: {}", std::io::Error::last_os_error());
}

#[test]
fn sigterm_presses_the_power_button_and_the_guest_powers_off() {
    // The rng tests' machine, started from its snapshot.
    let mut vm = booted(["--rng", "--run", "echo SKVM-READY; sleep 1000"]);
    vm.wait_for("SKVM-READY", DEFAULT_GUEST);
    send(vm.pid(), libc::SIGTERM);
    let f = vm.wait_exit(Duration::from_secs(120));
    let out = &f.output;
    assert_eq!(f.code(), 0, "{out}");
    assert!(out.contains("SIGTERM: power button pressed"), "{out}");
    // The guest's acpid powered it off, before the command ended.
    assert!(out.contains("reboot: Power down"), "{out}");
    assert!(!out.contains(CMD_EXIT_MARKER), "{out}");
}

#[test]
fn sigterm_stops_a_guest_that_does_not_power_off_in_time() {
    // Pressed while the kernel boots, before anything in the guest listens.
    let mut vm = TestVm::spawn(["run", "--stop-timeout", "2", "--run", "true"]);
    vm.wait_for("Linux version", DEFAULT_GUEST);
    send(vm.pid(), libc::SIGTERM);
    let f = vm.wait_exit(Duration::from_secs(60));
    assert_eq!(f.code(), 1, "{}", f.output);
    assert!(
        f.output
            .contains("skvm: error: the guest did not power off within 2 s of SIGTERM"),
        "{}",
        f.output
    );
    // --stop-timeout 0: SIGTERM stops the VM at once.
    let mut vm = TestVm::spawn(["run", "--stop-timeout", "0", "--run", "true"]);
    vm.wait_for("Linux version", DEFAULT_GUEST);
    send(vm.pid(), libc::SIGTERM);
    let f = vm.wait_exit(Duration::from_secs(60));
    assert_eq!(f.code(), 1, "{}", f.output);
    assert!(
        f.output.contains("skvm: error: terminated by signal 15"),
        "{}",
        f.output
    );
    assert!(!f.output.contains("power button"), "{}", f.output);
}

/// Whether this host's KVM emulates guest kernel code (kvm_pvm).
fn emulating_host() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

#[test]
#[ignore = "slow (3 minutes on an Intel emulating host, 12 to 14 on an AMD one): scripts/test-slow.sh runs it"]
fn stock_debian_kernel_runs_its_user_space_and_sees_every_vcpu() {
    let (kernel, initrd) = guest_tests::stock_kernel();
    // Where the kernel is, physically and virtually (root reads the real
    // addresses; the first symbols are the kernel's start).
    let report = format!(
        "{REPORT}; while read -r line; do case $line in *'Kernel code') \
         echo \"SKVM-CODE ${{line%%-*}}\"; break ;; esac; done </proc/iomem; \
         while read -r a t n; do [ \"$n\" = _text ] && echo \"SKVM-TEXT $a\" && break; \
         done </proc/kallsyms; true"
    );
    let args = [
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--cpus",
        "2",
        "--mem",
        "512M",
        // No virtio module is needed here: loading them takes minutes of
        // emulated kernel work on this host (scripts/bench-guest-crash.sh
        // --stock boots with them).
        "--cmdline",
        "skvm.modules=off",
        // On a hang, skvm's debug lines say where each vCPU stopped.
        "--debug",
        "--run",
        &report,
    ];
    // A guest that stops making progress (seen once in CI before skvm hid
    // the KVM paravirtual hypercall features on emulating hosts) is stopped
    // after STOCK_STALL without output rather than at the overall timeout,
    // and reported with where its vCPUs were.
    let start = std::time::Instant::now();
    let f = match TestVm::spawn(args).finish_watching(STOCK_KERNEL, STOCK_STALL) {
        Ok(f) => f,
        Err(u) => panic!(
            "stock kernel {} after {:?}:\n{}",
            if u.stalled {
                "printed nothing for too long"
            } else {
                "timed out"
            },
            start.elapsed(),
            u.output
        ),
    };
    guest_tests::assert_no_forbidden_syscall(&f.output);
    // The kernel itself must see both vCPUs (ACPI MADT) and start init.
    assert!(
        f.output.contains("smp: Brought up 1 node, 2 CPUs"),
        "{}",
        f.output
    );
    assert!(
        f.output.contains("Run /init as init process"),
        "{}",
        f.output
    );
    // Its user space runs: /init's commands report both vCPUs. On an
    // emulating host that takes skvm completing every user-mode SYSCALL
    // (docs/ARCHITECTURE.md, "User-mode SYSCALL"), which it counts.
    assert_eq!(f.code(), 0, "{}", f.output);
    assert_eq!(
        field(&f.output, "SKVM-NPROC").as_deref(),
        Some("2"),
        "{}",
        f.output
    );
    let completed = f
        .output
        .lines()
        .filter_map(|l| l.split("syscalls completed ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .next_back();
    if emulating_host() {
        assert!(completed.is_some_and(|n| n > 100), "{}", f.output);
    } else {
        assert_eq!(completed, Some(0), "{}", f.output);
    }
    // skvm decompressed the kernel and placed it at random (Debian's is
    // built for KASLR): the kernel runs where skvm said it put it.
    let offset = |what: &str| {
        let hex = field(&f.output, what)
            .unwrap_or_else(|| panic!("no '{what}' in skvm's log:\n{}", f.output));
        u64::from_str_radix(hex.trim_start_matches("0x").trim_end_matches(','), 16).unwrap()
    };
    let (phys, virt) = (offset("physical offset"), offset("virtual offset"));
    assert_eq!(
        field(&f.output, "SKVM-CODE").as_deref(),
        Some(format!("{:08x}", 0x100_0000 + phys).as_str()),
        "{}",
        f.output
    );
    assert_eq!(
        field(&f.output, "SKVM-TEXT").as_deref(),
        Some(format!("{:016x}", 0xffff_ffff_8100_0000u64 + virt).as_str()),
        "{}",
        f.output
    );
}
