//! The vsock connector: the process that makes guest connections to the
//! host, so that neither the device nor the VMM needs a socket-creating
//! call or a view of the host's files.
//!
//! skvm forks it while the VMM still has one thread and the host's file
//! system, before the VMM confines itself. It keeps skvm's user (as the
//! socket remover does: the sockets guest connections reach are usually
//! that user's), works in the directory of `--vsock socket=PATH` (its
//! working directory, opened before anything is confined) and holds
//! nothing else but its end of a SOCK_SEQPACKET pair, as fd 3; the device
//! holds the other. For each request (an id and a port, see
//! `devices::vsock::host`) it connects a new non-blocking unix stream
//! socket to the name `NAME_<port>` in that directory (NAME being PATH's
//! file name: the device cannot name any other file), and answers with the
//! socket or the errno. Its allowlist has seven calls
//! (`vmm_sandbox::CONNECTOR`), with no open, no exec and no file system
//! change; it is not dumpable and dies with the VMM.
//!
//! Why not the spawner: it leaves root for the VM's user, which may not
//! connect to sockets the user who started skvm made, and its allowlist
//! has no socket call at all. Why not the VMM: the guest talks to it
//! directly, and it gives up the host's file system before the guest runs.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use devices::vsock::host::{Reply, Request, REQUEST_LEN};

use crate::device_host::spawner::SingleThreaded;
use crate::device_host::SeccompMode;
use crate::vmm_sandbox::{self, CONNECTOR_FD};

/// Longest socket file name the connector can append `_<port>` to
/// (`sun_path` holds 107 bytes and a terminating NUL; a port takes up to
/// 10 digits and the underscore one byte).
pub const MAX_NAME: usize = 107 - 11;

/// Forks the connector for sockets named `NAME_<port>` in `dir`, confined
/// with `mode`'s action (no filter when `mode` is `None`: `--sandbox
/// off`); returns the device's end of its channel (non-blocking).
pub fn start(
    single: &SingleThreaded,
    dir: &Path,
    name: &OsStr,
    mode: Option<SeccompMode>,
) -> Result<OwnedFd> {
    let _ = single;
    let name = name.as_bytes();
    if name.is_empty() || name.len() > MAX_NAME {
        bail!("the socket's file name must be 1 to {MAX_NAME} bytes");
    }
    let dirfd = open_dir(dir).with_context(|| format!("cannot open {}", dir.display()))?;
    let prog = mode
        .map(|m| {
            vmm_sandbox::connector_policy()
                .compile(vmm_sandbox::violation(m))
                .context("cannot build the vsock connector's filter")
        })
        .transpose()?;
    let (device_end, ours) = channel()?;
    // SAFETY: getpid cannot fail.
    let vmm = unsafe { libc::getpid() };
    // SAFETY: `single` proves this process has one thread, so the child is
    // a consistent copy; it runs `serve`, which never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!(
            "cannot fork the vsock connector: {}",
            std::io::Error::last_os_error()
        );
    }
    if pid == 0 {
        drop(device_end);
        let ready = setup(vmm, &ours, &dirfd)
            && prog
                .as_ref()
                .is_none_or(|p| vmm_sandbox::install_on_this_thread(p).is_ok());
        if !ready {
            // SAFETY: ends the child without running the VMM's code.
            unsafe { libc::_exit(1) };
        }
        serve(name);
    }
    Ok(device_end)
}

/// The child's setup: named, dies with the VMM, not dumpable, in `dir`,
/// with nothing open but stderr and its channel as fd 3.
fn setup(vmm: libc::pid_t, channel: &OwnedFd, dir: &OwnedFd) -> bool {
    sandbox::process::set_name("skvm-connector");
    sandbox::process::die_with_parent(vmm).is_ok()
        // SAFETY: prctl with integer arguments.
        && unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } == 0
        // SAFETY: fchdir on a directory fd we hold.
        && unsafe { libc::fchdir(dir.as_raw_fd()) } == 0
        // SAFETY: dup2 onto fd 3, which the next call keeps.
        && unsafe { libc::dup2(channel.as_raw_fd(), CONNECTOR_FD) } == CONNECTOR_FD
        && sandbox::process::close_fds_except(&[2, CONNECTOR_FD]).is_ok()
}

/// Answers requests on fd 3 until the device's end is gone (the VMM
/// holds it for the VM's life).
fn serve(name: &[u8]) -> ! {
    loop {
        let mut b = [0u8; REQUEST_LEN + 1];
        // SAFETY: reads into a valid buffer.
        let n = unsafe { libc::read(CONNECTOR_FD, b.as_mut_ptr().cast(), b.len()) };
        let Ok(n) = usize::try_from(n) else {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break;
        };
        if n == 0 {
            break;
        }
        // Not a request: ignored (the device gets no answer).
        let Some(req) = b.get(..n).and_then(Request::decode) else {
            continue;
        };
        let (errno, fd) = match connect(name, req.port) {
            Ok(fd) => (0, Some(fd)),
            Err(e) => (e, None),
        };
        let reply = Reply {
            id: req.id,
            port: req.port,
            errno,
        };
        send(&reply.encode(), fd.as_ref());
    }
    // SAFETY: ends the connector.
    unsafe { libc::_exit(0) }
}

/// A new socket connected to `NAME_<port>` in the working directory, or
/// the errno of the failure. No allocation: the connector's filter has no
/// memory calls.
fn connect(name: &[u8], port: u32) -> std::result::Result<OwnedFd, i32> {
    // SAFETY: sockaddr_un is plain data; zero is a valid start.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX.try_into().unwrap_or_default();
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    let mut p = port;
    loop {
        at -= 1;
        digits[at] = b'0' + (p % 10) as u8;
        p /= 10;
        if p == 0 {
            break;
        }
    }
    let path = name
        .iter()
        .chain(b"_")
        .chain(digits.get(at..).unwrap_or_default());
    let mut len = 0;
    for (dst, &src) in addr.sun_path.iter_mut().zip(path) {
        *dst = src.cast_signed();
        len += 1;
    }
    // One byte for the NUL, which the zeroed address already has.
    if len >= addr.sun_path.len() {
        return Err(libc::ENAMETOOLONG);
    }
    let errno = || {
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    };
    // SAFETY: socket with integer arguments.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: a new fd this function owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let addr_len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + len + 1;
    // SAFETY: connect with an address that lives across the call.
    let r = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            std::ptr::from_ref(&addr).cast(),
            libc::socklen_t::try_from(addr_len).unwrap_or(0),
        )
    };
    if r != 0 {
        return Err(errno());
    }
    Ok(sock)
}

/// Sends `bytes` on fd 3, with `fd` if there is one (`ipc::fdpass`
/// builds the message on the stack: the connector's filter has no memory
/// calls). A failure (the device's end is full or gone) leaves the device
/// without this answer; it resets the stream when a later answer overtakes
/// it.
fn send(bytes: &[u8], fd: Option<&OwnedFd>) {
    // SAFETY: fd 3 is the connector's channel for its whole life.
    let channel = unsafe { BorrowedFd::borrow_raw(CONNECTOR_FD) };
    let fds = fd.map(AsFd::as_fd);
    let _ = ipc::fdpass::send(channel, bytes, fds.as_slice());
}

fn open_dir(dir: &Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)?;
    Ok(f.into())
}

/// The channel: (the device's end, non-blocking; the connector's,
/// blocking).
fn channel() -> Result<(OwnedFd, OwnedFd)> {
    let (a, b) = ipc::seqpacket_pair().context("cannot create the vsock connector's channel")?;
    // SAFETY: fcntl on an fd we own.
    let set = unsafe {
        let flags = libc::fcntl(a.as_raw_fd(), libc::F_GETFL);
        flags >= 0 && libc::fcntl(a.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
    };
    if !set {
        bail!(
            "cannot make the vsock connector's channel non-blocking: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixListener;

    #[test]
    fn names_are_port_suffixed_and_too_long_ones_refused() {
        let dir = std::env::temp_dir().join(format!("skvm-conn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let l = UnixListener::bind(dir.join("v.sock_4294967295")).unwrap();
        // An absolute name works as the relative one does in the
        // connector's working directory.
        let name = dir.join("v.sock");
        let name = name.as_os_str().as_bytes();
        let fd = connect(name, u32::MAX);
        let refused = connect(name, 5).err();
        let long = connect(&[b'x'; 106], 5).err();
        let fd = fd.unwrap();
        let (mut peer, _) = l.accept().unwrap();
        drop(fd);
        let mut b = Vec::new();
        peer.read_to_end(&mut b).unwrap();
        assert_eq!(refused, Some(libc::ENOENT));
        assert_eq!(long, Some(libc::ENAMETOOLONG));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
