//! The seccomp allowlists of device processes: what the worker loop needs
//! for every device, plus each device kind's own needs (its
//! [`Confinement`], in its module under `crate::kinds`). Installed after
//! the hello, before any guest data is read; the default action kills the
//! process.

use sandbox::seccomp::{Arg, Policy, Syscall};

use crate::kinds::{Confinement, DeviceKind};

// Bit masks and values the argument filters compare with, as u64.
const PROT_EXEC: u64 = libc::PROT_EXEC as u64;

/// What every device worker needs.
pub const WORKER: &[Syscall] = &[
    Syscall {
        nr: libc::SYS_read,
        name: "read",
        why: "read kick eventfds; frames from a tap (net); input from a pty or client (console)",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_write,
        name: "write",
        why: "signal interrupt eventfds; log lines on stderr; output to a console's pty, file or client",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_poll,
        name: "poll",
        why: "wait for kicks and control messages",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_recvmsg,
        name: "recvmsg",
        why: "control messages and the fds they carry",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_sendmsg,
        name: "sendmsg",
        why: "answers on the control socket",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_mmap,
        name: "mmap",
        why: "map guest memory at activation; heap; never executable",
        rules: &[&[Arg::NoBits(2, PROT_EXEC)]],
    },
    Syscall {
        nr: libc::SYS_mprotect,
        name: "mprotect",
        why: "the allocator grows heaps in place; never executable",
        rules: &[&[Arg::NoBits(2, PROT_EXEC)]],
    },
    Syscall {
        nr: libc::SYS_munmap,
        name: "munmap",
        why: "unmap guest memory on reset; heap",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_madvise,
        name: "madvise",
        why: "the allocator returns freed memory",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_brk,
        name: "brk",
        why: "the allocator's main heap",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_close,
        name: "close",
        why: "drop fds on reset and after rejected messages",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_futex,
        name: "futex",
        why: "std's locks (stderr)",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_clock_gettime,
        name: "clock_gettime",
        why: "timeouts, where the vDSO falls back to the syscall",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_exit_group,
        name: "exit_group",
        why: "exit on shutdown",
        rules: &[],
    },
];

/// What debug builds add: std checks that an fd is open before it closes
/// it (fcntl F_GETFD) when debug assertions are on.
#[cfg(debug_assertions)]
pub const DEBUG_EXTRA: &[Syscall] = &[Syscall {
    nr: libc::SYS_fcntl,
    name: "fcntl",
    why: "F_GETFD only: debug builds of std check an fd before closing it (not in release builds)",
    rules: &[&[Arg::Eq(1, libc::F_GETFD as u64)]],
}];

/// What `--seccomp trap` adds: returning from the SIGSYS handler.
pub const TRAP_EXTRA: &[Syscall] = &[Syscall {
    nr: libc::SYS_rt_sigreturn,
    name: "rt_sigreturn",
    why: "return from the SIGSYS handler that reports a forbidden syscall (trap mode only)",
    rules: &[],
}];

/// The policy of a device process confined as `c` says: the worker's
/// syscalls and the kind's own.
pub fn for_confinement(c: &Confinement) -> Policy {
    let mut p = Policy::new(WORKER);
    p.extend(c.syscalls);
    #[cfg(debug_assertions)]
    p.extend(DEBUG_EXTRA);
    p
}

/// The policy of a device of `kind`, or `None` if it never runs in a
/// process.
pub fn for_kind(kind: &dyn DeviceKind) -> Option<Policy> {
    kind.confinement().map(|c| for_confinement(&c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::Registry;

    fn policy(kind: &str) -> Option<Policy> {
        Registry::standard()
            .get(kind)
            .and_then(|k| for_kind(k.as_ref()))
    }

    #[test]
    fn rng_policy_is_small_and_compiles() {
        let p = policy("rng").unwrap();
        assert!(p.syscalls().len() <= 16, "{}", p.syscalls().len());
        assert!(p.compile(sandbox::seccomp::Violation::Kill).is_ok());
    }

    #[test]
    fn blk_policy_is_small_and_compiles() {
        let p = policy("blk").unwrap();
        assert!(p.syscalls().len() <= 25, "{}", p.syscalls().len());
        assert!(p.compile(sandbox::seccomp::Violation::Kill).is_ok());
    }

    #[test]
    fn fs_policy_takes_paths_only_relative_and_never_follows_or_makes_devices() {
        use sandbox::bpf::{run, SeccompData};
        let p = policy("fs").unwrap();
        // The worker's 14, 21 fd-relative file calls, 4 for attributes, memfd_create.
        assert!(p.syscalls().len() <= 40, "{}", p.syscalls().len());
        let prog = p.compile(sandbox::seccomp::Violation::Kill).unwrap();
        let allowed = |nr: i64, args: [u64; 6]| {
            run(&prog, &SeccompData::x86_64(nr, args)).unwrap() == libc::SECCOMP_RET_ALLOW
        };
        let flag = |f: i32| u64::try_from(f).unwrap();
        let nofollow = flag(libc::O_NOFOLLOW | libc::O_CLOEXEC);
        assert!(allowed(
            libc::SYS_openat,
            [3, 0, nofollow | flag(libc::O_PATH), 0, 0, 0]
        ));
        assert!(allowed(
            libc::SYS_openat,
            [
                3,
                0,
                nofollow | flag(libc::O_CREAT | libc::O_RDWR),
                0o644,
                0,
                0
            ]
        ));
        assert!(!allowed(
            libc::SYS_openat,
            [3, 0, flag(libc::O_RDONLY), 0, 0, 0]
        ));
        assert!(!allowed(
            libc::SYS_open,
            [0, flag(libc::O_NOFOLLOW), 0, 0, 0, 0]
        ));
        for kind in [libc::S_IFCHR, libc::S_IFBLK] {
            assert!(!allowed(
                libc::SYS_mknodat,
                [3, 0, u64::from(kind | 0o600), 0x101, 0, 0]
            ));
        }
        for kind in [libc::S_IFREG, libc::S_IFIFO, libc::S_IFSOCK] {
            assert!(allowed(
                libc::SYS_mknodat,
                [3, 0, u64::from(kind | 0o600), 0, 0, 0]
            ));
        }
        assert!(allowed(libc::SYS_linkat, [3, 0, 4, 0, 0, 0]));
        assert!(!allowed(
            libc::SYS_linkat,
            [3, 0, 4, 0, flag(libc::AT_EMPTY_PATH), 0]
        ));
        assert!(!allowed(
            libc::SYS_linkat,
            [3, 0, 4, 0, flag(libc::AT_SYMLINK_FOLLOW), 0]
        ));
        assert!(allowed(
            libc::SYS_renameat2,
            [3, 0, 4, 0, u64::from(libc::RENAME_NOREPLACE), 0]
        ));
        assert!(!allowed(
            libc::SYS_renameat2,
            [3, 0, 4, 0, u64::from(libc::RENAME_WHITEOUT), 0]
        ));
        let empty = flag(libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW);
        assert!(allowed(libc::SYS_newfstatat, [3, 0, 0, empty, 0, 0]));
        assert!(!allowed(libc::SYS_newfstatat, [3, 0, 0, 0, 0, 0]));
        assert!(allowed(libc::SYS_fchownat, [3, 0, 0, 0, empty, 0]));
        assert!(!allowed(libc::SYS_fchownat, [3, 0, 0, 0, 0, 0]));
        for nr in [
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_execve,
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_chdir,
            libc::SYS_fchdir,
            libc::SYS_chroot,
            libc::SYS_open_by_handle_at,
            libc::SYS_name_to_handle_at,
        ] {
            assert!(!allowed(nr, [0; 6]), "{nr}");
        }
    }

    #[test]
    fn console_policy_has_at_most_15_calls_and_accept4_only_non_blocking() {
        use sandbox::bpf::{run, SeccompData};
        let p = policy("console").unwrap();
        // Debug builds add DEBUG_EXTRA's fcntl.
        let extra = if cfg!(debug_assertions) { 1 } else { 0 };
        assert!(p.syscalls().len() <= 15 + extra, "{}", p.syscalls().len());
        let prog = p.compile(sandbox::seccomp::Violation::Kill).unwrap();
        let accept = |flags: i32| {
            let flags = u64::try_from(flags).unwrap();
            run(
                &prog,
                &SeccompData::x86_64(libc::SYS_accept4, [3, 0, 0, flags, 0, 0]),
            )
            .unwrap()
        };
        assert_eq!(
            accept(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC),
            libc::SECCOMP_RET_ALLOW
        );
        assert_ne!(accept(libc::SOCK_CLOEXEC), libc::SECCOMP_RET_ALLOW);
        let none = |nr| run(&prog, &SeccompData::x86_64(nr, [0; 6])).unwrap();
        for nr in [libc::SYS_socket, libc::SYS_connect, libc::SYS_openat] {
            assert_ne!(none(nr), libc::SECCOMP_RET_ALLOW, "{nr}");
        }
    }

    #[test]
    fn net_policy_is_small_and_compiles() {
        let p = policy("net").unwrap();
        assert!(p.syscalls().len() <= 25, "{}", p.syscalls().len());
        assert!(p.compile(sandbox::seccomp::Violation::Kill).is_ok());
    }

    /// Every kind's compiled filter, in every mode, run through the BPF
    /// interpreter: what it lists passes, executable mappings and the x32
    /// form of every listed call do not.
    #[test]
    fn every_compiled_device_filter_refuses_x32_and_executable_memory() {
        use sandbox::bpf::{action, run, SeccompData, X32_SYSCALL_BIT};
        use sandbox::seccomp::Violation;
        let allow = libc::SECCOMP_RET_ALLOW;
        for kind in Registry::standard().kinds() {
            let Some(p) = for_kind(kind.as_ref()) else {
                continue;
            };
            for mode in [Violation::Kill, Violation::Trap, Violation::Log] {
                let prog = p.compile(mode).unwrap();
                let ask = |nr: i64, args| run(&prog, &SeccompData::x86_64(nr, args)).unwrap();
                for s in p.syscalls() {
                    let name = (kind.name(), s.name, mode);
                    if s.rules.is_empty() {
                        assert_eq!(ask(s.nr, [0; 6]), allow, "{name:?}");
                    }
                    let x32 = action(ask(s.nr | i64::from(X32_SYSCALL_BIT), [0; 6]));
                    assert!(x32 != allow && x32 != libc::SECCOMP_RET_LOG, "{name:?}");
                }
                let rx = [0, 4096, (libc::PROT_READ | libc::PROT_EXEC) as u64, 0, 0, 0];
                for nr in [libc::SYS_mmap, libc::SYS_mprotect] {
                    assert_ne!(ask(nr, rx), allow, "{} {mode:?}", kind.name());
                }
            }
        }
    }

    #[test]
    fn a_kind_that_never_runs_in_a_process_has_no_policy() {
        assert!(policy("mem").is_none());
    }
}
