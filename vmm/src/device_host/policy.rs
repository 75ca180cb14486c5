//! The seccomp allowlists of device processes: what the worker loop needs
//! for every device, plus each device kind's own needs. Installed after the
//! hello, before any guest data is read; the default action kills the
//! process.

use sandbox::seccomp::{Arg, Policy, Syscall};

// Bit masks and values the argument filters compare with, as u64.
const PROT_EXEC: u64 = libc::PROT_EXEC as u64;

/// What every device worker needs.
const WORKER: &[Syscall] = &[
    Syscall {
        nr: libc::SYS_read,
        name: "read",
        why: "read kick eventfds; receive frames from a tap (net)",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_write,
        name: "write",
        why: "signal interrupt eventfds; log lines on stderr",
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
const DEBUG_EXTRA: &[Syscall] = &[Syscall {
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

/// virtio-rng's own needs.
const RNG: &[Syscall] = &[Syscall {
    nr: libc::SYS_getrandom,
    name: "getrandom",
    why: "the entropy it serves",
    rules: &[],
}];

/// virtio-blk's own needs: I/O on the one image fd it was given. It
/// cannot open, stat or truncate anything.
const BLK: &[Syscall] = &[
    Syscall {
        nr: libc::SYS_preadv,
        name: "preadv",
        why: "guest reads, straight into guest memory",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_pwritev,
        name: "pwritev",
        why: "guest writes, straight from guest memory; zeroes",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_fdatasync,
        name: "fdatasync",
        why: "FLUSH, and every write when the driver did not take FLUSH",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_fallocate,
        name: "fallocate",
        why: "DISCARD and WRITE_ZEROES (punch hole, zero range; never grows the file)",
        rules: &[
            &[Arg::Eq(
                1,
                (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u64,
            )],
            &[Arg::Eq(
                1,
                (libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE) as u64,
            )],
        ],
    },
];

/// virtio-net's own needs: frames on the one tap fd it was given. It
/// cannot open, create sockets or configure interfaces.
const NET: &[Syscall] = &[
    Syscall {
        nr: libc::SYS_writev,
        name: "writev",
        why: "transmit: a frame straight from guest memory to the tap",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_ioctl,
        name: "ioctl",
        why: "TUNSETOFFLOAD only: the offloads the driver accepts, at activation and reset",
        rules: &[&[Arg::Eq(1, devices::net::TUNSETOFFLOAD)]],
    },
];

/// The kind whose confinement a device of `kind` gets (itself, except for
/// the test-only escape kinds).
pub fn confinement_kind(kind: &str) -> &str {
    #[cfg(feature = "escape-test")]
    if let Some(real) = super::escape::real_kind(kind) {
        return real;
    }
    kind
}

/// The policy of a device of `kind` ("rng", ...), or `None` if unknown.
pub fn for_kind(kind: &str) -> Option<Policy> {
    let extra = match confinement_kind(kind) {
        "rng" => RNG,
        "blk" => BLK,
        "net" => NET,
        _ => return None,
    };
    let mut p = Policy::new(WORKER);
    p.extend(extra);
    #[cfg(debug_assertions)]
    p.extend(DEBUG_EXTRA);
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_policy_is_small_and_compiles() {
        let p = for_kind("rng").unwrap();
        assert!(p.syscalls().len() <= 16, "{}", p.syscalls().len());
        assert!(p.compile(sandbox::seccomp::Violation::Kill).is_ok());
    }

    #[test]
    fn blk_policy_is_small_and_compiles() {
        let p = for_kind("blk").unwrap();
        assert!(p.syscalls().len() <= 25, "{}", p.syscalls().len());
        assert!(p.compile(sandbox::seccomp::Violation::Kill).is_ok());
    }

    #[test]
    fn net_policy_is_small_and_compiles() {
        let p = for_kind("net").unwrap();
        assert!(p.syscalls().len() <= 25, "{}", p.syscalls().len());
        assert!(p.compile(sandbox::seccomp::Violation::Kill).is_ok());
    }

    #[test]
    fn unknown_kinds_have_no_policy() {
        assert!(for_kind("gpu").is_none());
    }
}
