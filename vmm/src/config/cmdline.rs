//! The guest kernel's command line, as `skvm run` builds it from its
//! [`VmConfig`]: the console, the quirks of emulating hosts, the root
//! device, `--run`'s command (base64) and the user's own parameters.

use super::VmConfig;

impl VmConfig {
    /// The full kernel command line. `xsave`: skvm completes the guest
    /// kernel's XSAVE/XRSTOR (with `quirks`); without it the kernel must not
    /// use them.
    pub fn cmdline(&self, quirks: bool, xsave: bool) -> String {
        let mut parts: Vec<String> = vec!["console=ttyS0".into(), "panic=-1".into()];
        if quirks {
            if !xsave {
                parts.push("noxsave".into());
            }
            parts.extend(QUIRKS_CMDLINE.iter().map(|s| (*s).to_owned()));
        }
        if let Some(root) = &self.root {
            parts.push(root.clone());
        }
        if let Some(cmd) = &self.run {
            parts.push(format!("skvm.cmd={}", base64(cmd.as_bytes())));
        }
        if !self.extra_cmdline.trim().is_empty() {
            parts.push(self.extra_cmdline.trim().to_owned());
        }
        parts.join(" ")
    }
}

/// Guest command-line options for emulating hosts: keep the guest kernel away
/// from instructions their KVM cannot emulate: cmpxchg16b and popcnt, and
/// the SIMD extensions past SSE2 that kernel code picks when the CPU has
/// them (the RNG's BLAKE2s takes SSSE3 or AVX-512VL paths, crypto modules
/// AVX2; `movd`/`pshufb` are not emulated). AVX and AVX512F stay: they are
/// what makes the kernel save and restore the vector registers that user
/// code, which these hosts run natively with the host's XCR0, really has
/// (`vcpu/xsave.rs`); skvm completes the XSAVE and XRSTOR that this takes,
/// in their standard form only (`xsaveopt`, `xsavec` and `xsaves` are
/// hidden; on a host where it cannot, `noxsave` comes first). Protection
/// keys are hidden too: their WRPKRU at each context switch is not
/// emulated. Without SMAP the kernel patches out clac/stac, which would
/// otherwise cost a VMM round trip each. Without ERMS and FSRM the kernel
/// clears, copies and sets memory with `rep stosq`/`rep movsq` or unrolled
/// moves instead of `rep stosb`/`rep movsb`, which these hosts emulate a
/// byte at a time.
///
/// Linux keeps only the first 127 bytes of `clearcpuid=` (a 128-byte
/// buffer; a second `clearcpuid=` replaces the first): the three longest
/// names are given as their bit numbers (word * 32 + bit, stable since
/// Linux 4.x): 129 is pclmulqdq, 319 avx512vl and 522 vpclmulqdq. Without
/// them, erms and fsrm, last, were cut off and stayed on.
///
/// The rest skips boot-time work that is instant on hardware and takes
/// minutes when guest kernel code runs in KVM's emulator (measured with
/// `initcall_debug` on Debian's 6.1 cloud kernel, see docs/ARCHITECTURE.md):
/// on a single vCPU, rewriting every lock prefix through text_poke
/// (`noreplace-smp`); the crypto self-tests of every algorithm
/// (`cryptomgr.notests`, and the two self-tests that ignore it: KDF SP800-108
/// and BLAKE2s); three tracing-only initcalls: ftrace's check of 37k call
/// sites against kallsyms, the rewrite of every trace event's format with
/// enum values and the creation of tracefs's files for every trace event
/// (`initcall_blacklist=...`; the guest's tracefs is then empty). The
/// lockup detectors would report the slow vCPUs as stuck (`nowatchdog`), and
/// so would RCU's stall detector (`rcupdate.rcu_cpu_stall_suppress=1`),
/// whose backtraces go through an NMI: Linux's NMI entry reads its per-CPU
/// base with `lsl`, which these hosts' KVM cannot emulate, so a stall report
/// (Debian's kernel parses its BTF for over a minute in one initcall) killed
/// the guest. systemd's start timeouts (90 s for a job, and for a device to
/// appear) are meant for hardware: a systemd boot here takes minutes, and a
/// loaded host stretched single jobs (`systemd-sysctl`, the console's
/// device) past them, so they get 15 minutes
/// (`systemd.default_timeout_start_sec=900`; the kernel ignores it, only
/// systemd reads it). A page fault on a file maps the one page it needs
/// (`fault_around_bytes=4096`, a parameter of skvm's default kernel, from
/// guest/patches; otherwise 64 KiB): mapping and unmapping sixteen pages a
/// fault, most of which a short-lived process never touches, made a
/// fork-and-exec loop about 20% slower. A guest with RAM above 4 GiB gets
/// no bounce buffers (`swiotlb=noforce`): Linux then sets 64 MiB aside for
/// them and zeroes it with `rep stosb`, one emulated iteration a byte, which
/// took 34 s of a 3328 MiB guest's boot (and 12 s more for its slot
/// table); no device of skvm's machine needs them (virtio-pci devices reach
/// all of guest memory; the UART, RTC and ACPI are port I/O). Options a
/// kernel does not know are harmless to it.
pub const QUIRKS_CMDLINE: &[&str] = &[
    "clearcpuid=xsaveopt,xsavec,xgetbv1,xsaves,pku,cx16,popcnt,smap,ssse3,sse4_1,sse4_2,avx2,319,aes,129,sha_ni,gfni,vaes,522,erms,fsrm",
    "noreplace-smp",
    "cryptomgr.notests",
    "initcall_blacklist=ftrace_check_for_weak_functions,trace_eval_init,tracer_init_tracefs,crypto_kdf108_init,blake2s_mod_init",
    "nowatchdog",
    "rcupdate.rcu_cpu_stall_suppress=1",
    "systemd.default_timeout_start_sec=900",
    "fault_around_bytes=4096",
    "swiotlb=noforce",
];

/// Standard base64 (RFC 4648) with padding.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                let idx = ((n >> (18 - 6 * i)) & 0x3f) as usize;
                out.push(char::from(ALPHABET[idx]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::args;
    use crate::config::RunArgs;
    use crate::kinds::Registry;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let v = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (i, o) in v {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn run_command_is_base64_on_the_cmdline() {
        let a = RunArgs {
            run: Some("echo hi".into()),
            ..args()
        };
        let c = VmConfig::from_args(&a, &clap::ArgMatches::default(), &Registry::standard())
            .unwrap()
            .cmdline(false, false);
        assert_eq!(c, "console=ttyS0 panic=-1 skvm.cmd=ZWNobyBoaQ==");
    }

    #[test]
    fn the_guest_kernel_keeps_xsave_only_where_skvm_completes_it() {
        let c = VmConfig::from_args(&args(), &clap::ArgMatches::default(), &Registry::standard())
            .unwrap();
        let words = |quirks, xsave| {
            c.cmdline(quirks, xsave)
                .split(' ')
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let with = words(true, true);
        assert!(!with.iter().any(|w| w == "noxsave"), "{with:?}");
        let clear = with.iter().find(|w| w.starts_with("clearcpuid=")).unwrap();
        // avx512vl is bit 9*32+31.
        for hidden in [
            "xsaves", "xsavec", "xsaveopt", "pku", "avx2", "319", "erms", "fsrm",
        ] {
            assert!(clear.split([',', '=']).any(|f| f == hidden), "{clear}");
        }
        // Linux reads at most 127 bytes of clearcpuid's value.
        let value = clear.strip_prefix("clearcpuid=").unwrap();
        assert!(value.len() <= 127, "{} bytes: {value}", value.len());
        // AVX and AVX512F stay: they make the kernel save those registers.
        assert!(!clear
            .split([',', '='])
            .any(|f| f == "avx" || f == "avx512f"));
        assert!(words(true, false).iter().any(|w| w == "noxsave"));
        assert!(!words(false, false).iter().any(|w| w.contains("xsave")));
    }
}
