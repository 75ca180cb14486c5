//! Seccomp-bpf filters: allowlists for device processes, a denylist for the
//! VMM.
//!
//! A [`Policy`] is plain data: a list of [`Syscall`]s, each with the reason it
//! is allowed and, where an argument decides whether the call is dangerous,
//! the argument values it may take. [`Policy::install`] compiles it with
//! seccompiler and installs it on the calling thread; anything not on the
//! list gets the policy's default action, kill-process unless asked
//! otherwise.
//!
//! A [`Denylist`] is the reverse, for a process whose syscall set is too
//! broad to enumerate safely (the VMM): the listed calls, under their
//! argument conditions, get the violation action and everything else is
//! allowed. It is installed on every thread of the process at once (TSYNC).
//!
//! Every program either compiles starts with the same guard: a syscall
//! number with the x32 bit (0x40000000) set is refused before any rule is
//! looked at. x32 calls reach the same kernel functions under other
//! numbers, so on a kernel with x32 enabled a denylist that names
//! `unshare` would let `0x40000000|SYS_unshare` through; skvm makes no x32
//! calls, so no filter of ours lets one pass.

use std::collections::BTreeMap;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// One condition on a syscall argument (all of a rule's must hold).
#[derive(Debug, Clone, Copy)]
pub enum Arg {
    /// Argument `index` equals `value`.
    Eq(u8, u64),
    /// Argument `index` has none of the bits in `mask` set.
    NoBits(u8, u64),
    /// Argument `index` differs from `value`.
    Ne(u8, u64),
}

/// An allowed syscall.
#[derive(Debug, Clone, Copy)]
pub struct Syscall {
    /// The syscall number (`libc::SYS_*`).
    pub nr: i64,
    /// Its name, for listings and reports.
    pub name: &'static str,
    /// Why the process needs it.
    pub why: &'static str,
    /// Alternatives (any may match), each a list of conditions that must
    /// all hold; empty means any arguments.
    pub rules: &'static [&'static [Arg]],
}

/// What happens on a syscall that is not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Violation {
    /// The kernel kills the whole process (the default).
    #[default]
    Kill,
    /// SIGSYS is delivered, for a handler that reports the syscall.
    Trap,
    /// The syscall is logged by the kernel and allowed.
    Log,
}

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler refused the policy.
    #[error("cannot build seccomp filter: {0}")]
    Build(seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("cannot install seccomp filter: {0}")]
    Install(seccompiler::Error),
}

/// An allowlist.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    syscalls: Vec<Syscall>,
}

fn condition(a: Arg) -> Result<SeccompCondition, seccompiler::BackendError> {
    match a {
        Arg::Eq(i, v) => SeccompCondition::new(i, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, v),
        Arg::NoBits(i, mask) => {
            SeccompCondition::new(i, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(mask), 0)
        }
        Arg::Ne(i, v) => SeccompCondition::new(i, SeccompCmpArgLen::Qword, SeccompCmpOp::Ne, v),
    }
}

/// seccompiler rules for `syscalls`, keyed by number (an entry without
/// argument conditions matches any arguments).
fn rule_map(syscalls: &[Syscall]) -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for s in syscalls {
        let entry = rules.entry(s.nr).or_default();
        for alt in s.rules {
            let conds = alt
                .iter()
                .map(|a| condition(*a))
                .collect::<Result<Vec<_>, _>>()
                .map_err(SeccompError::Build)?;
            entry.push(SeccompRule::new(conds).map_err(SeccompError::Build)?);
        }
    }
    Ok(rules)
}

/// The guard every program starts with: load the syscall number; below the
/// x32 bit, go on to the rules; otherwise (x32 calls, and the negative
/// numbers that are no syscall at all) return the refusal. seccompiler's
/// programs check the architecture first thing, right after it.
fn x32_guard(violation: Violation) -> [sock_filter; 3] {
    // Classic-BPF codes (uapi bpf_common.h): LD|W|ABS, JMP|JGE|K, RET|K.
    const LOAD_NR: u16 = 0x20;
    const JGE: u16 = 0x35;
    const RET: u16 = 0x06;
    // In log mode everything else is allowed and logged; an x32 call is
    // refused as a kernel without x32 refuses it.
    let refusal = match violation {
        Violation::Kill => libc::SECCOMP_RET_KILL_PROCESS,
        Violation::Trap => libc::SECCOMP_RET_TRAP,
        Violation::Log => libc::SECCOMP_RET_ERRNO | libc::ENOSYS.cast_unsigned(),
    };
    let ins = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    [
        ins(LOAD_NR, 0, 0, 0),
        ins(JGE, 0, 1, crate::bpf::X32_SYSCALL_BIT.cast_unsigned()),
        ins(RET, 0, 0, refusal),
    ]
}

/// `filter` compiled, behind the x32 guard.
fn guarded(filter: SeccompFilter, violation: Violation) -> Result<BpfProgram, SeccompError> {
    let rules = BpfProgram::try_from(filter).map_err(SeccompError::Build)?;
    let mut prog = x32_guard(violation).to_vec();
    prog.extend(rules);
    Ok(prog)
}

fn action_of(violation: Violation) -> SeccompAction {
    match violation {
        Violation::Kill => SeccompAction::KillProcess,
        Violation::Trap => SeccompAction::Trap,
        Violation::Log => SeccompAction::Log,
    }
}

impl Policy {
    /// A policy allowing `syscalls`.
    pub fn new(syscalls: &[Syscall]) -> Self {
        Self {
            syscalls: syscalls.to_vec(),
        }
    }

    /// Adds `syscalls` (a device's own needs on top of a common base).
    pub fn extend(&mut self, syscalls: &[Syscall]) {
        self.syscalls.extend_from_slice(syscalls);
    }

    /// The allowed syscalls, one entry per distinct number.
    pub fn syscalls(&self) -> Vec<Syscall> {
        let mut seen = BTreeMap::new();
        for s in &self.syscalls {
            seen.entry(s.nr).or_insert(*s);
        }
        seen.into_values().collect()
    }

    /// Compiles the policy for x86_64.
    pub fn compile(&self, violation: Violation) -> Result<BpfProgram, SeccompError> {
        let filter = SeccompFilter::new(
            rule_map(&self.syscalls)?,
            action_of(violation),
            SeccompAction::Allow,
            TargetArch::x86_64,
        )
        .map_err(SeccompError::Build)?;
        guarded(filter, violation)
    }

    /// Installs the policy on the calling thread (seccompiler sets
    /// no_new_privs first). Irreversible.
    pub fn install(&self, violation: Violation) -> Result<(), SeccompError> {
        let prog = self.compile(violation)?;
        seccompiler::apply_filter(&prog).map_err(SeccompError::Install)
    }
}

/// A denylist: the listed syscalls (under their argument conditions) get
/// the violation action, calls listed as unsupported fail with ENOSYS, and
/// everything else is allowed.
#[derive(Debug, Clone, Default)]
pub struct Denylist {
    deny: Vec<Syscall>,
    unsupported: Vec<Syscall>,
}

impl Denylist {
    /// An empty denylist (allows everything).
    pub fn new() -> Self {
        Self::default()
    }

    /// Denies `syscalls`.
    pub fn deny(&mut self, syscalls: &[Syscall]) {
        self.deny.extend_from_slice(syscalls);
    }

    /// Makes `syscalls` fail with ENOSYS, for calls whose arguments a filter
    /// cannot inspect (clone3 takes a pointer) and that C libraries replace
    /// with an older, filterable call when the kernel lacks them.
    pub fn unsupported(&mut self, syscalls: &[Syscall]) {
        self.unsupported.extend_from_slice(syscalls);
    }

    /// The denied syscalls, one entry per distinct number.
    pub fn denied(&self) -> Vec<Syscall> {
        let mut seen = BTreeMap::new();
        for s in &self.deny {
            seen.entry(s.nr).or_insert(*s);
        }
        seen.into_values().collect()
    }

    /// The ENOSYS syscalls, one entry per distinct number.
    pub fn enosys(&self) -> Vec<Syscall> {
        let mut seen = BTreeMap::new();
        for s in &self.unsupported {
            seen.entry(s.nr).or_insert(*s);
        }
        seen.into_values().collect()
    }

    /// Compiles the denylist for x86_64: one program, or two when some calls
    /// fail with ENOSYS (stacked filters: the kernel applies the most severe
    /// of their answers).
    pub fn compile(&self, violation: Violation) -> Result<Vec<BpfProgram>, SeccompError> {
        let mut progs = Vec::new();
        for (list, action) in [
            (&self.deny, action_of(violation)),
            (
                &self.unsupported,
                SeccompAction::Errno(libc::ENOSYS.cast_unsigned()),
            ),
        ] {
            if list.is_empty() {
                continue;
            }
            let filter = SeccompFilter::new(
                rule_map(list)?,
                SeccompAction::Allow,
                action,
                TargetArch::x86_64,
            )
            .map_err(SeccompError::Build)?;
            progs.push(guarded(filter, violation)?);
        }
        Ok(progs)
    }

    /// Installs the denylist on every thread of the calling process
    /// (SECCOMP_FILTER_FLAG_TSYNC; seccompiler sets no_new_privs first).
    /// Threads created later inherit it. Irreversible.
    pub fn install_all_threads(&self, violation: Violation) -> Result<(), SeccompError> {
        for prog in self.compile(violation)? {
            seccompiler::apply_filter_all_threads(&prog).map_err(SeccompError::Install)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GETPID: Syscall = Syscall {
        nr: libc::SYS_getpid,
        name: "getpid",
        why: "test",
        rules: &[],
    };

    /// mmap, never executable.
    const MMAP: Syscall = Syscall {
        nr: libc::SYS_mmap,
        name: "mmap",
        why: "test",
        rules: &[&[Arg::NoBits(2, libc::PROT_EXEC as u64)]],
    };

    const CLONE3: Syscall = Syscall {
        nr: libc::SYS_clone3,
        name: "clone3",
        why: "test",
        rules: &[],
    };

    #[test]
    fn duplicate_numbers_count_once() {
        let mut p = Policy::new(&[GETPID]);
        p.extend(&[GETPID]);
        assert_eq!(p.syscalls().len(), 1);
    }

    #[test]
    fn argument_rules_compile() {
        let p = Policy::new(&[GETPID, MMAP]);
        assert!(!p.compile(Violation::Kill).unwrap().is_empty());
    }

    /// Runs `f` in a forked child and returns how the child ended.
    fn in_child(f: impl FnOnce() -> i32) -> libc::c_int {
        // SAFETY: the test harness may have other threads; the child only
        // runs `f`, which makes raw syscalls and exits with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = f();
            // SAFETY: ends the child without running the parent's atexit.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child we forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        status
    }

    const MODES: [Violation; 3] = [Violation::Kill, Violation::Trap, Violation::Log];

    fn verdict(prog: &[sock_filter], nr: i64, args: [u64; 6]) -> u32 {
        crate::bpf::run(prog, &crate::bpf::SeccompData::x86_64(nr, args)).unwrap()
    }

    fn x32(nr: i64) -> i64 {
        nr | i64::from(crate::bpf::X32_SYSCALL_BIT)
    }

    #[test]
    fn an_allowlist_answers_as_listed_and_refuses_x32_and_other_arches() {
        let p = Policy::new(&[GETPID, MMAP]);
        for (mode, other) in [
            (Violation::Kill, libc::SECCOMP_RET_KILL_PROCESS),
            (Violation::Trap, libc::SECCOMP_RET_TRAP),
            (Violation::Log, libc::SECCOMP_RET_LOG),
        ] {
            let prog = p.compile(mode).unwrap();
            let allow = libc::SECCOMP_RET_ALLOW;
            assert_eq!(verdict(&prog, libc::SYS_getpid, [0; 6]), allow);
            assert_eq!(verdict(&prog, libc::SYS_getppid, [0; 6]), other);
            let read = [0, 4096, libc::PROT_READ as u64, 0, 0, 0];
            let exec = [0, 4096, libc::PROT_EXEC as u64, 0, 0, 0];
            assert_eq!(verdict(&prog, libc::SYS_mmap, read), allow);
            assert_eq!(verdict(&prog, libc::SYS_mmap, exec), other);
            let refused = verdict(&prog, x32(libc::SYS_getpid), [0; 6]);
            assert_ne!(crate::bpf::action(refused), allow, "{mode:?}");
            assert_ne!(crate::bpf::action(refused), libc::SECCOMP_RET_LOG);
            assert_eq!(verdict(&prog, -1, [0; 6]), refused);
            let i386 = crate::bpf::SeccompData {
                arch: crate::bpf::AUDIT_ARCH_I386,
                ..crate::bpf::SeccompData::x86_64(libc::SYS_getpid, [0; 6])
            };
            assert_eq!(
                crate::bpf::run(&prog, &i386),
                Ok(libc::SECCOMP_RET_KILL_PROCESS)
            );
        }
    }

    #[test]
    fn a_denylist_refuses_the_x32_form_of_every_call() {
        let mut d = Denylist::new();
        d.deny(&[GETPID]);
        d.unsupported(&[CLONE3]);
        for mode in MODES {
            let progs = d.compile(mode).unwrap();
            let refs: Vec<&[sock_filter]> = progs.iter().map(Vec::as_slice).collect();
            let ask = |nr| {
                crate::bpf::stacked(&refs, &crate::bpf::SeccompData::x86_64(nr, [0; 6])).unwrap()
            };
            assert_eq!(ask(libc::SYS_getppid), libc::SECCOMP_RET_ALLOW);
            assert_eq!(
                ask(libc::SYS_clone3),
                libc::SECCOMP_RET_ERRNO | libc::ENOSYS.cast_unsigned()
            );
            for nr in [libc::SYS_getpid, libc::SYS_getppid, libc::SYS_clone3] {
                let a = crate::bpf::action(ask(x32(nr)));
                assert_ne!(a, libc::SECCOMP_RET_ALLOW, "{mode:?} {nr}");
                assert_ne!(a, libc::SECCOMP_RET_LOG, "{mode:?} {nr}");
            }
        }
    }

    #[test]
    fn the_kernel_kills_an_x32_call_that_a_denylist_does_not_name() {
        let mut d = Denylist::new();
        d.deny(&[GETPID]);
        let progs = d.compile(Violation::Kill).unwrap();
        let status = in_child(|| {
            for prog in &progs {
                if seccompiler::apply_filter(prog).is_err() {
                    return 3;
                }
            }
            // SAFETY: a raw x32 getppid (ENOSYS on kernels without x32);
            // the filter kills the process first.
            unsafe { libc::syscall(x32(libc::SYS_getppid)) };
            0
        });
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }

    #[test]
    fn a_syscall_off_the_list_kills_the_process() {
        const EXIT: Syscall = Syscall {
            nr: libc::SYS_exit_group,
            name: "exit_group",
            why: "test",
            rules: &[],
        };
        // Compiled before the fork: the child only makes syscalls.
        let prog = Policy::new(&[EXIT]).compile(Violation::Kill).unwrap();
        let status = in_child(|| {
            if seccompiler::apply_filter(&prog).is_err() {
                return 3;
            }
            // SAFETY: a raw getppid; the filter kills the process here.
            unsafe { libc::syscall(libc::SYS_getppid) };
            0
        });
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }

    #[test]
    fn an_argument_filter_rejects_the_dangerous_value() {
        const LIST: &[Syscall] = &[
            Syscall {
                nr: libc::SYS_exit_group,
                name: "exit_group",
                why: "test",
                rules: &[],
            },
            Syscall {
                nr: libc::SYS_mmap,
                name: "mmap",
                why: "test",
                rules: &[&[Arg::NoBits(2, libc::PROT_EXEC as u64)]],
            },
        ];
        let prog = Policy::new(LIST).compile(Violation::Kill).unwrap();
        let status = in_child(|| {
            if seccompiler::apply_filter(&prog).is_err() {
                return 3;
            }
            let len = 4096;
            let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
            // SAFETY: raw anonymous mmap calls; results are not used.
            let ok =
                unsafe { libc::syscall(libc::SYS_mmap, 0, len, libc::PROT_READ, flags, -1, 0) };
            if ok < 0 {
                return 4;
            }
            // SAFETY: as above; the filter kills the process here.
            unsafe { libc::syscall(libc::SYS_mmap, 0, len, libc::PROT_EXEC, flags, -1, 0) };
            0
        });
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }

    #[test]
    fn a_denylist_covers_threads_that_already_exist() {
        const GETPPID: Syscall = Syscall {
            nr: libc::SYS_getppid,
            name: "getppid",
            why: "test",
            rules: &[],
        };
        let mut d = Denylist::new();
        d.deny(&[GETPPID]);
        d.unsupported(&[CLONE3]);
        assert_eq!(d.compile(Violation::Kill).unwrap().len(), 2);
        let status = in_child(|| {
            // A thread that exists before the filter (glibc makes malloc
            // and thread creation usable in a forked child).
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let t = std::thread::spawn(move || {
                let _ = rx.recv();
                // SAFETY: a raw getppid; the filter kills the process here.
                unsafe { libc::syscall(libc::SYS_getppid) };
            });
            if d.install_all_threads(Violation::Kill).is_err() {
                return 3;
            }
            // SAFETY: a raw getpid, not on the list: allowed.
            if unsafe { libc::syscall(libc::SYS_getpid) } <= 0 {
                return 4;
            }
            // SAFETY: clone3 with no arguments; the filter answers ENOSYS
            // before the kernel looks at them.
            let rc = unsafe { libc::syscall(libc::SYS_clone3, 0, 0) };
            if rc != -1 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS) {
                return 5;
            }
            let _ = tx.send(());
            let _ = t.join();
            0
        });
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }
}
