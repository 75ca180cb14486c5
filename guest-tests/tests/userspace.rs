//! Guest user space keeps its state when processes take turns on one vCPU.
//!
//! On emulating hosts (kvm_pvm) guest user code runs natively with the
//! host's XCR0 and sees the host's CPUID, so the C library uses AVX2 or
//! AVX-512; the guest kernel must save and restore those registers at every
//! context switch, which takes XSAVE and XRSTOR that skvm completes for it
//! (docs/ARCHITECTURE.md, "Vector state of guest processes"). Before that,
//! a freshly exec'd process of a pipeline crashed at its first TLS access in
//! 10 to 40% of pipelines on AMD EPYC hosts. One vCPU is the worst case: the
//! two ends of a pipeline share it.

// Test code: a panic is a failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use guest_tests::{booted, field, CMD_EXIT_MARKER};

const TIMEOUT: Duration = Duration::from_secs(1200);
const PIPELINES: u32 = 200;

fn host_cpu() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into())
}

#[test]
fn pipelines_and_vector_registers_survive_process_switches_on_one_vcpu() {
    // vecprobe checks the registers themselves (ymm, and zmm and an opmask
    // where the host has AVX-512) against a process that clears them; the
    // pipelines are what users met: each one a subshell and two freshly
    // exec'd busybox processes, with command substitution.
    // The rng tests' machine has one vCPU (checked): it starts from that
    // machine's snapshot, as other tests of it do.
    let script = format!(
        "echo \"SKVM-NPROC $(nproc)\"; \
         vecprobe 300; echo \"SKVM-VECPROBE-STATUS $?\"; \
         f=0; i=0; \
         while [ $i -lt {PIPELINES} ]; do \
         v=$(cat /proc/version | wc -c); \
         [ \"$v\" -gt 10 ] 2>/dev/null || f=$((f + 1)); \
         i=$((i + 1)); \
         done; \
         echo \"SKVM-PIPELINES-FAILED $f\"; \
         echo \"SKVM-SEGFAULTS $(dmesg | grep -c 'segfault at')\""
    );
    let f = booted(["--rng", "--debug", "--run", &script]).wait_exit(TIMEOUT);
    eprintln!("host CPU: {}", host_cpu());
    assert_eq!(f.code(), 0, "{}", f.output);
    assert_eq!(
        field(&f.output, "SKVM-NPROC").as_deref(),
        Some("1"),
        "{}",
        f.output
    );
    assert_eq!(
        field(&f.output, CMD_EXIT_MARKER).as_deref(),
        Some("0"),
        "{}",
        f.output
    );
    let probe = f
        .output
        .lines()
        .find(|l| l.starts_with("VECPROBE "))
        .unwrap_or_else(|| panic!("vecprobe printed nothing:\n{}", f.output));
    eprintln!("{probe}");
    assert_eq!(
        field(&f.output, "SKVM-VECPROBE-STATUS").as_deref(),
        Some("0"),
        "vector registers lost across context switches: {probe}\n{}",
        f.output
    );
    assert_eq!(
        field(&f.output, "SKVM-PIPELINES-FAILED").as_deref(),
        Some("0"),
        "pipelines failed of {PIPELINES}:\n{}",
        f.output
    );
    assert_eq!(
        field(&f.output, "SKVM-SEGFAULTS").as_deref(),
        Some("0"),
        "{}",
        f.output
    );
}
