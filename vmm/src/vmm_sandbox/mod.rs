//! The VMM's own seccomp filters (`--sandbox`): one allowlist per kind of
//! VMM thread, with the option groups of QEMU's `-sandbox` (obsolete,
//! elevateprivileges, spawn, resourcecontrol) as what they add to every
//! list.
//!
//! Each thread installs its own filter before it touches guest input:
//!
//! - a vCPU thread, first thing in its thread (KVM_RUN, the register calls
//!   the emulating-host completions need, the interrupt and ioeventfd
//!   registrations MSI-X and virtio-pci make, the device control requests
//!   the transport sends);
//! - a device thread (thread mode, and the VMM-side virtio-mem), after its
//!   hello: what every device worker needs and its kind's own calls, as its
//!   process would have;
//! - the main thread last, once every other thread reports its filter on
//!   (`vm::Built::confine` checks each thread's seccomp state in /proc): the
//!   event loop, the control socket, supervision, mem-add, and what the
//!   threads it may start later need (a thread inherits its creator's
//!   filter and adds its own, so the kernel applies both).
//!
//! Every list leaves out what the previous denylist denied (mounting,
//! modules, ptrace, namespaces, bpf, keyrings, clocks, ...), and every
//! filter refuses x32 calls first. Device processes have their own, smaller
//! allowlists (`device_host::policy`).

use std::fmt;
use std::str::FromStr;

use sandbox::seccomp::{Policy, SeccompError, Syscall, Violation};
use seccompiler::BpfProgram;

mod lists;
mod processes;

pub use lists::{kvm_ioctl, NEVER};
use lists::{COMMON, ELEVATE, MAIN, MAIN_ENOSYS, OBSOLETE, RESOURCECONTROL, SPAWN, VCPU};
pub use processes::{
    connector_policy, remover_policy, spawner_policy, CONNECTOR, CONNECTOR_FD, REMOVER, SPAWNER,
};

use crate::device_host::{policy, SeccompMode};
use crate::kinds::Confinement;

/// `elevateprivileges=` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elevate {
    /// set*uid/set*gid and capset are allowed.
    Allow,
    /// They are denied.
    Deny,
    /// They are denied in the VMM; anything it spawns (with `spawn=allow`)
    /// runs with no_new_privs, so it cannot gain privileges either. As skvm
    /// always sets no_new_privs with its filter, this equals `deny`; the
    /// value exists for QEMU users.
    Children,
}

/// A parsed `--sandbox` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmmSandbox {
    /// `on` (a filter) or `off` (none).
    pub on: bool,
    /// Deny obsolete syscalls.
    pub obsolete: bool,
    /// set*uid/set*gid and capset.
    pub elevate: Elevate,
    /// Deny fork, exec and process-creating clone.
    pub spawn: bool,
    /// Deny scheduler, affinity, priority and resource-limit changes.
    pub resourcecontrol: bool,
}

impl Default for VmmSandbox {
    fn default() -> Self {
        Self {
            on: true,
            obsolete: true,
            elevate: Elevate::Deny,
            spawn: true,
            resourcecontrol: true,
        }
    }
}

impl FromStr for VmmSandbox {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(',');
        let mut v = Self::default();
        match parts.next() {
            Some("on") => {}
            Some("off") => v.on = false,
            _ => {
                return Err(format!(
                    "'{s}': expected on or off first (on,spawn=allow, off)"
                ))
            }
        }
        for part in parts {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}': expected GROUP=allow|deny"))?;
            let deny = match value {
                "allow" => false,
                "deny" => true,
                "children" if key == "elevateprivileges" => {
                    v.elevate = Elevate::Children;
                    continue;
                }
                _ => {
                    let also = if key == "elevateprivileges" {
                        ", children"
                    } else {
                        ""
                    };
                    return Err(format!("{key}={value}: expected allow, deny{also}"));
                }
            };
            match key {
                "obsolete" => v.obsolete = deny,
                "elevateprivileges" => {
                    v.elevate = if deny { Elevate::Deny } else { Elevate::Allow };
                }
                "spawn" => v.spawn = deny,
                "resourcecontrol" => v.resourcecontrol = deny,
                _ => {
                    return Err(format!(
                        "unknown group '{key}': groups are obsolete, elevateprivileges, spawn, \
                         resourcecontrol"
                    ))
                }
            }
        }
        if !v.on && s != "off" {
            return Err("'off' takes no groups".into());
        }
        Ok(v)
    }
}

impl fmt::Display for VmmSandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.on {
            return f.write_str("off");
        }
        let d = |deny: bool| if deny { "deny" } else { "allow" };
        let e = match self.elevate {
            Elevate::Allow => "allow",
            Elevate::Deny => "deny",
            Elevate::Children => "children",
        };
        write!(
            f,
            "on,obsolete={},elevateprivileges={e},spawn={},resourcecontrol={}",
            d(self.obsolete),
            d(self.spawn),
            d(self.resourcecontrol)
        )
    }
}

/// A kind of VMM thread, each with its own allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: event loop, control socket, supervision.
    Main,
    /// A vCPU thread.
    Vcpu,
    /// A device served in a VMM thread (thread mode; virtio-mem).
    Device,
}

impl ThreadKind {
    /// Its name in listings and reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Main => "main",
            Self::Vcpu => "vcpu",
            Self::Device => "device",
        }
    }
}

impl VmmSandbox {
    /// The groups the user allows, each with what it adds to every
    /// thread's list.
    pub fn allowed_groups(&self) -> Vec<(&'static str, &'static [Syscall])> {
        let mut g: Vec<(&'static str, &'static [Syscall])> = Vec::new();
        if !self.obsolete {
            g.push(("obsolete", OBSOLETE));
        }
        if self.elevate == Elevate::Allow {
            g.push(("elevateprivileges", ELEVATE));
        }
        if !self.spawn {
            g.push(("spawn", SPAWN));
        }
        if !self.resourcecontrol {
            g.push(("resourcecontrol", RESOURCECONTROL));
        }
        g
    }

    /// The groups the user leaves denied, with what they would add.
    pub fn denied_groups(&self) -> Vec<(&'static str, &'static [Syscall])> {
        let allowed = self.allowed_groups();
        [
            ("obsolete", OBSOLETE),
            ("elevateprivileges", ELEVATE),
            ("spawn", SPAWN),
            ("resourcecontrol", RESOURCECONTROL),
        ]
        .into_iter()
        .filter(|(n, _)| allowed.iter().all(|(a, _)| a != n))
        .collect()
    }

    /// `base` with the allowed groups and the build's extras.
    fn finish(&self, base: &[&[Syscall]], enosys: &[Syscall]) -> Policy {
        let mut p = Policy::new(COMMON);
        for list in base {
            p.extend(list);
        }
        for (_, list) in self.allowed_groups() {
            p.extend(list);
        }
        #[cfg(debug_assertions)]
        p.extend(policy::DEBUG_EXTRA);
        // With spawn=allow, clone3 is allowed instead.
        let keep: Vec<Syscall> = enosys
            .iter()
            .filter(|s| self.spawn || s.nr != libc::SYS_clone3)
            .copied()
            .collect();
        p.fail_with_enosys(&keep);
        p
    }

    /// A vCPU thread's allowlist.
    pub fn vcpu_policy(&self) -> Policy {
        self.finish(&[VCPU], &[])
    }

    /// The allowlist of a device thread whose kind is confined as `c` (none
    /// for kinds that never run in a process): the worker's calls and the
    /// kind's own, as its process would have.
    pub fn device_thread_policy(&self, c: Option<&Confinement>) -> Policy {
        self.finish(&[policy::WORKER, c.map_or(&[], |c| c.syscalls)], &[])
    }

    /// The main thread's allowlist, when it may start device threads
    /// confined as `threads` later (restarts and mem-add rebuild them; a
    /// thread starts under its creator's filter, so main's must allow what
    /// they do).
    pub fn main_policy(&self, threads: &[Option<Confinement>]) -> Policy {
        let mut base: Vec<&[Syscall]> = vec![MAIN];
        if !threads.is_empty() {
            base.push(policy::WORKER);
        }
        for c in threads.iter().flatten() {
            base.push(c.syscalls);
        }
        self.finish(&base, MAIN_ENOSYS)
    }

    /// The policy of thread kind `kind`, with the device threads of a
    /// default configuration (virtio-mem's, no kind's own calls).
    pub fn policy_of(&self, kind: ThreadKind) -> Policy {
        match kind {
            ThreadKind::Main => self.main_policy(&[None]),
            ThreadKind::Vcpu => self.vcpu_policy(),
            ThreadKind::Device => self.device_thread_policy(None),
        }
    }
}

impl VmmSandbox {
    /// `policy` compiled for `mode`; `None` with `--sandbox off`.
    pub fn program(
        &self,
        policy: &Policy,
        mode: SeccompMode,
    ) -> Result<Option<BpfProgram>, SeccompError> {
        if !self.on {
            return Ok(None);
        }
        policy.compile(violation(mode)).map(Some)
    }

    /// What `--seccomp trap` needs before any VMM thread installs its
    /// filter: the SIGSYS handler that names the call. Call once, early.
    pub fn prepare(&self, mode: SeccompMode) {
        if self.on && mode == SeccompMode::Trap {
            install_trap_handler();
        }
    }
}

/// Installs `prog` on the calling thread ([`sandbox::seccomp::install`]:
/// no_new_privs and malloc's heaps kept first); other threads keep theirs;
/// threads created later inherit it.
pub fn install_on_this_thread(prog: &BpfProgram) -> Result<(), SeccompError> {
    sandbox::seccomp::install(prog)
}

/// The seccomp action for `--seccomp MODE`.
pub fn violation(mode: SeccompMode) -> Violation {
    match mode {
        SeccompMode::Kill => Violation::Kill,
        SeccompMode::Trap => Violation::Trap,
        SeccompMode::Log => Violation::Log,
    }
}

/// Writes `parts` to stderr with one write(2) per part (async-signal-safe).
fn write_stderr(parts: &[&[u8]]) {
    for p in parts {
        // SAFETY: write(2) from a valid buffer; a short write only truncates
        // the report.
        unsafe { libc::write(libc::STDERR_FILENO, p.as_ptr().cast(), p.len()) };
    }
}

/// SIGSYS handler of `--seccomp trap` in the VMM: names the call on stderr
/// and makes it fail with ENOSYS. No allocation.
extern "C" fn on_forbidden_syscall(
    _sig: libc::c_int,
    info: *mut libc::siginfo_t,
    ctx: *mut libc::c_void,
) {
    // The SIGSYS fields of siginfo_t (x86_64): si_syscall at offset 24.
    // SAFETY: the kernel passes a valid siginfo_t for SIGSYS.
    let nr = unsafe { info.cast::<u8>().add(24).cast::<i32>().read_unaligned() };
    let name = if nr & sandbox::bpf::X32_SYSCALL_BIT != 0 {
        "(an x32 call)"
    } else {
        sandbox::syscalls::name(i64::from(nr)).unwrap_or("(unknown)")
    };
    let who: &[u8] = if IN_SPAWNER.load(std::sync::atomic::Ordering::Relaxed) {
        b"\r\nskvm: error: the spawner made forbidden syscall "
    } else {
        b"\r\nskvm: error: the VMM made forbidden syscall "
    };
    write_stderr(&[
        who,
        name.as_bytes(),
        b" (see --sandbox); it fails with ENOSYS\r\n",
    ]);
    // SAFETY: ctx is the ucontext the kernel saved; RAX is the syscall's
    // return value when the handler returns.
    unsafe {
        let uc = ctx.cast::<libc::ucontext_t>();
        if let Some(rax) = (*uc).uc_mcontext.gregs.get_mut(libc::REG_RAX as usize) {
            *rax = -i64::from(libc::ENOSYS);
        }
    }
}

/// Whether this process is the spawner (or its socket remover), for the
/// SIGSYS reporter it inherits from the VMM.
static IN_SPAWNER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes `--seccomp trap` reports in this process (a child forked from the
/// VMM: the spawner) name the spawner.
pub fn report_as_spawner() {
    IN_SPAWNER.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn install_trap_handler() {
    // SAFETY: sigaction is plain data; the handler is async-signal-safe.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_forbidden_syscall as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::lists::{FIONBIO, TCGETS, TCSETS};
    use super::*;
    use sandbox::bpf::{action, run, SeccompData, X32_SYSCALL_BIT};

    fn parse(s: &str) -> Result<VmmSandbox, String> {
        s.parse()
    }

    const KINDS: [ThreadKind; 3] = [ThreadKind::Main, ThreadKind::Vcpu, ThreadKind::Device];

    #[test]
    fn on_denies_every_group() {
        let v = parse("on").unwrap();
        assert_eq!(v, VmmSandbox::default());
        assert!(v.allowed_groups().is_empty());
        let names: Vec<&str> = v.denied_groups().iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            ["obsolete", "elevateprivileges", "spawn", "resourcecontrol"]
        );
    }

    #[test]
    fn groups_can_be_allowed_one_by_one() {
        let v = parse("on,spawn=allow,obsolete=allow,resourcecontrol=allow").unwrap();
        let names: Vec<&str> = v.allowed_groups().iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["obsolete", "spawn", "resourcecontrol"]);
        let v = parse("on,elevateprivileges=children").unwrap();
        assert_eq!(v.elevate, Elevate::Children);
        assert!(v.allowed_groups().is_empty());
        let v = parse("on,elevateprivileges=allow").unwrap();
        assert!(v
            .allowed_groups()
            .iter()
            .any(|(n, _)| *n == "elevateprivileges"));
    }

    #[test]
    fn off_has_no_filter() {
        let v = parse("off").unwrap();
        assert!(!v.on);
        let p = v.vcpu_policy();
        assert!(v.program(&p, SeccompMode::Kill).unwrap().is_none());
    }

    #[test]
    fn bad_values_are_errors() {
        for bad in [
            "",
            "yes",
            "on,spawn",
            "on,spawn=children",
            "on,nosuch=deny",
            "off,spawn=deny",
            "on,spawn=maybe",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["on", "off", "on,spawn=allow,elevateprivileges=children"] {
            let v = parse(s).unwrap();
            assert_eq!(parse(&v.to_string()).unwrap(), v);
        }
    }

    #[test]
    fn the_ioctl_numbers_are_the_kernels() {
        // The values of linux/kvm.h on x86_64, as strace prints them.
        assert_eq!(kvm_ioctl::RUN, 0xAE80);
        assert_eq!(kvm_ioctl::GET_REGS, 0x8090_AE81);
        assert_eq!(kvm_ioctl::SET_REGS, 0x4090_AE82);
        assert_eq!(kvm_ioctl::GET_SREGS, 0x8138_AE83);
        assert_eq!(kvm_ioctl::GET_MSRS, 0xC008_AE88);
        assert_eq!(kvm_ioctl::SET_GUEST_DEBUG, 0x4048_AE9B);
        assert_eq!(kvm_ioctl::GET_DEBUGREGS, 0x8080_AEA1);
        assert_eq!(kvm_ioctl::SET_DEBUGREGS, 0x4080_AEA2);
        assert_eq!(kvm_ioctl::TRANSLATE, 0xC018_AE85);
        assert_eq!(kvm_ioctl::GET_FPU, 0x81A0_AE8C);
        assert_eq!(kvm_ioctl::SET_FPU, 0x41A0_AE8D);
        assert_eq!(kvm_ioctl::GET_XSAVE, 0x9000_AEA4);
        assert_eq!(kvm_ioctl::SET_XSAVE, 0x5000_AEA5);
        assert_eq!(kvm_ioctl::GET_XCRS, 0x8188_AEA6);
        assert_eq!(kvm_ioctl::GET_VCPU_EVENTS, 0x8040_AE9F);
        assert_eq!(kvm_ioctl::SET_VCPU_EVENTS, 0x4040_AEA0);
        assert_eq!(kvm_ioctl::SET_GSI_ROUTING, 0x4008_AE6A);
        assert_eq!(kvm_ioctl::IRQFD, 0x4020_AE76);
        assert_eq!(kvm_ioctl::IOEVENTFD, 0x4040_AE79);
        assert_eq!(kvm_ioctl::SET_USER_MEMORY_REGION, 0x4020_AE46);
        assert_eq!(kvm_ioctl::GET_MP_STATE, 0x8004_AE98);
        assert_eq!(kvm_ioctl::GET_LAPIC, 0x8400_AE8E);
        assert_eq!(kvm_ioctl::GET_IRQCHIP, 0xC208_AE62);
        assert_eq!(kvm_ioctl::GET_PIT2, 0x8070_AE9F);
        assert_eq!(kvm_ioctl::GET_CLOCK, 0x8030_AE7C);
    }

    #[test]
    fn each_thread_kind_stays_within_its_budget() {
        let v = VmmSandbox::default();
        let n = |k| v.policy_of(k).syscalls().len();
        assert!(n(ThreadKind::Vcpu) <= 25, "vcpu {}", n(ThreadKind::Vcpu));
        assert!(n(ThreadKind::Main) <= 45, "main {}", n(ThreadKind::Main));
        assert!(
            n(ThreadKind::Device) <= 25,
            "device {}",
            n(ThreadKind::Device)
        );
    }

    /// The verdict of `prog` on call `nr` with `args`.
    fn ask(prog: &[seccompiler::sock_filter], nr: i64, args: [u64; 6]) -> u32 {
        run(prog, &SeccompData::x86_64(nr, args)).unwrap()
    }

    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS.cast_unsigned();

    /// Every compiled list, for every --sandbox combination and mode, run
    /// through the BPF interpreter: what it lists passes; the x32 form of
    /// every call, executable memory, and what no VMM thread may do, never.
    #[test]
    fn every_compiled_list_refuses_x32_exec_memory_and_the_never_list() {
        let rx = [0, 4096, (libc::PROT_READ | libc::PROT_EXEC) as u64, 0, 0, 0];
        for spawn in ["allow", "deny"] {
            for elev in ["allow", "deny", "children"] {
                for other in ["allow", "deny"] {
                    let s = format!(
                        "on,spawn={spawn},elevateprivileges={elev},obsolete={other},resourcecontrol={other}"
                    );
                    let v = parse(&s).unwrap();
                    for kind in KINDS {
                        let p = v.policy_of(kind);
                        for mode in [SeccompMode::Kill, SeccompMode::Trap, SeccompMode::Log] {
                            let prog = v.program(&p, mode).unwrap().unwrap();
                            let at = (&s, kind, mode);
                            for c in p.syscalls() {
                                if c.rules.is_empty() {
                                    assert_eq!(
                                        ask(&prog, c.nr, [0; 6]),
                                        ALLOW,
                                        "{at:?} {}",
                                        c.name
                                    );
                                }
                                let x32 =
                                    action(ask(&prog, c.nr | i64::from(X32_SYSCALL_BIT), [0; 6]));
                                assert!(
                                    x32 != ALLOW && x32 != libc::SECCOMP_RET_LOG,
                                    "{at:?} {}",
                                    c.name
                                );
                            }
                            for nr in [libc::SYS_mmap, libc::SYS_mprotect] {
                                assert_ne!(ask(&prog, nr, rx), ALLOW, "{at:?} {nr}");
                            }
                            for c in NEVER {
                                assert!(
                                    p.syscalls().iter().all(|l| l.nr != c.nr),
                                    "{at:?} {}",
                                    c.name
                                );
                                assert_ne!(ask(&prog, c.nr, [0; 6]), ALLOW, "{at:?} {}", c.name);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Calls a vCPU thread makes only on rare paths, which a boot may never
    /// take: the emulation retry's sched_yield (once killed a stock
    /// kernel's boot in CI, during an RCU stall), the kick's sigreturn, a
    /// device's answer deadline.
    #[test]
    fn the_vcpu_list_has_its_rare_paths_calls() {
        let v = VmmSandbox::default();
        let prog = v
            .program(&v.policy_of(ThreadKind::Vcpu), SeccompMode::Kill)
            .unwrap()
            .unwrap();
        for nr in [
            libc::SYS_sched_yield,
            libc::SYS_rt_sigreturn,
            libc::SYS_poll,
            libc::SYS_futex,
        ] {
            assert_eq!(ask(&prog, nr, [0; 6]), ALLOW, "{nr}");
        }
    }

    #[test]
    fn ioctl_allows_each_thread_kind_its_own_requests_only() {
        let v = VmmSandbox::default();
        let prog = |k| {
            v.program(&v.policy_of(k), SeccompMode::Kill)
                .unwrap()
                .unwrap()
        };
        let (vcpu, main, device) = (
            prog(ThreadKind::Vcpu),
            prog(ThreadKind::Main),
            prog(ThreadKind::Device),
        );
        let ioctl = |p: &[seccompiler::sock_filter], req: u64| {
            ask(p, libc::SYS_ioctl, [3, req, 0, 0, 0, 0]) == ALLOW
        };
        const KVM_CREATE_VM: u64 = 0xAE01;
        const KVM_CREATE_VCPU: u64 = 0xAE41;
        const KVM_SET_SREGS: u64 = 0x4138_AE84;
        const KVM_SET_MSRS: u64 = 0x4008_AE89;
        for req in [
            kvm_ioctl::RUN,
            kvm_ioctl::GET_REGS,
            kvm_ioctl::IRQFD,
            kvm_ioctl::SET_GUEST_DEBUG,
        ] {
            assert!(ioctl(&vcpu, req), "{req:#x}");
        }
        for req in [
            KVM_CREATE_VM,
            KVM_CREATE_VCPU,
            kvm_ioctl::SET_USER_MEMORY_REGION,
            // A vCPU reads the syscall MSRs; it never writes MSRs or
            // segments once the guest runs.
            KVM_SET_SREGS,
            KVM_SET_MSRS,
            libc::TIOCSTI,
            TCSETS,
        ] {
            assert!(!ioctl(&vcpu, req), "vcpu {req:#x}");
        }
        for req in [kvm_ioctl::SET_USER_MEMORY_REGION, TCGETS, TCSETS, FIONBIO] {
            assert!(ioctl(&main, req), "{req:#x}");
        }
        for req in [
            KVM_CREATE_VM,
            KVM_CREATE_VCPU,
            kvm_ioctl::RUN,
            kvm_ioctl::SET_REGS,
            kvm_ioctl::SET_GUEST_DEBUG,
            libc::TIOCSTI,
        ] {
            assert!(!ioctl(&main, req), "main {req:#x}");
        }
        for req in [kvm_ioctl::RUN, KVM_CREATE_VM, TCSETS] {
            assert!(!ioctl(&device, req), "device {req:#x}");
        }
    }

    #[test]
    fn main_makes_threads_not_processes_unless_spawn_is_allowed() {
        let thread = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
        let process = libc::SIGCHLD as u64;
        for (sb, process_ok) in [("on", false), ("on,spawn=allow", true)] {
            let v = parse(sb).unwrap();
            let prog = v
                .program(&v.policy_of(ThreadKind::Main), SeccompMode::Kill)
                .unwrap()
                .unwrap();
            assert_eq!(ask(&prog, libc::SYS_clone, [thread, 0, 0, 0, 0, 0]), ALLOW);
            let p = ask(&prog, libc::SYS_clone, [process, 0, 0, 0, 0, 0]);
            assert_eq!(p == ALLOW, process_ok, "{sb}");
            let c3 = ask(&prog, libc::SYS_clone3, [0; 6]);
            assert_eq!(c3, if process_ok { ALLOW } else { ENOSYS }, "{sb}");
            let fork = ask(&prog, libc::SYS_fork, [0; 6]);
            assert_eq!(fork == ALLOW, process_ok, "{sb}");
            // No thread opens anything once the guest runs: what the main
            // thread reads later (its own and the devices' /proc status,
            // the profile) was opened before.
            for nr in [libc::SYS_open, libc::SYS_openat, libc::SYS_openat2] {
                assert_ne!(ask(&prog, nr, [0; 6]), ALLOW, "{nr}");
            }
        }
    }

    #[test]
    fn main_allows_what_the_device_threads_it_restarts_need() {
        use crate::kinds::Registry;
        let v = VmmSandbox::default();
        let blk = Registry::standard().get("blk").unwrap().confinement();
        let own = blk.as_ref().unwrap().syscalls;
        let main = v.main_policy(&[blk]).syscalls();
        for s in own {
            assert!(main.iter().any(|m| m.nr == s.nr), "{}", s.name);
        }
        let plain = v.main_policy(&[]).syscalls();
        assert!(plain.len() < main.len());
    }
}
