//! The spawner's own confinement: once it is set up it leaves root for the
//! VM's user and installs its allowlist, after forking the remover of the
//! sockets skvm bound (the one unlink its filter has no room for).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::{Context, Result};

use super::super::{SandboxOpts, SeccompMode};
use crate::ctl::SocketFile;
use crate::vmm_sandbox;

/// Who removes the sockets skvm bound (the control socket, a console's)
/// when the VMM ends.
pub(super) enum Removal<'a> {
    /// No socket.
    Nothing,
    /// The spawner, which can (it is the user that bound them).
    Spawner(&'a [SocketFile]),
    /// A remover process that kept skvm's user (root, where skvm started as
    /// root) for that alone: the spawner closes its end of the pipe and
    /// waits for it.
    Remover(OwnedFd, libc::pid_t),
}

impl Removal<'_> {
    /// Removes the sockets, directly or through the remover, before the
    /// spawner exits (the VMM waits for the spawner, so they are gone when
    /// skvm's exit is seen).
    pub(super) fn finish(self) {
        match self {
            Self::Nothing => {}
            Self::Spawner(sockets) => sockets.iter().for_each(SocketFile::remove),
            Self::Remover(pipe, pid) => {
                drop(pipe);
                // SAFETY: waits for our own child (ECHILD if an earlier
                // exit report reaped it).
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            }
        }
    }
}

/// Takes the spawner's privileges, unless `sandbox` is off (`--sandbox
/// off`, the VMM keeps its own too) or unconfined (`skvm drive
/// --unconfined`, whose devices must run without any filter):
///
/// - started as root, it becomes the VM's unprivileged user
///   ([`sandbox::jail::outside_ids`], which device namespaces map to), so a
///   compromised spawner is no root process; only the writing of device id
///   maps needed root, and as that same user it may write them. A host
///   that gives user namespaces to root only keeps it root (with a
///   warning);
/// - the sockets get a remover process ([`start_remover`]): the
///   spawner's filter has no unlink, and its user may not be allowed to
///   remove what root bound;
/// - its allowlist (`vmm_sandbox::spawner_policy`), with `--seccomp`'s
///   action, which its device processes inherit and keep under their own.
pub(super) fn confine_spawner<'a>(
    vmm: libc::pid_t,
    sandbox: &SandboxOpts,
    sockets: &'a [SocketFile],
) -> Result<Removal<'a>> {
    let mut removal = if sockets.is_empty() {
        Removal::Nothing
    } else {
        Removal::Spawner(sockets)
    };
    let Some(mode) = sandbox.helper_filter() else {
        return Ok(removal);
    };
    vmm_sandbox::report_as_spawner();
    // The spawner's filter has no unlink; and as the VM's user the spawner
    // may not be allowed to remove what root bound.
    if !sockets.is_empty() {
        let (pipe, pid) =
            start_remover(sockets, mode).context("cannot start the socket remover")?;
        removal = Removal::Remover(pipe, pid);
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let (uid, gid) = sandbox::jail::outside_ids();
        if sandbox::jail::unprivileged_user_namespaces(uid, gid) {
            // SAFETY: the spawner has a single thread.
            unsafe { sandbox::jail::drop_root_keeping_bounding(uid, gid) }
                .with_context(|| format!("cannot become {uid}:{gid}"))?;
            // Changing ids cleared the parent-death signal.
            sandbox::process::die_with_parent(vmm).context("the VMM is gone")?;
        } else {
            crate::log::warn(&format!(
                "the spawner stays root: this host lets only root create user namespaces,                  and device processes need one (user {uid} could not)"
            ));
        }
    }
    let prog = vmm_sandbox::spawner_policy()
        .compile(vmm_sandbox::violation(mode))
        .context("cannot build the spawner's filter")?;
    vmm_sandbox::install_on_this_thread(&prog).context("cannot install the spawner's filter")?;
    Ok(removal)
}

/// Forks the remover of `sockets`: a process that keeps
/// skvm's user (root, where it started as root) for one unlink and holds
/// nothing but the read end of a pipe whose
/// write end the spawner keeps. At end of file (the spawner exited, however
/// it ended) it removes each socket whose path still names it, and exits.
/// Not dumpable, under its own allowlist (`vmm_sandbox::remover_policy`).
fn start_remover(sockets: &[SocketFile], mode: SeccompMode) -> Result<(OwnedFd, libc::pid_t)> {
    let prog = vmm_sandbox::remover_policy()
        .compile(vmm_sandbox::violation(mode))
        .context("cannot build the remover's filter")?;
    let (rd, wr) = sandbox::process::pipe()?;
    // SAFETY: the spawner has a single thread; the child only makes
    // syscalls and exits.
    let pid = unsafe { sandbox::jail::clone_into_namespaces(0) }?;
    if pid > 0 {
        return Ok((wr, pid));
    }
    drop(wr);
    sandbox::process::set_name("skvm-remover");
    let ready = sandbox::process::close_fds_except(&[2, rd.as_raw_fd()]).is_ok()
        // SAFETY: prctl with integer arguments.
        && unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } == 0
        && vmm_sandbox::install_on_this_thread(&prog).is_ok();
    if !ready {
        // SAFETY: ends the child without running the spawner's code.
        unsafe { libc::_exit(1) };
    }
    let mut byte = 0u8;
    loop {
        // SAFETY: reads one byte into a valid buffer.
        let n = unsafe { libc::read(rd.as_raw_fd(), std::ptr::from_mut(&mut byte).cast(), 1) };
        if n == 0 || (n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted) {
            break;
        }
    }
    sockets.iter().for_each(SocketFile::remove);
    // SAFETY: as above.
    unsafe { libc::_exit(0) }
}
