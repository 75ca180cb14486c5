//! The device process: `skvm-dev NAME KIND JAIL`, exec'd by the spawner.
//! It applies the rest of its jail (`super::jail`: fds, empty root, no new
//! privileges, no capabilities, rlimits), serves the device with the same
//! worker loop as a device thread and installs its seccomp filter after the
//! hello; with `--seccomp trap` a SIGSYS handler reports forbidden calls to
//! the VMM.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

use ipc::{Channel, SeccompAction};

use super::{jail, worker};
use crate::kinds::Registry;

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

/// What the spawner put on a device process's command line after argv[0].
#[derive(Debug, Clone, Copy)]
pub struct DeviceArgs<'a> {
    /// The device's name ("rng0").
    pub name: &'a str,
    /// Its kind ("rng").
    pub kind: &'a str,
    /// Its jail (`jail::to_arg`).
    pub jail: &'a str,
}

/// `main` of a device process (`skvm-dev NAME KIND JAIL`, control socket
/// on fd 3), whose kind is looked up in `kinds`: stage 2 of its jail, the
/// worker loop with stage 3 after the hello. Ends with `_exit`: the
/// runtime's own teardown makes syscalls (sigaltstack) no device policy
/// allows.
pub fn process_main(kinds: &Registry, args: DeviceArgs<'_>) -> ! {
    let code = device_main(kinds, args);
    // SAFETY: ends the process at once; nothing buffered is lost (log lines
    // are written unbuffered).
    unsafe { libc::_exit(code) }
}

/// The exit status of a device process that wrote at or past its
/// file-size limit: 128 + SIGXFSZ, as a shell reports a death by signal.
pub const FILE_SIZE_EXIT: i32 = 128 + libc::SIGXFSZ;

/// SIGXFSZ handler: ends the process with [`FILE_SIZE_EXIT`].
/// Async-signal-safe: one write, then _exit.
extern "C" fn on_file_size_exceeded(_sig: libc::c_int) {
    let msg = b"skvm-dev: a write past the file-size limit; exiting\n";
    // SAFETY: writes a buffer of its own length, then ends the process.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(FILE_SIZE_EXIT);
    }
}

/// A write at or past the file-size limit (0 for most kinds, a disk's image
/// size for blk) ends the device: no model writes there, so one that does
/// is compromised. The kernel's SIGXFSZ cannot do it by itself: the device
/// is the first process of its pid namespace, which a signal it has no
/// handler for does not kill, so a handler exits with [`FILE_SIZE_EXIT`]
/// (its filter allows no rt_sigaction to undo that). Only when stderr is a
/// regular file (the spawner could not give the device its log pipe and
/// skvm's stderr is a file) is the signal ignored, so that a log line past
/// the limit fails with EFBIG instead of ending an honest device; the write
/// is refused either way.
fn file_size_signal() {
    // SAFETY: fstat fills a stat struct of its size.
    let stderr_is_file = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(2, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFREG
    };
    let action = if stderr_is_file {
        libc::SIG_IGN
    } else {
        on_file_size_exceeded as *const () as usize
    };
    // SAFETY: sigaction is plain data; the handler is async-signal-safe.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = action;
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaction(libc::SIGXFSZ, &act, std::ptr::null_mut());
    }
}

fn device_main(kinds: &Registry, args: DeviceArgs<'_>) -> i32 {
    let name = args.name;
    sandbox::process::set_name(&format!("skvm-dev {name}"));
    file_size_signal();
    let (Some(kind), Ok(jail)) = (kinds.get(args.kind), jail::from_arg(args.jail)) else {
        eprintln!("skvm-dev {name}: unknown device kind or jail (run by skvm only)");
        return 1;
    };
    // SAFETY: F_GETFD only queries the fd number.
    if unsafe { libc::fcntl(jail::CONTROL_FD, libc::F_GETFD) } < 0 {
        eprintln!("skvm-dev {name}: no control socket (run by skvm only)");
        return 1;
    }
    let root = match jail::after_exec(&jail) {
        Ok(root) => root,
        Err(e) => {
            let e = anyhow::Error::new(e);
            eprintln!("skvm-dev {name}: cannot confine the process: {e:#}");
            return 1;
        }
    };
    // SAFETY: the spawner put the control socket on this fd for us alone.
    let chan = Channel::from_fd(unsafe { OwnedFd::from_raw_fd(jail::CONTROL_FD) });
    if jail.seccomp == Some(SeccompAction::Trap) {
        if let Err(e) = install_trap_handler(jail::CONTROL_FD) {
            eprintln!("skvm-dev {name}: cannot install the SIGSYS handler: {e}");
            return 1;
        }
    }
    let confine = || jail::after_hello(&jail, kind.as_ref()).map_err(worker::ConfineError::from);
    match worker::serve(&chan, kind.as_ref(), name, root, confine) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("skvm-dev {name}: {e}");
            1
        }
    }
}
