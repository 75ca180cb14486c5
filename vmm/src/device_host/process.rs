//! The device process: `skvm-dev NAME`, exec'd by the spawner. It closes
//! every fd but its control socket, confines itself (empty root, no new
//! privileges, no capabilities, rlimits), serves the device with the same
//! worker loop as a device thread and installs its seccomp filter after the
//! hello; with `--seccomp trap` a SIGSYS handler reports forbidden calls to
//! the VMM.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

use ipc::Channel;
use sandbox::seccomp::Violation;

use super::spawner::{self, SpawnFlags};
use super::{policy, worker};
use crate::kinds::{Confinement, Registry};

/// Where the trap-mode SIGSYS handler reports (the control socket).
static TRAP_REPORT_FD: AtomicI32 = AtomicI32::new(-1);

/// SIGSYS handler of `--seccomp trap`: reports the syscall to the VMM on
/// the control socket and makes it fail with ENOSYS. Async-signal-safe: no
/// allocation, one sendmsg.
extern "C" fn on_forbidden_syscall(
    _sig: libc::c_int,
    info: *mut libc::siginfo_t,
    ctx: *mut libc::c_void,
) {
    // The SIGSYS fields of siginfo_t (x86_64): si_call_addr at 16,
    // si_syscall at 24.
    // SAFETY: the kernel passes a valid siginfo_t for SIGSYS.
    let nr = unsafe { info.cast::<u8>().add(24).cast::<i32>().read_unaligned() };
    let msg = ipc::wire::forbidden_syscall_message(u32::try_from(nr).unwrap_or(u32::MAX));
    let mut iov = libc::iovec {
        iov_base: msg.as_ptr().cast_mut().cast(),
        iov_len: msg.len(),
    };
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    let fd = TRAP_REPORT_FD.load(Ordering::Relaxed);
    // SAFETY: sends one datagram from a buffer that outlives the call.
    unsafe { libc::sendmsg(fd, &hdr, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    // SAFETY: ctx is the ucontext the kernel saved; RAX is the syscall's
    // return value when the handler returns.
    unsafe {
        let uc = ctx.cast::<libc::ucontext_t>();
        if let Some(rax) = (*uc).uc_mcontext.gregs.get_mut(libc::REG_RAX as usize) {
            *rax = -i64::from(libc::ENOSYS);
        }
    }
}

fn install_trap_handler(control: RawFd) -> std::io::Result<()> {
    TRAP_REPORT_FD.store(control, Ordering::Relaxed);
    // SAFETY: sigaction is plain data; the handler is async-signal-safe.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_forbidden_syscall as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut act.sa_mask);
        if libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Steps 3 to 6 of the confinement (see `sandbox::jail`): the empty root
/// (with namespaces), no_new_privs, no capabilities, rlimits. Seccomp comes
/// after the hello.
fn confine_process(c: &Confinement, namespaces: bool) -> std::io::Result<()> {
    if namespaces {
        sandbox::jail::enter_empty_root()?;
    }
    sandbox::jail::no_new_privs()?;
    sandbox::jail::drop_capabilities()?;
    sandbox::jail::limit_resources(&sandbox::jail::device_limits(c.writes_files))
}

/// What the spawner put on a device process's command line after argv[0]
/// ([`SpawnFlags::args`]).
#[derive(Debug, Clone, Copy)]
pub struct DeviceArgs<'a> {
    /// The device's name ("rng0").
    pub name: &'a str,
    /// Its kind ("rng").
    pub kind: &'a str,
    /// The seccomp mode.
    pub seccomp: &'a str,
    /// Namespaces or not.
    pub ns: &'a str,
}

/// `main` of a device process (`skvm-dev NAME KIND SECCOMP NS`, control
/// socket on fd 3), whose kind is looked up in `kinds`. Ends with `_exit`:
/// the runtime's own teardown makes syscalls (sigaltstack) no device policy
/// allows.
pub fn process_main(kinds: &Registry, args: DeviceArgs<'_>) -> ! {
    let code = device_main(kinds, args);
    // SAFETY: ends the process at once; nothing buffered is lost (log lines
    // are written unbuffered).
    unsafe { libc::_exit(code) }
}

fn device_main(kinds: &Registry, args: DeviceArgs<'_>) -> i32 {
    let DeviceArgs {
        name,
        kind,
        seccomp,
        ns,
    } = args;
    sandbox::process::set_name(&format!("skvm-dev {name}"));
    // Past the file-size limit (no regular file is writable, stderr
    // included), a write fails with EFBIG instead of killing the device.
    // SAFETY: sets a signal's disposition to ignore.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let found = kinds.get(kind);
    let confinement = found.as_ref().and_then(|k| k.confinement());
    let (Some(kind), Some(confinement), Some(how)) =
        (found, confinement, SpawnFlags::from_args(seccomp, ns))
    else {
        eprintln!("skvm-dev {name}: unknown device kind or options (run by skvm only)");
        return 1;
    };
    let mut policy = policy::for_confinement(&confinement);
    // SAFETY: F_GETFD only queries the fd number.
    if unsafe { libc::fcntl(spawner::DEVICE_CONTROL_FD, libc::F_GETFD) } < 0 {
        eprintln!("skvm-dev {name}: no control socket (run by skvm only)");
        return 1;
    }
    let closed = sandbox::process::close_fds_except(&[0, 1, 2, spawner::DEVICE_CONTROL_FD]);
    let confined = match how.seccomp {
        Some(_) => closed.and_then(|()| confine_process(&confinement, how.namespaces)),
        None => closed,
    };
    if let Err(e) = confined {
        eprintln!("skvm-dev {name}: cannot confine the process: {e}");
        return 1;
    }
    // SAFETY: the spawner put the control socket on this fd for us alone.
    let chan = Channel::from_fd(unsafe { OwnedFd::from_raw_fd(spawner::DEVICE_CONTROL_FD) });
    if how.seccomp == Some(Violation::Trap) {
        if let Err(e) = install_trap_handler(spawner::DEVICE_CONTROL_FD) {
            eprintln!("skvm-dev {name}: cannot install the SIGSYS handler: {e}");
            return 1;
        }
        policy.extend(policy::TRAP_EXTRA);
    }
    let confine = || match how.seccomp {
        Some(v) => policy.install(v).map_err(worker::ConfineError::from),
        None => Ok(()),
    };
    match worker::serve(&chan, kind.as_ref(), name, confine) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("skvm-dev {name}: {e}");
            1
        }
    }
}
