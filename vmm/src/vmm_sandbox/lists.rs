//! The VMM threads' syscall tables: what each kind of thread needs, the
//! calls no VMM thread may make, what each `--sandbox` group adds, and the
//! ioctl request numbers the lists filter on. Composed into policies in the
//! parent module.

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_fpu, kvm_guest_debug, kvm_ioeventfd, kvm_irq_routing,
    kvm_irqchip, kvm_irqfd, kvm_lapic_state, kvm_mp_state, kvm_msrs, kvm_pit_state2, kvm_regs,
    kvm_sregs, kvm_translation, kvm_userspace_memory_region, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use sandbox::seccomp::{Arg, Syscall};

pub(super) const fn call(nr: i64, name: &'static str, why: &'static str) -> Syscall {
    Syscall {
        nr,
        name,
        why,
        rules: &[],
    }
}

pub(super) const fn only(
    nr: i64,
    name: &'static str,
    why: &'static str,
    rules: &'static [&'static [Arg]],
) -> Syscall {
    Syscall {
        nr,
        name,
        why,
        rules,
    }
}

/// ioctl request numbers (asm-generic/ioctl.h): direction, size, type, nr.
const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    const KVMIO: u64 = 0xAE;
    (dir << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}
const fn io(nr: u64) -> u64 {
    ioc(0, nr, 0)
}
const fn iow<T>(nr: u64) -> u64 {
    ioc(1, nr, std::mem::size_of::<T>())
}
const fn ior<T>(nr: u64) -> u64 {
    ioc(2, nr, std::mem::size_of::<T>())
}
const fn iowr<T>(nr: u64) -> u64 {
    ioc(3, nr, std::mem::size_of::<T>())
}

/// The KVM requests skvm makes once the guest runs (linux/kvm.h).
pub mod kvm_ioctl {
    use super::*;
    /// Runs the vCPU.
    pub const RUN: u64 = io(0x80);
    /// Reads the general registers.
    pub const GET_REGS: u64 = ior::<kvm_regs>(0x81);
    /// Writes the general registers.
    pub const SET_REGS: u64 = iow::<kvm_regs>(0x82);
    /// Reads the special registers.
    pub const GET_SREGS: u64 = ior::<kvm_sregs>(0x83);
    /// Reads MSRs.
    pub const GET_MSRS: u64 = iowr::<kvm_msrs>(0x88);
    /// Reads the debug registers.
    pub const GET_DEBUGREGS: u64 = ior::<kvm_debugregs>(0xa1);
    /// Writes the debug registers.
    pub const SET_DEBUGREGS: u64 = iow::<kvm_debugregs>(0xa2);
    /// Sets or clears hardware breakpoints.
    pub const SET_GUEST_DEBUG: u64 = iow::<kvm_guest_debug>(0x9b);
    /// Translates a guest virtual address.
    pub const TRANSLATE: u64 = iowr::<kvm_translation>(0x85);
    /// Reads the FPU state.
    pub const GET_FPU: u64 = ior::<kvm_fpu>(0x8c);
    /// Writes the FPU state.
    pub const SET_FPU: u64 = iow::<kvm_fpu>(0x8d);
    /// Reads the extended (XSAVE) state.
    pub const GET_XSAVE: u64 = ior::<kvm_xsave>(0xa4);
    /// Writes the extended state.
    pub const SET_XSAVE: u64 = iow::<kvm_xsave>(0xa5);
    /// Reads XCR0.
    pub const GET_XCRS: u64 = ior::<kvm_xcrs>(0xa6);
    /// Reads pending events.
    pub const GET_VCPU_EVENTS: u64 = ior::<kvm_vcpu_events>(0x9f);
    /// Writes pending events.
    pub const SET_VCPU_EVENTS: u64 = iow::<kvm_vcpu_events>(0xa0);
    /// Replaces the GSI routing table (MSI-X).
    pub const SET_GSI_ROUTING: u64 = iow::<kvm_irq_routing>(0x6a);
    /// Registers or removes an irqfd.
    pub const IRQFD: u64 = iow::<kvm_irqfd>(0x76);
    /// Registers or removes an ioeventfd.
    pub const IOEVENTFD: u64 = iow::<kvm_ioeventfd>(0x79);
    /// Adds a memory slot (mem-add).
    pub const SET_USER_MEMORY_REGION: u64 = iow::<kvm_userspace_memory_region>(0x46);
    /// Reads the multiprocessing state (snapshot).
    pub const GET_MP_STATE: u64 = ior::<kvm_mp_state>(0x98);
    /// Reads the local APIC (snapshot).
    pub const GET_LAPIC: u64 = ior::<kvm_lapic_state>(0x8e);
    /// Reads a PIC or the IO-APIC (snapshot).
    pub const GET_IRQCHIP: u64 = iowr::<kvm_irqchip>(0x62);
    /// Reads the PIT (snapshot).
    pub const GET_PIT2: u64 = ior::<kvm_pit_state2>(0x9f);
    /// Reads the kvmclock's time (snapshot).
    pub const GET_CLOCK: u64 = ior::<kvm_clock_data>(0x7c);
}

pub(super) const TCGETS: u64 = libc::TCGETS;
pub(super) const TCSETS: u64 = libc::TCSETS;
pub(super) const FIONBIO: u64 = libc::FIONBIO;

const PROT_EXEC: u64 = libc::PROT_EXEC as u64;
const CLONE_THREAD: u64 = libc::CLONE_THREAD as u64;
const SIGKILL: u64 = libc::SIGKILL as u64;

/// What every VMM thread needs, whatever its kind.
pub(super) const COMMON: &[Syscall] = &[
    call(
        libc::SYS_futex,
        "futex",
        "locks, condition variables, joins",
    ),
    only(
        libc::SYS_mmap,
        "mmap",
        "the allocator; guest memory (mem-add, device threads); never executable",
        &[&[Arg::NoBits(2, PROT_EXEC)]],
    ),
    only(
        libc::SYS_mprotect,
        "mprotect",
        "the allocator grows heaps in place; never executable",
        &[&[Arg::NoBits(2, PROT_EXEC)]],
    ),
    call(
        libc::SYS_munmap,
        "munmap",
        "the allocator; a thread's stack at its end",
    ),
    call(
        libc::SYS_madvise,
        "madvise",
        "the allocator returns freed memory",
    ),
    call(libc::SYS_brk, "brk", "the allocator's main heap"),
    call(
        libc::SYS_write,
        "write",
        "log lines on stderr; the serial console; signalling eventfds",
    ),
    call(libc::SYS_close, "close", "drop fds"),
    call(
        libc::SYS_clock_gettime,
        "clock_gettime",
        "timeouts, where the vDSO falls back to the syscall",
    ),
    call(
        libc::SYS_rt_sigreturn,
        "rt_sigreturn",
        "return from a signal handler (the vCPU kick, SIGTERM, --seccomp trap)",
    ),
    call(
        libc::SYS_rt_sigprocmask,
        "rt_sigprocmask",
        "the C library masks signals while a thread ends",
    ),
    call(
        libc::SYS_sigaltstack,
        "sigaltstack",
        "std removes a thread's signal stack at its end",
    ),
    call(libc::SYS_exit, "exit", "a thread ends"),
];

/// A vCPU thread's own calls.
pub(super) const VCPU: &[Syscall] = &[
    only(
        libc::SYS_ioctl,
        "ioctl",
        "KVM_RUN; the registers, FPU and XSAVE state, XCR0, events, MSRs and debug registers \
         that completing an instruction or a system call for an emulating host needs; the GSI routing, irqfds \
         and ioeventfds that guest writes to MSI-X and virtio-pci registers change; the MP state \
         and local APIC a snapshot reads beside those",
        &[
            &[Arg::Eq(1, kvm_ioctl::RUN)],
            &[Arg::Eq(1, kvm_ioctl::GET_MP_STATE)],
            &[Arg::Eq(1, kvm_ioctl::GET_LAPIC)],
            &[Arg::Eq(1, kvm_ioctl::GET_REGS)],
            &[Arg::Eq(1, kvm_ioctl::SET_REGS)],
            &[Arg::Eq(1, kvm_ioctl::GET_SREGS)],
            &[Arg::Eq(1, kvm_ioctl::GET_MSRS)],
            &[Arg::Eq(1, kvm_ioctl::SET_GUEST_DEBUG)],
            &[Arg::Eq(1, kvm_ioctl::GET_DEBUGREGS)],
            &[Arg::Eq(1, kvm_ioctl::SET_DEBUGREGS)],
            &[Arg::Eq(1, kvm_ioctl::TRANSLATE)],
            &[Arg::Eq(1, kvm_ioctl::GET_FPU)],
            &[Arg::Eq(1, kvm_ioctl::SET_FPU)],
            &[Arg::Eq(1, kvm_ioctl::GET_XSAVE)],
            &[Arg::Eq(1, kvm_ioctl::SET_XSAVE)],
            &[Arg::Eq(1, kvm_ioctl::GET_XCRS)],
            &[Arg::Eq(1, kvm_ioctl::GET_VCPU_EVENTS)],
            &[Arg::Eq(1, kvm_ioctl::SET_VCPU_EVENTS)],
            &[Arg::Eq(1, kvm_ioctl::SET_GSI_ROUTING)],
            &[Arg::Eq(1, kvm_ioctl::IRQFD)],
            &[Arg::Eq(1, kvm_ioctl::IOEVENTFD)],
        ],
    ),
    call(
        libc::SYS_sendmsg,
        "sendmsg",
        "device requests (activate, reset, configuration) when the guest writes them",
    ),
    call(libc::SYS_recvmsg, "recvmsg", "the devices' answers"),
    call(
        libc::SYS_poll,
        "poll",
        "wait for a device's answer, with a deadline",
    ),
    only(
        libc::SYS_pidfd_send_signal,
        "pidfd_send_signal",
        "SIGKILL only: kill a device process that breaks the protocol",
        &[&[Arg::Eq(1, SIGKILL)]],
    ),
    call(
        libc::SYS_sched_yield,
        "sched_yield",
        "before completing an instruction again that another vCPU may be patching \
         (emulating hosts)",
    ),
];

/// The main thread's own calls.
pub(super) const MAIN: &[Syscall] = &[
    call(
        libc::SYS_read,
        "read",
        "console input (terminal, pty, socket client); eventfds (exit, device events)",
    ),
    call(
        libc::SYS_poll,
        "poll",
        "the event loop: terminal, devices, control socket",
    ),
    only(
        libc::SYS_ioctl,
        "ioctl",
        "a memory slot for mem-add; irqfds, ioeventfds and routes a device reset or \
         restart changes; the terminal's mode (TCGETS, TCSETS); FIONBIO on sockets; the \
         irqchips, PIT and clock a snapshot reads",
        &[
            &[Arg::Eq(1, kvm_ioctl::SET_USER_MEMORY_REGION)],
            &[Arg::Eq(1, kvm_ioctl::GET_IRQCHIP)],
            &[Arg::Eq(1, kvm_ioctl::GET_PIT2)],
            &[Arg::Eq(1, kvm_ioctl::GET_CLOCK)],
            &[Arg::Eq(1, kvm_ioctl::SET_GSI_ROUTING)],
            &[Arg::Eq(1, kvm_ioctl::IRQFD)],
            &[Arg::Eq(1, kvm_ioctl::IOEVENTFD)],
            &[Arg::Eq(1, TCGETS)],
            &[Arg::Eq(1, TCSETS)],
            &[Arg::Eq(1, FIONBIO)],
        ],
    ),
    call(
        libc::SYS_sendmsg,
        "sendmsg",
        "device requests and the fds they carry; spawn requests",
    ),
    call(
        libc::SYS_recvmsg,
        "recvmsg",
        "device answers; the spawner's answers and the pidfds they carry",
    ),
    only(
        libc::SYS_socketpair,
        "socketpair",
        "AF_UNIX only: the control socket of a restarted device",
        &[&[Arg::Eq(0, libc::AF_UNIX as u64)]],
    ),
    call(
        libc::SYS_accept4,
        "accept4",
        "clients of --ctl and of --serial socket=",
    ),
    call(libc::SYS_recvfrom, "recvfrom", "--ctl requests"),
    call(libc::SYS_sendto, "sendto", "--ctl answers"),
    call(
        libc::SYS_setsockopt,
        "setsockopt",
        "a --ctl client's read and write deadlines",
    ),
    call(libc::SYS_shutdown, "shutdown", "end a --ctl answer"),
    only(
        libc::SYS_fcntl,
        "fcntl",
        "F_DUPFD_CLOEXEC: a device's fds for its successor; F_ADD_SEALS: mem-add's memfd; \
         F_GETFD: debug builds of std check an fd before closing it",
        &[
            &[Arg::Eq(1, libc::F_DUPFD_CLOEXEC as u64)],
            &[Arg::Eq(1, libc::F_ADD_SEALS as u64)],
            &[Arg::Eq(1, libc::F_GETFD as u64)],
        ],
    ),
    call(
        libc::SYS_pread64,
        "pread64",
        "/proc status files opened before: each device's (ctl status) and the VMM's own \
         (--debug)",
    ),
    call(
        libc::SYS_pwrite64,
        "pwrite64",
        "a snapshot's state and memory, into the files its ctl client opened and passed",
    ),
    only(
        libc::SYS_lseek,
        "lseek",
        "SEEK_DATA and SEEK_HOLE only: the pages of guest memory a snapshot writes",
        &[
            &[Arg::Eq(2, libc::SEEK_DATA as u64)],
            &[Arg::Eq(2, libc::SEEK_HOLE as u64)],
        ],
    ),
    call(libc::SYS_memfd_create, "memfd_create", "mem-add's new RAM"),
    call(libc::SYS_ftruncate, "ftruncate", "size mem-add's memfd"),
    only(
        libc::SYS_clone,
        "clone",
        "threads only (CLONE_THREAD): device threads a restart or mem-add rebuilds",
        &[&[Arg::AllBits(0, CLONE_THREAD)]],
    ),
    call(libc::SYS_wait4, "wait4", "reap the spawner at exit"),
    call(
        libc::SYS_tgkill,
        "tgkill",
        "kick vCPUs out of KVM_RUN (pause, stop)",
    ),
    call(libc::SYS_getpid, "getpid", "pthread_kill names the process"),
    only(
        libc::SYS_pidfd_send_signal,
        "pidfd_send_signal",
        "SIGKILL only: kill a device process that breaks the protocol or does not exit",
        &[&[Arg::Eq(1, SIGKILL)]],
    ),
    call(
        libc::SYS_unlink,
        "unlink",
        "remove the --ctl socket at exit",
    ),
    call(libc::SYS_exit_group, "exit_group", "exit"),
    call(
        libc::SYS_clock_nanosleep,
        "clock_nanosleep",
        "short waits while vCPUs and devices stop",
    ),
    call(
        libc::SYS_restart_syscall,
        "restart_syscall",
        "a sleep interrupted by a signal goes on",
    ),
    only(
        libc::SYS_prctl,
        "prctl",
        "PR_SET_NAME: a new thread's name; PR_SET_NO_NEW_PRIVS: before a new device thread \
         adds its own filter",
        &[
            &[Arg::Eq(0, libc::PR_SET_NAME as u64)],
            &[Arg::Eq(0, libc::PR_SET_NO_NEW_PRIVS as u64), Arg::Eq(1, 1)],
        ],
    ),
    only(
        libc::SYS_seccomp,
        "seccomp",
        "SECCOMP_SET_MODE_FILTER without flags: a new device thread adds its own filter \
         (a filter only takes calls away)",
        &[&[
            Arg::Eq(0, libc::SECCOMP_SET_MODE_FILTER as u64),
            Arg::Eq(1, 0),
        ]],
    ),
    call(
        libc::SYS_sched_getaffinity,
        "sched_getaffinity",
        "the C library, as a thread starts",
    ),
    call(libc::SYS_gettid, "gettid", "std, as a thread starts"),
    call(
        libc::SYS_rseq,
        "rseq",
        "the C library registers each new thread (and aborts if it cannot)",
    ),
];

/// A call a thread's start makes that fails with ENOSYS (the C library does
/// without it), and clone3, whose flags a filter cannot see (the C
/// library falls back to clone, which the filter checks).
pub(super) const MAIN_ENOSYS: &[Syscall] = &[
    call(
        libc::SYS_clone3,
        "clone3",
        "flags sit behind a pointer; the C library falls back to clone",
    ),
    call(
        libc::SYS_set_robust_list,
        "set_robust_list",
        "robust futexes: skvm has no process-shared locks",
    ),
];

/// Never allowed on any VMM thread, by any group (tests check the lists
/// against it, `skvm sandbox show vmm` prints it): nothing a running VMM
/// needs.
pub const NEVER: &[Syscall] = &[
    call(libc::SYS_reboot, "reboot", "would reboot the host"),
    call(
        libc::SYS_kexec_load,
        "kexec_load",
        "would replace the host kernel",
    ),
    call(
        libc::SYS_kexec_file_load,
        "kexec_file_load",
        "would replace the host kernel",
    ),
    call(
        libc::SYS_init_module,
        "init_module",
        "loads host kernel code",
    ),
    call(
        libc::SYS_finit_module,
        "finit_module",
        "loads host kernel code",
    ),
    call(
        libc::SYS_delete_module,
        "delete_module",
        "unloads host kernel code",
    ),
    call(libc::SYS_swapon, "swapon", "host administration"),
    call(libc::SYS_swapoff, "swapoff", "host administration"),
    call(libc::SYS_mount, "mount", "changes what the VMM can reach"),
    call(
        libc::SYS_umount2,
        "umount2",
        "changes what the VMM can reach",
    ),
    call(libc::SYS_pivot_root, "pivot_root", "changes the root"),
    call(libc::SYS_chroot, "chroot", "changes the root"),
    call(libc::SYS_move_mount, "move_mount", "new mount API"),
    call(libc::SYS_open_tree, "open_tree", "new mount API"),
    call(libc::SYS_fsopen, "fsopen", "new mount API"),
    call(libc::SYS_fsconfig, "fsconfig", "new mount API"),
    call(libc::SYS_fsmount, "fsmount", "new mount API"),
    call(libc::SYS_fspick, "fspick", "new mount API"),
    call(libc::SYS_mount_setattr, "mount_setattr", "new mount API"),
    call(libc::SYS_unshare, "unshare", "new namespaces"),
    call(libc::SYS_setns, "setns", "enters other namespaces"),
    call(libc::SYS_ptrace, "ptrace", "controls other processes"),
    call(
        libc::SYS_process_vm_readv,
        "process_vm_readv",
        "reads other processes' memory",
    ),
    call(
        libc::SYS_process_vm_writev,
        "process_vm_writev",
        "writes other processes' memory",
    ),
    call(libc::SYS_kcmp, "kcmp", "inspects other processes"),
    call(
        libc::SYS_pidfd_getfd,
        "pidfd_getfd",
        "steals other processes' fds",
    ),
    call(libc::SYS_bpf, "bpf", "loads programs into the host kernel"),
    call(
        libc::SYS_perf_event_open,
        "perf_event_open",
        "large kernel attack surface",
    ),
    call(
        libc::SYS_userfaultfd,
        "userfaultfd",
        "a tool for kernel race exploits",
    ),
    call(
        libc::SYS_io_uring_setup,
        "io_uring_setup",
        "large kernel attack surface",
    ),
    call(
        libc::SYS_io_uring_enter,
        "io_uring_enter",
        "as io_uring_setup",
    ),
    call(
        libc::SYS_io_uring_register,
        "io_uring_register",
        "as io_uring_setup",
    ),
    call(libc::SYS_keyctl, "keyctl", "kernel keyrings"),
    call(libc::SYS_add_key, "add_key", "kernel keyrings"),
    call(libc::SYS_request_key, "request_key", "kernel keyrings"),
    call(libc::SYS_acct, "acct", "host administration"),
    call(libc::SYS_quotactl, "quotactl", "host administration"),
    call(
        libc::SYS_syslog,
        "syslog",
        "reads or clears the host kernel log",
    ),
    call(
        libc::SYS_settimeofday,
        "settimeofday",
        "sets the host clock",
    ),
    call(
        libc::SYS_clock_settime,
        "clock_settime",
        "sets the host clock",
    ),
    call(
        libc::SYS_clock_adjtime,
        "clock_adjtime",
        "adjusts the host clock",
    ),
    call(libc::SYS_adjtimex, "adjtimex", "adjusts the host clock"),
    call(libc::SYS_sethostname, "sethostname", "host administration"),
    call(
        libc::SYS_setdomainname,
        "setdomainname",
        "host administration",
    ),
    call(libc::SYS_iopl, "iopl", "raw host I/O ports"),
    call(libc::SYS_ioperm, "ioperm", "raw host I/O ports"),
    call(
        libc::SYS_modify_ldt,
        "modify_ldt",
        "16-bit segments, a past exploit vector",
    ),
    call(
        libc::SYS_personality,
        "personality",
        "changes ABI behaviour",
    ),
    call(libc::SYS_vhangup, "vhangup", "hangs up the terminal"),
    call(
        libc::SYS_open_by_handle_at,
        "open_by_handle_at",
        "opens files around path checks",
    ),
    call(
        libc::SYS_name_to_handle_at,
        "name_to_handle_at",
        "as open_by_handle_at",
    ),
    call(
        libc::SYS_migrate_pages,
        "migrate_pages",
        "moves other processes' memory",
    ),
    call(
        libc::SYS_move_pages,
        "move_pages",
        "moves other processes' memory",
    ),
    call(
        libc::SYS_socket,
        "socket",
        "new sockets: netlink reconfigures the host, inet reaches the network",
    ),
    call(libc::SYS_connect, "connect", "reaches other services"),
    call(libc::SYS_open, "open", "opens host files"),
    call(libc::SYS_openat, "openat", "opens host files"),
    call(libc::SYS_openat2, "openat2", "opens host files"),
    call(libc::SYS_creat, "creat", "creates host files"),
];

/// `obsolete=allow`: calls modern C libraries do not make (most fail in
/// the kernel anyway).
pub(super) const OBSOLETE: &[Syscall] = &[
    call(libc::SYS_uselib, "uselib", "a.out shared libraries"),
    call(libc::SYS_ustat, "ustat", "replaced by statfs"),
    call(libc::SYS_sysfs, "sysfs", "replaced by /proc/filesystems"),
    call(libc::SYS__sysctl, "_sysctl", "replaced by /proc/sys"),
    call(libc::SYS_nfsservctl, "nfsservctl", "removed from Linux"),
    call(libc::SYS_getpmsg, "getpmsg", "STREAMS, never implemented"),
    call(libc::SYS_putpmsg, "putpmsg", "STREAMS, never implemented"),
    call(libc::SYS_afs_syscall, "afs_syscall", "never implemented"),
    call(libc::SYS_tuxcall, "tuxcall", "never implemented"),
    call(libc::SYS_security, "security", "never implemented"),
    call(libc::SYS_vserver, "vserver", "never implemented"),
    call(
        libc::SYS_lookup_dcookie,
        "lookup_dcookie",
        "oprofile, removed",
    ),
    call(
        libc::SYS_epoll_ctl_old,
        "epoll_ctl_old",
        "never implemented",
    ),
    call(
        libc::SYS_epoll_wait_old,
        "epoll_wait_old",
        "never implemented",
    ),
    call(
        libc::SYS_remap_file_pages,
        "remap_file_pages",
        "deprecated, emulated",
    ),
];

/// `elevateprivileges=allow`: changing credentials.
pub(super) const ELEVATE: &[Syscall] = &[
    call(libc::SYS_setuid, "setuid", "changes credentials"),
    call(libc::SYS_setgid, "setgid", "changes credentials"),
    call(libc::SYS_setreuid, "setreuid", "changes credentials"),
    call(libc::SYS_setregid, "setregid", "changes credentials"),
    call(libc::SYS_setresuid, "setresuid", "changes credentials"),
    call(libc::SYS_setresgid, "setresgid", "changes credentials"),
    call(libc::SYS_setfsuid, "setfsuid", "changes credentials"),
    call(libc::SYS_setfsgid, "setfsgid", "changes credentials"),
    call(libc::SYS_setgroups, "setgroups", "changes credentials"),
    call(libc::SYS_capset, "capset", "changes capabilities"),
];

/// `spawn=allow`: new processes and programs (device processes come from
/// the spawner, forked before any filter, whatever this group says).
pub(super) const SPAWN: &[Syscall] = &[
    call(libc::SYS_fork, "fork", "a new process"),
    call(libc::SYS_vfork, "vfork", "a new process"),
    call(libc::SYS_execve, "execve", "runs a program"),
    call(libc::SYS_execveat, "execveat", "runs a program"),
    call(libc::SYS_clone, "clone", "any flags: new processes too"),
    call(libc::SYS_clone3, "clone3", "new processes, flags unchecked"),
    call(libc::SYS_wait4, "wait4", "reap them"),
];

/// `resourcecontrol=allow`: scheduling and limits.
pub(super) const RESOURCECONTROL: &[Syscall] = &[
    call(
        libc::SYS_setpriority,
        "setpriority",
        "raises or lowers priority",
    ),
    call(libc::SYS_sched_setparam, "sched_setparam", "scheduling"),
    call(
        libc::SYS_sched_setscheduler,
        "sched_setscheduler",
        "scheduling (real-time classes)",
    ),
    call(libc::SYS_sched_setattr, "sched_setattr", "scheduling"),
    call(
        libc::SYS_sched_setaffinity,
        "sched_setaffinity",
        "CPU affinity",
    ),
    call(libc::SYS_ioprio_set, "ioprio_set", "I/O priority"),
    call(libc::SYS_setrlimit, "setrlimit", "resource limits"),
    call(libc::SYS_prlimit64, "prlimit64", "resource limits"),
    call(libc::SYS_mbind, "mbind", "NUMA placement"),
    call(libc::SYS_set_mempolicy, "set_mempolicy", "NUMA placement"),
];
