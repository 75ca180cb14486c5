//! The VMM side: with `SKVM_ESCAPE_VMM=ACTION` (or `all`), vCPU 0 attempts
//! ACTION under its filter, after its first return from KVM_RUN (the guest
//! has run), and prints "escape-vmm=ACTION outcome=done|refused ...". The
//! actions are what a compromised VMM would try; each is harmless if it
//! were to succeed (signal 0, a seize that is undone, opens that write
//! nothing, calls with arguments the kernel rejects after the filter).

use std::ffi::CStr;
use std::io;
use std::sync::OnceLock;

/// The actions, in the order `all` attempts them.
pub const ACTIONS: &[&str] = &[
    "exec-shell",
    "fork",
    "setuid",
    "unshare",
    "setpriority",
    "open-read",
    "open-write",
    "proc-mem",
    "netlink",
    "inet",
    "connect",
    "ptrace-spawner",
    "kill-spawner",
    "kill-device",
    "mount",
    "mprotect-exec",
    "init-module",
    "bpf",
    "perf-event-open",
    "io-uring-setup",
    "userfaultfd",
    "keyctl",
    "x32",
];

/// What the probe needs, found before the filters go on.
struct Target {
    /// The action, or `all`.
    action: String,
    /// The spawner (the VMM's child).
    spawner: libc::pid_t,
    /// A device process (the spawner's child), or 0.
    device: libc::pid_t,
}

static TARGET: OnceLock<Target> = OnceLock::new();

/// The bit that makes a syscall number an x32 call.
const X32_SYSCALL_BIT: libc::c_long = 0x4000_0000;

fn check(rc: libc::c_long) -> io::Result<libc::c_long> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// The first child pid /proc lists for `pid` (0 if none), read through
/// `proc`, a /proc directory opened before the VMM left the host's files.
fn first_child(proc: &std::fs::File, pid: libc::pid_t) -> libc::pid_t {
    use std::os::fd::AsFd;
    sandbox::process::read_under(proc.as_fd(), &format!("{pid}/task/{pid}/children"))
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Closes an fd a raw syscall returned.
fn close_raw(fd: libc::c_long) {
    if let Ok(fd) = libc::c_int::try_from(fd) {
        // SAFETY: closes an fd this module just made.
        unsafe { libc::close(fd) };
    }
}

/// Opens `path` with `flags` and closes it again.
fn open_close(path: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: a NUL-terminated path; the fd, if any, is closed at once.
    let fd =
        check(unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, path.as_ptr(), flags) })?;
    close_raw(fd);
    Ok(())
}

fn attempt(action: &str, t: &Target) -> io::Result<()> {
    // SAFETY: raw syscalls on valid or deliberately invalid arguments; a
    // forked child exits at once; fds made are closed.
    unsafe {
        match action {
            "exec-shell" => {
                let argv = [
                    c"sh".as_ptr(),
                    c"-c".as_ptr(),
                    c"exit 0".as_ptr(),
                    std::ptr::null(),
                ];
                let envp: [*const libc::c_char; 1] = [std::ptr::null()];
                check(libc::execve(c"/bin/sh".as_ptr(), argv.as_ptr(), envp.as_ptr()).into())
                    .map(drop)
            }
            "fork" => {
                let pid = check(libc::syscall(libc::SYS_fork))?;
                if pid == 0 {
                    libc::_exit(0);
                }
                if let Ok(pid) = libc::pid_t::try_from(pid) {
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                }
                Ok(())
            }
            // glibc's setuid would signal every thread; the raw call
            // changes only this one.
            "setuid" => check(libc::syscall(libc::SYS_setuid, 0)).map(drop),
            "unshare" => check(libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUTS)).map(drop),
            "setpriority" => check(libc::setpriority(libc::PRIO_PROCESS, 0, 0).into()).map(drop),
            "open-read" => open_close(c"/etc/hostname", libc::O_RDONLY),
            "open-write" => open_close(c"/proc/sys/kernel/modprobe", libc::O_WRONLY),
            "proc-mem" => {
                let path = std::ffi::CString::new(format!("/proc/{}/mem", t.spawner))
                    .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
                open_close(&path, libc::O_RDWR)
            }
            "netlink" | "inet" => {
                let (family, kind, proto) = if action == "netlink" {
                    (libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE)
                } else {
                    (libc::AF_INET, libc::SOCK_STREAM, 0)
                };
                let fd = check(libc::syscall(libc::SYS_socket, family, kind, proto))?;
                close_raw(fd);
                Ok(())
            }
            "connect" => check(libc::syscall(libc::SYS_connect, -1, 0, 0)).map(drop),
            "ptrace-spawner" => {
                check(libc::syscall(
                    libc::SYS_ptrace,
                    libc::PTRACE_SEIZE,
                    t.spawner,
                    0,
                    0,
                ))?;
                libc::syscall(libc::SYS_ptrace, libc::PTRACE_DETACH, t.spawner, 0, 0);
                Ok(())
            }
            "kill-spawner" => check(libc::syscall(libc::SYS_kill, t.spawner, 0)).map(drop),
            "kill-device" => check(libc::syscall(libc::SYS_kill, t.device, 0)).map(drop),
            "mount" => check(libc::syscall(
                libc::SYS_mount,
                c"none".as_ptr(),
                c"/nonexistent-skvm-escape".as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                0,
            ))
            .map(drop),
            "mprotect-exec" => {
                let len = 4096;
                let page = libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                if page == libc::MAP_FAILED {
                    return Err(io::Error::last_os_error());
                }
                let rc = check(libc::syscall(
                    libc::SYS_mprotect,
                    page,
                    len,
                    libc::PROT_READ | libc::PROT_EXEC,
                ));
                libc::munmap(page, len);
                rc.map(drop)
            }
            "init-module" => {
                check(libc::syscall(libc::SYS_init_module, 0, 0, c"".as_ptr())).map(drop)
            }
            // BPF_PROG_LOAD (5) of no program.
            "bpf" => check(libc::syscall(libc::SYS_bpf, 5, 0, 0)).map(drop),
            "perf-event-open" => {
                check(libc::syscall(libc::SYS_perf_event_open, 0, 0, -1, -1, 0)).map(drop)
            }
            "io-uring-setup" => check(libc::syscall(libc::SYS_io_uring_setup, 1, 0)).map(drop),
            "userfaultfd" => {
                let fd = check(libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC))?;
                close_raw(fd);
                Ok(())
            }
            "keyctl" => {
                // KEYCTL_GET_KEYRING_ID of KEY_SPEC_SESSION_KEYRING, without
                // creating it.
                check(libc::syscall(libc::SYS_keyctl, 0, -3, 0)).map(drop)
            }
            "x32" => check(libc::syscall(libc::SYS_getpid | X32_SYSCALL_BIT)).map(drop),
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }
}

/// Attempts the action (or each, for `all`) and prints the outcome.
fn probe() {
    let Some(t) = TARGET.get() else { return };
    let all = t.action == "all";
    for action in ACTIONS.iter().filter(|a| all || **a == t.action) {
        let outcome = match attempt(action, t) {
            Ok(()) => "done".to_owned(),
            Err(e) => format!("refused reason=\"{e}\""),
        };
        vmm::log::info(&format!("escape-vmm={action} outcome={outcome}"));
    }
}

/// Arms the probe if `SKVM_ESCAPE_VMM` is set. Call before the filters go
/// on, with devices started (it reads the spawner's and a device's pid
/// through `proc`, /proc opened while the VMM could still see it).
pub fn prepare(proc: &std::fs::File) {
    let Ok(action) = std::env::var("SKVM_ESCAPE_VMM") else {
        return;
    };
    if action != "all" && !ACTIONS.contains(&action.as_str()) {
        vmm::log::error(&format!(
            "SKVM_ESCAPE_VMM: unknown action '{action}'; actions: all {}",
            ACTIONS.join(" ")
        ));
    }
    let spawner = first_child(proc, std::process::id().cast_signed());
    let device = if spawner > 0 {
        first_child(proc, spawner)
    } else {
        0
    };
    let _ = TARGET.set(Target {
        action,
        spawner,
        device,
    });
    vmm::vcpu::set_probe(probe);
}
