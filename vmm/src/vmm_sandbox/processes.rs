//! The allowlists of skvm's helper processes: the spawner and the control
//! socket's remover.
//!
//! A filter stays with a process through fork and exec, so the spawner's
//! covers what its children do until their own filter takes over: the
//! steps before exec (`device_host::spawner::fork_device`), the dynamic
//! loader and std's start-up of the device binary, the device's jail
//! (`device_host::jail::after_exec`: the empty root, capabilities, limits)
//! and the installation of the device's filter. The kernel applies both
//! filters from then on, so the spawner's also lists every call a device
//! policy allows ([`spawner_policy`] adds them). What it leaves out is what
//! no step needs and what a compromised spawner would want: sockets,
//! ptrace and other processes' memory, modules, bpf, perf, io_uring,
//! userfaultfd, keyrings, namespaces other than a device's, new files.

use sandbox::seccomp::{Arg, Policy, Syscall};

use super::lists::{call, only};
use crate::device_host::policy;
use crate::kinds::Registry;

const SIGKILL: u64 = libc::SIGKILL as u64;
const SIGCHLD: u64 = libc::SIGCHLD as u64;
/// Flags of the only two clones the spawner makes: a device process in its
/// namespaces, or (without namespaces) a plain child.
const DEVICE_CLONE: u64 = sandbox::jail::NAMESPACES as u64 | SIGCHLD;
/// Opens that would create or empty a file.
/// O_TMPFILE's own bit (the constant carries O_DIRECTORY too, which an
/// open of an existing directory has).
const NEW_FILE: u64 =
    (libc::O_CREAT | libc::O_TRUNC | (libc::O_TMPFILE & !libc::O_DIRECTORY)) as u64;

/// The spawner's own calls and its children's until their filter is on.
pub const SPAWNER: &[Syscall] = &[
    call(
        libc::SYS_read,
        "read",
        "the signalfd; a new child's sync pipe; device log pipes",
    ),
    call(
        libc::SYS_write,
        "write",
        "device log lines copied to stderr; sync bytes; a device's id maps",
    ),
    call(
        libc::SYS_poll,
        "poll",
        "wait for requests, exits and log lines; std checks fds 0-2 at a device's start",
    ),
    call(libc::SYS_recvmsg, "recvmsg", "spawn requests with fds"),
    call(
        libc::SYS_sendmsg,
        "sendmsg",
        "answers with a pidfd and status fd; exit reports",
    ),
    call(libc::SYS_close, "close", "drop fds"),
    call(
        libc::SYS_close_range,
        "close_range",
        "close every fd a device is not given",
    ),
    only(
        libc::SYS_clone,
        "clone",
        "SIGCHLD alone or with the device namespaces' flags: a device process, never a thread",
        &[&[Arg::Eq(0, DEVICE_CLONE)], &[Arg::Eq(0, SIGCHLD)]],
    ),
    call(libc::SYS_wait4, "wait4", "reap device processes"),
    only(
        libc::SYS_kill,
        "kill",
        "SIGKILL only: a child that could not be set up",
        &[&[Arg::Eq(1, SIGKILL)]],
    ),
    only(
        libc::SYS_pidfd_send_signal,
        "pidfd_send_signal",
        "SIGKILL only: a device whose status file could not be opened",
        &[&[Arg::Eq(1, SIGKILL)]],
    ),
    call(libc::SYS_pidfd_open, "pidfd_open", "a pidfd per device"),
    only(
        libc::SYS_openat,
        "openat",
        "existing files only (no O_CREAT, O_TRUNC, O_TMPFILE): a device's /proc status and id \
         maps, /dev/null, the loader's libraries and std's /proc/self/maps at a device's start",
        &[&[Arg::NoBits(2, NEW_FILE)]],
    ),
    call(libc::SYS_pipe2, "pipe2", "sync pipes with a new child"),
    call(
        libc::SYS_rt_sigprocmask,
        "rt_sigprocmask",
        "a device starts with no signal blocked",
    ),
    call(
        libc::SYS_rt_sigaction,
        "rt_sigaction",
        "std's signal set-up at a device's start; the SIGSYS reporter (--seccomp trap)",
    ),
    call(
        libc::SYS_rt_sigreturn,
        "rt_sigreturn",
        "return from the SIGSYS reporter (--seccomp trap)",
    ),
    call(
        libc::SYS_sigaltstack,
        "sigaltstack",
        "std's stack-overflow handler at a device's start",
    ),
    call(
        libc::SYS_prctl,
        "prctl",
        "parent-death signal, dumpability, name, no_new_privs, emptying the bounding and \
         ambient sets",
    ),
    call(
        libc::SYS_getppid,
        "getppid",
        "check the parent lives after setting the parent-death signal",
    ),
    call(
        libc::SYS_geteuid,
        "geteuid",
        "the fallback id map (a host without the VM's user maps the spawner's own)",
    ),
    call(
        libc::SYS_getegid,
        "getegid",
        "the fallback id map (a host without the VM's user maps the spawner's own)",
    ),
    call(
        libc::SYS_setresuid,
        "setresuid",
        "a device becomes root of its own user namespace (only ids mapped there)",
    ),
    call(
        libc::SYS_setresgid,
        "setresgid",
        "a device becomes root of its own user namespace (only ids mapped there)",
    ),
    call(
        libc::SYS_dup2,
        "dup2",
        "a device's control socket on fd 3, stdio",
    ),
    only(
        libc::SYS_fcntl,
        "fcntl",
        "F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_DUPFD_CLOEXEC: fd flags",
        &[
            &[Arg::Eq(1, libc::F_GETFD as u64)],
            &[Arg::Eq(1, libc::F_SETFD as u64)],
            &[Arg::Eq(1, libc::F_GETFL as u64)],
            &[Arg::Eq(1, libc::F_SETFL as u64)],
            &[Arg::Eq(1, libc::F_DUPFD_CLOEXEC as u64)],
        ],
    ),
    call(libc::SYS_execve, "execve", "run the device binary"),
    call(
        libc::SYS_mmap,
        "mmap",
        "the allocator; the dynamic loader maps a device binary's libraries executable (the \
         device's own filter then forbids that)",
    ),
    call(
        libc::SYS_mprotect,
        "mprotect",
        "the allocator; the dynamic loader's relocations",
    ),
    call(libc::SYS_munmap, "munmap", "the allocator; the loader"),
    call(libc::SYS_brk, "brk", "the allocator's main heap"),
    call(
        libc::SYS_newfstatat,
        "newfstatat",
        "the loader sizes the libraries it maps",
    ),
    call(libc::SYS_pread64, "pread64", "the loader reads ELF headers"),
    call(
        libc::SYS_access,
        "access",
        "the loader looks for /etc/ld.so.preload",
    ),
    call(
        libc::SYS_arch_prctl,
        "arch_prctl",
        "the loader sets up thread-local storage",
    ),
    call(
        libc::SYS_set_tid_address,
        "set_tid_address",
        "the C library's start",
    ),
    call(
        libc::SYS_set_robust_list,
        "set_robust_list",
        "the C library's start",
    ),
    call(libc::SYS_rseq, "rseq", "the C library's start"),
    call(
        libc::SYS_prlimit64,
        "prlimit64",
        "std reads the stack limit; a device lowers its resource limits",
    ),
    call(
        libc::SYS_getrandom,
        "getrandom",
        "the C library's and std's hash seeds",
    ),
    call(
        libc::SYS_sched_getaffinity,
        "sched_getaffinity",
        "std at a device's start",
    ),
    call(libc::SYS_gettid, "gettid", "std at a device's start"),
    call(
        libc::SYS_mount,
        "mount",
        "a device's empty root (or its share bound as its root, the mounts below covered), in \
         the mount namespace of its own user namespace (the spawner, unprivileged, can mount \
         nothing of the host's)",
    ),
    call(
        libc::SYS_chdir,
        "chdir",
        "a device's root (empty or its share), before pivot_root",
    ),
    call(
        libc::SYS_pivot_root,
        "pivot_root",
        "a device's root (empty or its share), in its own mount namespace",
    ),
    call(
        libc::SYS_umount2,
        "umount2",
        "a device detaches the old root from its own mount namespace",
    ),
    call(
        libc::SYS_capget,
        "capget",
        "a device checks its capabilities",
    ),
    call(
        libc::SYS_capset,
        "capset",
        "a device empties its capability sets",
    ),
    only(
        libc::SYS_seccomp,
        "seccomp",
        "SECCOMP_SET_MODE_FILTER: a device installs its own filter (a filter only takes \
         calls away)",
        &[&[Arg::Eq(0, libc::SECCOMP_SET_MODE_FILTER as u64)]],
    ),
    call(libc::SYS_exit_group, "exit_group", "exit"),
];

/// What the remover of the control socket does: wait for the spawner's
/// end, then check and unlink one path.
pub const REMOVER: &[Syscall] = &[
    call(
        libc::SYS_read,
        "read",
        "wait for the spawner's end (end of file on a pipe)",
    ),
    call(
        libc::SYS_newfstatat,
        "newfstatat",
        "check that the path still names the socket skvm bound",
    ),
    call(
        libc::SYS_statx,
        "statx",
        "the same check, where std uses statx",
    ),
    call(libc::SYS_unlink, "unlink", "remove the control socket"),
    only(
        libc::SYS_mmap,
        "mmap",
        "the allocator; never executable",
        &[&[Arg::NoBits(2, libc::PROT_EXEC as u64)]],
    ),
    call(libc::SYS_munmap, "munmap", "the allocator"),
    call(libc::SYS_brk, "brk", "the allocator"),
    call(libc::SYS_close, "close", "drop fds"),
    call(
        libc::SYS_rt_sigreturn,
        "rt_sigreturn",
        "return from the SIGSYS reporter (--seccomp trap)",
    ),
    call(libc::SYS_exit_group, "exit_group", "exit"),
];

/// The spawner's allowlist: its own calls and its children's, and every
/// call a device of a standard kind may make under its own filter.
pub fn spawner_policy() -> Policy {
    let mut p = Policy::new(SPAWNER);
    p.extend(policy::WORKER);
    p.extend(policy::TRAP_EXTRA);
    #[cfg(debug_assertions)]
    p.extend(policy::DEBUG_EXTRA);
    for kind in Registry::standard().kinds() {
        if let Some(c) = kind.confinement() {
            p.extend(c.syscalls);
        }
    }
    p
}

/// The fd the vsock connector reads requests from and answers on.
pub const CONNECTOR_FD: i32 = 3;
const SOCK_STREAM_FLAGS: u64 =
    (libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) as u64;

/// The vsock connector's calls (`kinds::vsock::connector`): it connects to
/// `PATH_<port>` in its working directory and passes the socket on.
pub const CONNECTOR: &[Syscall] = &[
    only(
        libc::SYS_read,
        "read",
        "a request on its channel (fd 3 only)",
        &[&[Arg::Eq(0, CONNECTOR_FD as u64)]],
    ),
    only(
        libc::SYS_socket,
        "socket",
        "a unix stream socket (non-blocking, close-on-exec), nothing else",
        &[&[
            Arg::Eq(0, libc::AF_UNIX as u64),
            Arg::Eq(1, SOCK_STREAM_FLAGS),
            Arg::Eq(2, 0),
        ]],
    ),
    call(
        libc::SYS_connect,
        "connect",
        "to PATH_<port>, a name relative to the socket's directory",
    ),
    only(
        libc::SYS_sendmsg,
        "sendmsg",
        "the answer and the connected socket, on fd 3 only",
        &[&[
            Arg::Eq(0, CONNECTOR_FD as u64),
            Arg::Eq(2, libc::MSG_NOSIGNAL as u64),
        ]],
    ),
    call(libc::SYS_close, "close", "its copy of the passed socket"),
    call(
        libc::SYS_rt_sigreturn,
        "rt_sigreturn",
        "return from the SIGSYS reporter (--seccomp trap)",
    ),
    call(libc::SYS_exit_group, "exit_group", "exit"),
];

/// The vsock connector's allowlist.
pub fn connector_policy() -> Policy {
    Policy::new(CONNECTOR)
}

/// The control socket remover's allowlist.
pub fn remover_policy() -> Policy {
    Policy::new(REMOVER)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandbox::bpf::{action, run, SeccompData, X32_SYSCALL_BIT};
    use sandbox::seccomp::Violation;

    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;

    /// What `prog` answers to syscall `nr` with `args`.
    fn ask(prog: &seccompiler::BpfProgram, nr: i64, args: [u64; 6]) -> u32 {
        action(run(prog, &SeccompData::x86_64(nr, args)).unwrap())
    }

    #[test]
    fn a_device_under_the_spawners_filter_may_make_every_call_its_own_allows() {
        let spawner = spawner_policy();
        let prog = spawner.compile(Violation::Kill).unwrap();
        let allowed = spawner.syscalls();
        for kind in Registry::standard().kinds() {
            let Some(own) = policy::for_kind(kind.as_ref()) else {
                continue;
            };
            for s in own.syscalls() {
                let theirs = allowed.iter().find(|a| a.nr == s.nr);
                assert!(theirs.is_some(), "{} {}", kind.name(), s.name);
                // A call the device may make with any arguments, the
                // spawner's filter passes with any too.
                if s.rules.is_empty() {
                    assert_eq!(ask(&prog, s.nr, [0; 6]), ALLOW, "{}", s.name);
                }
            }
        }
    }

    #[test]
    fn the_spawners_filter_refuses_what_only_an_attacker_needs() {
        for mode in [Violation::Kill, Violation::Trap, Violation::Log] {
            let p = spawner_policy().compile(mode).unwrap();
            let refused = |nr: i64, args: [u64; 6]| {
                let a = ask(&p, nr, args);
                a != ALLOW && (mode == Violation::Log || a != libc::SECCOMP_RET_LOG)
            };
            for nr in [
                libc::SYS_socket,
                libc::SYS_connect,
                libc::SYS_ptrace,
                libc::SYS_process_vm_writev,
                libc::SYS_unshare,
                libc::SYS_setns,
                libc::SYS_bpf,
                libc::SYS_init_module,
                libc::SYS_perf_event_open,
                libc::SYS_io_uring_setup,
                libc::SYS_userfaultfd,
                libc::SYS_keyctl,
                libc::SYS_clone3,
                libc::SYS_open,
            ] {
                assert!(refused(nr, [0; 6]), "{nr} {mode:?}");
            }
            // Every listed call in its x32 form.
            for s in spawner_policy().syscalls() {
                let x32 = ask(&p, s.nr | i64::from(X32_SYSCALL_BIT), [0; 6]);
                assert!(x32 != ALLOW && x32 != libc::SECCOMP_RET_LOG, "{}", s.name);
            }
            // New files, threads and signals other than SIGKILL.
            let creat = (libc::O_WRONLY | libc::O_CREAT) as u64;
            assert!(refused(libc::SYS_openat, [0, 0, creat, 0, 0, 0]));
            assert!(refused(
                libc::SYS_openat,
                [0, 0, libc::O_TRUNC as u64, 0, 0, 0]
            ));
            let thread = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
            assert!(refused(libc::SYS_clone, [thread, 0, 0, 0, 0, 0]));
            assert!(refused(
                libc::SYS_kill,
                [1, libc::SIGTERM as u64, 0, 0, 0, 0]
            ));
            // What the spawner does itself passes.
            let maps = libc::O_WRONLY as u64;
            assert_eq!(ask(&p, libc::SYS_openat, [0, 0, maps, 0, 0, 0]), ALLOW);
            let ns = sandbox::jail::NAMESPACES as u64 | libc::SIGCHLD as u64;
            assert_eq!(ask(&p, libc::SYS_clone, [ns, 0, 0, 0, 0, 0]), ALLOW);
            assert_eq!(ask(&p, libc::SYS_kill, [1, 9, 0, 0, 0, 0]), ALLOW);
        }
    }

    #[test]
    fn the_remover_may_only_wait_check_and_unlink() {
        let p = remover_policy().compile(Violation::Kill).unwrap();
        for nr in [libc::SYS_unlink, libc::SYS_read, libc::SYS_statx] {
            assert_eq!(ask(&p, nr, [0; 6]), ALLOW);
        }
        for nr in [
            libc::SYS_openat,
            libc::SYS_write,
            libc::SYS_execve,
            libc::SYS_clone,
            libc::SYS_socket,
            libc::SYS_rename,
        ] {
            assert_ne!(ask(&p, nr, [0; 6]), ALLOW);
        }
        assert!(remover_policy().syscalls().len() <= 12);
    }
}
