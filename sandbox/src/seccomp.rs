//! Seccomp-bpf allowlists, for device processes and for each kind of VMM
//! thread.
//!
//! A [`Policy`] is plain data: a list of [`Syscall`]s, each with the reason it
//! is allowed and, where an argument decides whether the call is dangerous,
//! the argument values it may take. [`Policy::install`] compiles it with
//! seccompiler and installs it on the calling thread; anything not on the
//! list gets the policy's default action, kill-process unless asked
//! otherwise.
//!
//! A policy may also name calls that fail with ENOSYS without reaching the
//! kernel: calls whose arguments a filter cannot inspect (clone3 takes a
//! pointer) or that the C library only uses when the kernel has them (rseq),
//! where the library falls back to something filterable or does without.
//!
//! Every program starts with the same guard: a syscall number with the x32
//! bit (0x40000000) set is refused before any rule is looked at. x32 calls
//! reach the same kernel functions under other numbers, so a filter that
//! matched on numbers alone would treat `0x40000000|SYS_unshare` as a call
//! it never heard of (a denylist lets it through); skvm makes no x32 calls,
//! so no filter of ours lets one pass.

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
    /// Argument `index` has every bit in `mask` set.
    AllBits(u8, u64),
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

/// An allowlist, with the calls that fail with ENOSYS instead.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    syscalls: Vec<Syscall>,
    enosys: Vec<Syscall>,
}

fn condition(a: Arg) -> Result<SeccompCondition, seccompiler::BackendError> {
    match a {
        Arg::Eq(i, v) => SeccompCondition::new(i, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, v),
        Arg::NoBits(i, mask) => {
            SeccompCondition::new(i, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(mask), 0)
        }
        Arg::Ne(i, v) => SeccompCondition::new(i, SeccompCmpArgLen::Qword, SeccompCmpOp::Ne, v),
        Arg::AllBits(i, mask) => SeccompCondition::new(
            i,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(mask),
            mask,
        ),
    }
}

/// seccompiler rules for `syscalls`, keyed by number (an entry without
/// argument conditions matches any arguments, and so does a number listed
/// once without them and once with).
fn rule_map(syscalls: &[Syscall]) -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let unconditional = |nr: i64| syscalls.iter().any(|s| s.nr == nr && s.rules.is_empty());
    for s in syscalls {
        let entry = rules.entry(s.nr).or_default();
        if unconditional(s.nr) {
            continue;
        }
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

/// After the x32 guard (the number is loaded): each of `enosys` fails with
/// ENOSYS, whatever its arguments.
fn enosys_guard(enosys: &[i64]) -> Vec<sock_filter> {
    const JEQ: u16 = 0x15;
    const RET: u16 = 0x06;
    let ins = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    let mut prog = Vec::with_capacity(enosys.len() * 2);
    for nr in enosys {
        // Syscall numbers below the x32 bit fit in 32 bits.
        let k = u32::try_from(*nr).unwrap_or(u32::MAX);
        prog.push(ins(JEQ, 0, 1, k));
        prog.push(ins(
            RET,
            0,
            0,
            libc::SECCOMP_RET_ERRNO | libc::ENOSYS.cast_unsigned(),
        ));
    }
    prog
}

/// `filter` compiled, behind the x32 guard and the ENOSYS answers.
fn guarded(
    filter: SeccompFilter,
    violation: Violation,
    enosys: &[i64],
) -> Result<BpfProgram, SeccompError> {
    let rules = BpfProgram::try_from(filter).map_err(SeccompError::Build)?;
    let mut prog = x32_guard(violation).to_vec();
    prog.extend(enosys_guard(enosys));
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
    /// A policy allowing `syscalls`; the calls of [`ALLOCATOR_ENOSYS`]
    /// fail with ENOSYS, as in every policy.
    pub fn new(syscalls: &[Syscall]) -> Self {
        Self {
            syscalls: syscalls.to_vec(),
            enosys: ALLOCATOR_ENOSYS.to_vec(),
        }
    }

    /// Makes `syscalls` fail with ENOSYS (their argument rules are not
    /// used). A call both allowed and listed here fails with ENOSYS.
    pub fn fail_with_enosys(&mut self, syscalls: &[Syscall]) {
        self.enosys.extend_from_slice(syscalls);
    }

    /// The calls that fail with ENOSYS, one entry per distinct number.
    pub fn enosys(&self) -> Vec<Syscall> {
        let mut seen = BTreeMap::new();
        for s in &self.enosys {
            seen.entry(s.nr).or_insert(*s);
        }
        seen.into_values().collect()
    }

    /// Adds `syscalls` (a device's own needs on top of a common base).
    pub fn extend(&mut self, syscalls: &[Syscall]) {
        self.syscalls.extend_from_slice(syscalls);
    }

    /// The allowed syscalls, one entry per distinct number (those that
    /// fail with ENOSYS left out); where a number is listed both with and
    /// without argument rules, the entry without (it allows any arguments).
    pub fn syscalls(&self) -> Vec<Syscall> {
        let mut seen: BTreeMap<i64, Syscall> = BTreeMap::new();
        for s in &self.syscalls {
            if self.enosys.iter().any(|e| e.nr == s.nr) {
                continue;
            }
            let e = seen.entry(s.nr).or_insert(*s);
            if s.rules.is_empty() && !e.rules.is_empty() {
                *e = *s;
            }
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
        let enosys: Vec<i64> = self.enosys().iter().map(|s| s.nr).collect();
        guarded(filter, violation, &enosys)
    }

    /// Installs the policy on the calling thread ([`install`]).
    /// Irreversible.
    pub fn install(&self, violation: Violation) -> Result<(), SeccompError> {
        install(&self.compile(violation)?)
    }
}

/// Installs `prog` on the calling thread (seccompiler sets no_new_privs
/// first), after [`keep_malloc_heaps`] for the whole process: every filter
/// skvm installs goes through here. Other threads keep theirs; threads
/// created later inherit it. Irreversible.
pub fn install(prog: &BpfProgram) -> Result<(), SeccompError> {
    keep_malloc_heaps();
    seccompiler::apply_filter(prog).map_err(SeccompError::Install)
}

/// What every policy ([`Policy::new`]) answers with ENOSYS instead of
/// allowing or killing: glibc's realloc of a block it got from mmap (128
/// KiB and more) tries `mremap` and copies into a new block when that
/// fails. Killing there killed the VMM as it wrote a large `SKVM_PROFILE`
/// (SIGSYS, mremap, November 2026); allowing it would let a confined
/// process grow or move mappings, which the copy makes unnecessary.
pub const ALLOCATOR_ENOSYS: &[Syscall] = &[Syscall {
    nr: libc::SYS_mremap,
    name: "mremap",
    why: "glibc's realloc of a large block; it copies instead when this fails",
    rules: &[],
}];

/// Stops glibc's malloc from shrinking its heaps, which a confined process
/// must do before its filter is installed. The first time a thread's arena
/// (any thread but the main one) gives memory back, glibc opens
/// /proc/sys/vm/overcommit_memory to decide how, and no confined policy
/// allows `openat`: a vCPU thread of a profiled run died of it
/// (SIGSYS, `openat`, November 2026). With the trim threshold at its
/// maximum no heap is trimmed (large blocks still come from and go back to
/// mmap). Idempotent; [`install`] calls it before every filter.
pub fn keep_malloc_heaps() {
    // SAFETY: mallopt only sets a malloc parameter; glibc serialises it
    // against other threads' allocations.
    unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test list's entry: `nr` allowed whatever its arguments.
    const fn any(nr: i64, name: &'static str) -> Syscall {
        Syscall {
            nr,
            name,
            why: "test",
            rules: &[],
        }
    }

    const GETPID: Syscall = any(libc::SYS_getpid, "getpid");
    const EXIT: Syscall = any(libc::SYS_exit_group, "exit_group");

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
    fn calls_listed_for_enosys_fail_with_enosys_in_every_mode() {
        let mut p = Policy::new(&[GETPID, CLONE3]);
        p.fail_with_enosys(&[CLONE3]);
        assert_eq!(p.syscalls().len(), 1);
        assert_eq!(p.enosys().len(), 1 + ALLOCATOR_ENOSYS.len());
        assert!(p.enosys().iter().any(|s| s.nr == libc::SYS_clone3));
        for mode in MODES {
            let prog = p.compile(mode).unwrap();
            assert_eq!(
                verdict(&prog, libc::SYS_clone3, [1, 2, 3, 0, 0, 0]),
                libc::SECCOMP_RET_ERRNO | libc::ENOSYS.cast_unsigned()
            );
            assert_eq!(
                verdict(&prog, libc::SYS_getpid, [0; 6]),
                libc::SECCOMP_RET_ALLOW
            );
            let a = crate::bpf::action(verdict(&prog, x32(libc::SYS_clone3), [0; 6]));
            assert_ne!(a, libc::SECCOMP_RET_ALLOW, "{mode:?}");
            assert_ne!(a, libc::SECCOMP_RET_LOG, "{mode:?}");
        }
    }

    #[test]
    fn the_kernel_kills_an_x32_form_of_an_allowed_call() {
        let prog = Policy::new(&[GETPID, EXIT])
            .compile(Violation::Kill)
            .unwrap();
        let status = in_child(|| {
            if seccompiler::apply_filter(&prog).is_err() {
                return 3;
            }
            // SAFETY: a raw x32 getpid (ENOSYS on kernels without x32);
            // the filter kills the process first.
            unsafe { libc::syscall(x32(libc::SYS_getpid)) };
            0
        });
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }

    #[test]
    fn a_syscall_off_the_list_kills_the_process() {
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

    /// A filter that kills the process at `nr` and allows every other call.
    fn killing_only(nr: i64) -> BpfProgram {
        SeccompFilter::new(
            [(nr, vec![])].into_iter().collect(),
            SeccompAction::Allow,
            SeccompAction::KillProcess,
            TargetArch::x86_64,
        )
        .unwrap()
        .try_into()
        .unwrap()
    }

    /// A child that kills itself at `openat` frees 40 MiB from a second
    /// thread's malloc arena: glibc's heap trimming opens
    /// /proc/sys/vm/overcommit_memory unless `keep_malloc_heaps` ran.
    fn trim_a_thread_arena_under_filter(keep: bool) -> libc::c_int {
        let prog = killing_only(libc::SYS_openat);
        in_child(|| {
            if keep {
                keep_malloc_heaps();
            }
            if seccompiler::apply_filter(&prog).is_err() {
                return 3;
            }
            // After fork the child's first new thread takes the arena the
            // forking thread left free (here the main one, grown with brk);
            // a holder keeps it so that the next thread gets an arena of
            // its own, grown and trimmed like a vCPU thread's.
            let (ready_tx, ready) = std::sync::mpsc::channel::<()>();
            let (release, release_rx) = std::sync::mpsc::channel::<()>();
            let holder = std::thread::spawn(move || {
                let b = std::hint::black_box(Box::new(0u64));
                let _ = ready_tx.send(());
                let _ = release_rx.recv();
                drop(b);
            });
            if ready.recv().is_err() {
                return 5;
            }
            let t = std::thread::spawn(|| {
                // Below the mmap threshold: these come from the arena's heap.
                let blocks: Vec<Vec<u8>> = (0..400)
                    .map(|_| std::hint::black_box(vec![1u8; 100 << 10]))
                    .collect();
                std::hint::black_box(blocks).len()
            });
            let joined = t.join();
            let _ = release.send(());
            match (joined, holder.join()) {
                (Ok(_), Ok(())) => 0,
                _ => 4,
            }
        })
    }

    /// A child grows a 64 MiB vector (above glibc's largest mmap
    /// threshold, so the block is mmapped and realloc tries mremap) under
    /// `prog`.
    fn grow_a_mapped_block(prog: &BpfProgram) -> libc::c_int {
        in_child(|| {
            let mut v: Vec<u8> = Vec::with_capacity(64 << 20);
            v.push(1);
            if seccompiler::apply_filter(prog).is_err() {
                return 3;
            }
            v.reserve(128 << 20);
            v.push(2);
            i32::from(std::hint::black_box(v).len() != 2)
        })
    }

    #[test]
    fn realloc_of_a_mapped_block_copies_when_mremap_fails_with_enosys() {
        // The control: a filter that kills at mremap and allows the rest.
        let killed = grow_a_mapped_block(&killing_only(libc::SYS_mremap));
        assert!(
            libc::WIFSIGNALED(killed) && libc::WTERMSIG(killed) == libc::SIGSYS,
            "the control case did not call mremap (status {killed:#x}): the test shows nothing"
        );
        // Any policy: here one that allows only mmap, munmap and exit.
        let policy = Policy::new(&[
            EXIT,
            any(libc::SYS_mmap, "mmap"),
            any(libc::SYS_munmap, "munmap"),
        ])
        .compile(Violation::Kill)
        .unwrap();
        let copied = grow_a_mapped_block(&policy);
        assert!(
            libc::WIFEXITED(copied) && libc::WEXITSTATUS(copied) == 0,
            "status {copied:#x}"
        );
    }

    /// The environment variable that makes the test below a probe (in a
    /// fresh process: glibc reads the file once per process, and this
    /// test process's own threads may have done it already).
    const TRIM_PROBE: &str = "SANDBOX_TEST_TRIM_PROBE";

    #[test]
    fn freed_thread_memory_does_not_make_malloc_open_a_file_under_a_filter() {
        if let Some(mode) = std::env::var_os(TRIM_PROBE) {
            let status = trim_a_thread_arena_under_filter(mode == "keep");
            let killed = libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS;
            let clean = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
            std::process::exit(match (killed, clean) {
                (true, _) => 10,
                (_, true) => 11,
                _ => 12,
            });
        }
        let probe = |mode: &str| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "seccomp::tests::freed_thread_memory_does_not_make_malloc_open_a_file_under_a_filter",
                    "--test-threads=1",
                ])
                .env(TRIM_PROBE, mode)
                .output()
                .unwrap()
                .status
                .code()
        };
        assert_eq!(
            probe("plain"),
            Some(10),
            "the control case (no keep_malloc_heaps) was not killed at openat: the test shows nothing"
        );
        assert_eq!(
            probe("keep"),
            Some(11),
            "killed or failed with keep_malloc_heaps"
        );
    }

    #[test]
    fn an_argument_filter_rejects_the_dangerous_value() {
        const LIST: &[Syscall] = &[
            EXIT,
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
}
