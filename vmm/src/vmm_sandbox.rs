//! The VMM's own seccomp filter (`--sandbox`), with the option groups of
//! QEMU's `-sandbox`: obsolete, elevateprivileges, spawn, resourcecontrol.
//!
//! Device processes get allowlists (see `device_host::policy`). The VMM's
//! syscall set is much broader (KVM, threads, the terminal, every device in
//! thread mode, supervision), so it gets a denylist instead: a default set
//! no VMM needs once the guest runs (mounting, module loading, ptrace,
//! namespaces, bpf, keyrings, clock setting, ...), plus one set per option
//! group. skvm denies every group unless told to allow it. The filter goes
//! on every VMM thread at once (TSYNC) just before the vCPUs start, and
//! threads created later inherit it; device processes were forked earlier by
//! the spawner and have their own, stricter filters.

use std::fmt;
use std::str::FromStr;

use sandbox::seccomp::{Arg, Denylist, SeccompError, Syscall, Violation};

use crate::device_host::SeccompMode;

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

const fn deny(nr: i64, name: &'static str, why: &'static str) -> Syscall {
    Syscall {
        nr,
        name,
        why,
        rules: &[],
    }
}

/// Always denied with `--sandbox on`: nothing a running VMM needs.
const DEFAULT: &[Syscall] = &[
    deny(libc::SYS_reboot, "reboot", "would reboot the host"),
    deny(
        libc::SYS_kexec_load,
        "kexec_load",
        "would replace the host kernel",
    ),
    deny(
        libc::SYS_kexec_file_load,
        "kexec_file_load",
        "would replace the host kernel",
    ),
    deny(
        libc::SYS_init_module,
        "init_module",
        "loads host kernel code",
    ),
    deny(
        libc::SYS_finit_module,
        "finit_module",
        "loads host kernel code",
    ),
    deny(
        libc::SYS_delete_module,
        "delete_module",
        "unloads host kernel code",
    ),
    deny(libc::SYS_swapon, "swapon", "host administration"),
    deny(libc::SYS_swapoff, "swapoff", "host administration"),
    deny(libc::SYS_mount, "mount", "changes what the VMM can reach"),
    deny(
        libc::SYS_umount2,
        "umount2",
        "changes what the VMM can reach",
    ),
    deny(libc::SYS_pivot_root, "pivot_root", "changes the root"),
    deny(libc::SYS_chroot, "chroot", "changes the root"),
    deny(libc::SYS_move_mount, "move_mount", "new mount API"),
    deny(libc::SYS_open_tree, "open_tree", "new mount API"),
    deny(libc::SYS_fsopen, "fsopen", "new mount API"),
    deny(libc::SYS_fsconfig, "fsconfig", "new mount API"),
    deny(libc::SYS_fsmount, "fsmount", "new mount API"),
    deny(libc::SYS_fspick, "fspick", "new mount API"),
    deny(libc::SYS_mount_setattr, "mount_setattr", "new mount API"),
    deny(
        libc::SYS_unshare,
        "unshare",
        "new namespaces (user namespaces widen the kernel attack surface)",
    ),
    deny(libc::SYS_setns, "setns", "enters other namespaces"),
    deny(libc::SYS_ptrace, "ptrace", "controls other processes"),
    deny(
        libc::SYS_process_vm_readv,
        "process_vm_readv",
        "reads other processes' memory",
    ),
    deny(
        libc::SYS_process_vm_writev,
        "process_vm_writev",
        "writes other processes' memory",
    ),
    deny(libc::SYS_kcmp, "kcmp", "inspects other processes"),
    deny(
        libc::SYS_pidfd_getfd,
        "pidfd_getfd",
        "steals other processes' fds",
    ),
    deny(libc::SYS_bpf, "bpf", "loads programs into the host kernel"),
    deny(
        libc::SYS_perf_event_open,
        "perf_event_open",
        "large kernel attack surface",
    ),
    deny(
        libc::SYS_userfaultfd,
        "userfaultfd",
        "a tool for kernel race exploits; skvm does not use it",
    ),
    deny(
        libc::SYS_io_uring_setup,
        "io_uring_setup",
        "large kernel attack surface; skvm does not use it",
    ),
    deny(
        libc::SYS_io_uring_enter,
        "io_uring_enter",
        "as io_uring_setup",
    ),
    deny(
        libc::SYS_io_uring_register,
        "io_uring_register",
        "as io_uring_setup",
    ),
    deny(libc::SYS_keyctl, "keyctl", "kernel keyrings"),
    deny(libc::SYS_add_key, "add_key", "kernel keyrings"),
    deny(libc::SYS_request_key, "request_key", "kernel keyrings"),
    deny(libc::SYS_acct, "acct", "host administration"),
    deny(libc::SYS_quotactl, "quotactl", "host administration"),
    deny(
        libc::SYS_syslog,
        "syslog",
        "reads or clears the host kernel log",
    ),
    deny(
        libc::SYS_settimeofday,
        "settimeofday",
        "sets the host clock",
    ),
    deny(
        libc::SYS_clock_settime,
        "clock_settime",
        "sets the host clock",
    ),
    deny(
        libc::SYS_clock_adjtime,
        "clock_adjtime",
        "adjusts the host clock",
    ),
    deny(libc::SYS_adjtimex, "adjtimex", "adjusts the host clock"),
    deny(libc::SYS_sethostname, "sethostname", "host administration"),
    deny(
        libc::SYS_setdomainname,
        "setdomainname",
        "host administration",
    ),
    deny(libc::SYS_iopl, "iopl", "raw host I/O ports"),
    deny(libc::SYS_ioperm, "ioperm", "raw host I/O ports"),
    deny(
        libc::SYS_modify_ldt,
        "modify_ldt",
        "16-bit segments, a past exploit vector",
    ),
    deny(
        libc::SYS_personality,
        "personality",
        "changes ABI behaviour",
    ),
    deny(libc::SYS_vhangup, "vhangup", "hangs up the terminal"),
    deny(
        libc::SYS_open_by_handle_at,
        "open_by_handle_at",
        "opens files around path checks",
    ),
    deny(
        libc::SYS_name_to_handle_at,
        "name_to_handle_at",
        "as open_by_handle_at",
    ),
    deny(
        libc::SYS_migrate_pages,
        "migrate_pages",
        "moves other processes' memory",
    ),
    deny(
        libc::SYS_move_pages,
        "move_pages",
        "moves other processes' memory",
    ),
];

/// `obsolete=deny`: calls modern C libraries do not make.
const OBSOLETE: &[Syscall] = &[
    deny(libc::SYS_uselib, "uselib", "a.out shared libraries"),
    deny(libc::SYS_ustat, "ustat", "replaced by statfs"),
    deny(libc::SYS_sysfs, "sysfs", "replaced by /proc/filesystems"),
    deny(libc::SYS__sysctl, "_sysctl", "replaced by /proc/sys"),
    deny(libc::SYS_nfsservctl, "nfsservctl", "removed from Linux"),
    deny(libc::SYS_getpmsg, "getpmsg", "STREAMS, never implemented"),
    deny(libc::SYS_putpmsg, "putpmsg", "STREAMS, never implemented"),
    deny(libc::SYS_afs_syscall, "afs_syscall", "never implemented"),
    deny(libc::SYS_tuxcall, "tuxcall", "never implemented"),
    deny(libc::SYS_security, "security", "never implemented"),
    deny(libc::SYS_vserver, "vserver", "never implemented"),
    deny(
        libc::SYS_lookup_dcookie,
        "lookup_dcookie",
        "oprofile, removed",
    ),
    deny(
        libc::SYS_epoll_ctl_old,
        "epoll_ctl_old",
        "never implemented",
    ),
    deny(
        libc::SYS_epoll_wait_old,
        "epoll_wait_old",
        "never implemented",
    ),
    deny(
        libc::SYS_remap_file_pages,
        "remap_file_pages",
        "deprecated, emulated",
    ),
];

/// `elevateprivileges=deny|children`: changing credentials.
const ELEVATE: &[Syscall] = &[
    deny(libc::SYS_setuid, "setuid", "changes credentials"),
    deny(libc::SYS_setgid, "setgid", "changes credentials"),
    deny(libc::SYS_setreuid, "setreuid", "changes credentials"),
    deny(libc::SYS_setregid, "setregid", "changes credentials"),
    deny(libc::SYS_setresuid, "setresuid", "changes credentials"),
    deny(libc::SYS_setresgid, "setresgid", "changes credentials"),
    deny(libc::SYS_setfsuid, "setfsuid", "changes credentials"),
    deny(libc::SYS_setfsgid, "setfsgid", "changes credentials"),
    deny(libc::SYS_setgroups, "setgroups", "changes credentials"),
    deny(libc::SYS_capset, "capset", "changes capabilities"),
];

/// CLONE_THREAD: the only clone the VMM makes once running.
const CLONE_THREAD: u64 = libc::CLONE_THREAD as u64;

/// `spawn=deny`: new processes and programs. Device processes come from the
/// spawner, forked before the filter.
const SPAWN: &[Syscall] = &[
    deny(libc::SYS_fork, "fork", "a new process"),
    deny(libc::SYS_vfork, "vfork", "a new process"),
    deny(libc::SYS_execve, "execve", "runs a program"),
    deny(libc::SYS_execveat, "execveat", "runs a program"),
    Syscall {
        nr: libc::SYS_clone,
        name: "clone",
        why: "a new process (threads, with CLONE_THREAD, stay allowed)",
        rules: &[&[Arg::NoBits(0, CLONE_THREAD)]],
    },
];

/// Calls whose arguments a filter cannot see; C libraries fall back to
/// `clone`, which can be checked.
const UNFILTERABLE: &[Syscall] = &[deny(
    libc::SYS_clone3,
    "clone3",
    "flags sit behind a pointer; glibc falls back to clone",
)];

/// `resourcecontrol=deny`: scheduling and limits.
const RESOURCECONTROL: &[Syscall] = &[
    deny(
        libc::SYS_setpriority,
        "setpriority",
        "raises or lowers priority",
    ),
    deny(libc::SYS_sched_setparam, "sched_setparam", "scheduling"),
    deny(
        libc::SYS_sched_setscheduler,
        "sched_setscheduler",
        "scheduling (real-time classes)",
    ),
    deny(libc::SYS_sched_setattr, "sched_setattr", "scheduling"),
    deny(
        libc::SYS_sched_setaffinity,
        "sched_setaffinity",
        "CPU affinity",
    ),
    deny(libc::SYS_ioprio_set, "ioprio_set", "I/O priority"),
    deny(libc::SYS_setrlimit, "setrlimit", "resource limits"),
    Syscall {
        nr: libc::SYS_prlimit64,
        name: "prlimit64",
        why: "setting resource limits (reading them stays allowed)",
        rules: &[&[Arg::Ne(2, 0)]],
    },
    deny(libc::SYS_mbind, "mbind", "NUMA placement"),
    deny(libc::SYS_set_mempolicy, "set_mempolicy", "NUMA placement"),
];

impl VmmSandbox {
    /// The groups in effect, with their syscalls, for listings.
    pub fn groups(&self) -> Vec<(&'static str, &'static [Syscall])> {
        if !self.on {
            return Vec::new();
        }
        let mut g: Vec<(&'static str, &'static [Syscall])> = vec![("default", DEFAULT)];
        if self.obsolete {
            g.push(("obsolete", OBSOLETE));
        }
        if self.elevate != Elevate::Allow {
            g.push(("elevateprivileges", ELEVATE));
        }
        if self.spawn {
            g.push(("spawn", SPAWN));
        }
        if self.resourcecontrol {
            g.push(("resourcecontrol", RESOURCECONTROL));
        }
        g
    }

    /// Calls that fail with ENOSYS instead (only with `spawn=deny`).
    pub fn enosys(&self) -> &'static [Syscall] {
        if self.on && self.spawn {
            UNFILTERABLE
        } else {
            &[]
        }
    }

    /// The denylist this value describes (empty when off).
    pub fn denylist(&self) -> Denylist {
        let mut d = Denylist::new();
        for (_, list) in self.groups() {
            d.deny(list);
        }
        d.unsupported(self.enosys());
        d
    }

    /// Installs the filter on every thread of this process. In trap mode a
    /// forbidden call is logged ("the VMM made forbidden syscall NAME") and
    /// fails with ENOSYS.
    pub fn install(&self, mode: SeccompMode) -> Result<(), SeccompError> {
        if !self.on {
            return Ok(());
        }
        if mode == SeccompMode::Trap {
            install_trap_handler();
        }
        self.denylist().install_all_threads(violation(mode))
    }
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
    let name = sandbox::syscalls::name(i64::from(nr)).unwrap_or("(unknown)");
    write_stderr(&[
        b"\r\nskvm: error: the VMM made forbidden syscall ",
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
    use super::*;

    fn parse(s: &str) -> Result<VmmSandbox, String> {
        s.parse()
    }

    #[test]
    fn on_denies_every_group() {
        let v = parse("on").unwrap();
        assert_eq!(v, VmmSandbox::default());
        let names: Vec<&str> = v.groups().iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "default",
                "obsolete",
                "elevateprivileges",
                "spawn",
                "resourcecontrol"
            ]
        );
        assert_eq!(v.enosys().len(), 1);
    }

    #[test]
    fn groups_can_be_allowed_one_by_one() {
        let v = parse("on,spawn=allow,obsolete=allow,resourcecontrol=allow").unwrap();
        let names: Vec<&str> = v.groups().iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["default", "elevateprivileges"]);
        assert!(v.enosys().is_empty());
        let v = parse("on,elevateprivileges=children").unwrap();
        assert_eq!(v.elevate, Elevate::Children);
        assert!(v.groups().iter().any(|(n, _)| *n == "elevateprivileges"));
        let v = parse("on,elevateprivileges=allow").unwrap();
        assert!(!v.groups().iter().any(|(n, _)| *n == "elevateprivileges"));
    }

    #[test]
    fn off_has_no_filter() {
        let v = parse("off").unwrap();
        assert!(!v.on);
        assert!(v.groups().is_empty());
        assert!(v.denylist().compile(Violation::Kill).unwrap().is_empty());
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

    /// The compiled denylist, run through the BPF interpreter: each call it
    /// denies is refused, and so is the x32 form of every call, denied or
    /// not (the bit makes a number that no denylist entry matches).
    fn refuses_every_x32_call(v: &VmmSandbox, progs: &[seccompiler::BpfProgram]) {
        use sandbox::bpf::{action, stacked, SeccompData, X32_SYSCALL_BIT};
        let refs: Vec<&[seccompiler::sock_filter]> = progs.iter().map(Vec::as_slice).collect();
        let ask = |nr: i64| action(stacked(&refs, &SeccompData::x86_64(nr, [0; 6])).unwrap());
        let allowed = [libc::SECCOMP_RET_ALLOW, libc::SECCOMP_RET_LOG];
        let denied = v.denylist().denied();
        for s in &denied {
            if s.rules.is_empty() {
                assert_ne!(ask(s.nr), libc::SECCOMP_RET_ALLOW, "{v} {}", s.name);
            }
        }
        for nr in denied.iter().map(|s| s.nr).chain([
            libc::SYS_read,
            libc::SYS_ioctl,
            libc::SYS_unshare,
            libc::SYS_execve,
        ]) {
            let a = ask(nr | i64::from(X32_SYSCALL_BIT));
            assert!(!allowed.contains(&a), "{v}: x32 {nr} gets {a:#x}");
        }
    }

    #[test]
    fn every_combination_compiles() {
        for spawn in ["allow", "deny"] {
            for elev in ["allow", "deny", "children"] {
                for other in ["allow", "deny"] {
                    let s = format!(
                        "on,spawn={spawn},elevateprivileges={elev},obsolete={other},resourcecontrol={other}"
                    );
                    let v = parse(&s).unwrap();
                    for mode in [Violation::Kill, Violation::Trap, Violation::Log] {
                        let progs = v.denylist().compile(mode).unwrap();
                        assert!(!progs.is_empty(), "{s}");
                        refuses_every_x32_call(&v, &progs);
                    }
                }
            }
        }
    }

    #[test]
    fn what_the_vmm_needs_is_never_denied() {
        let v = VmmSandbox::default();
        let d = v.denylist().denied();
        for needed in [
            libc::SYS_ioctl,
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_mmap,
            libc::SYS_futex,
            libc::SYS_kill,
            libc::SYS_wait4,
            libc::SYS_memfd_create,
            libc::SYS_sendmsg,
            libc::SYS_recvmsg,
            libc::SYS_sched_getaffinity,
        ] {
            assert!(d.iter().all(|s| s.nr != needed), "{needed}");
        }
    }
}
