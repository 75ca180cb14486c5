//! One packet with file descriptors over a `SOCK_SEQPACKET` socket:
//! `sendmsg`/`recvmsg` with `SCM_RIGHTS`, capped at [`MAX_FDS`] a packet.
//!
//! Received fds become [`OwnedFd`]s before anything else looks at them, so
//! every error path closes them. A packet whose payload or fds did not fit
//! (`MSG_TRUNC`, `MSG_CTRUNC`) is an error.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::{wait, IpcError, MAX_FDS};

/// Control-message space for `n` fds, as CMSG_SPACE computes it.
fn cmsg_space(n: usize) -> usize {
    let bytes = u32::try_from(n * std::mem::size_of::<RawFd>()).unwrap_or(u32::MAX);
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    usize::try_from(unsafe { libc::CMSG_SPACE(bytes) }).unwrap_or(usize::MAX)
}

/// Control-message buffer, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuf([u8; 128]);

/// Sends `bytes` and `fds` as one packet.
pub fn send(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), IpcError> {
    if fds.len() > MAX_FDS {
        return Err(IpcError::Limit {
            what: "fds",
            got: fds.len(),
            max: MAX_FDS,
        });
    }
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    let mut cbuf = CmsgBuf([0; 128]);
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let space = cmsg_space(fds.len());
        msg.msg_control = cbuf.0.as_mut_ptr().cast();
        msg.msg_controllen = space;
        let data_len = u32::try_from(std::mem::size_of_val(fds)).unwrap_or(u32::MAX);
        // SAFETY: the buffer holds CMSG_SPACE(MAX_FDS fds) < 128 bytes and is
        // aligned; CMSG_FIRSTHDR points into it; we write one header and
        // `fds.len()` fds, which fit.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = usize::try_from(libc::CMSG_LEN(data_len)).unwrap_or(0);
            let data = libc::CMSG_DATA(c).cast::<RawFd>();
            for (i, fd) in fds.iter().enumerate() {
                data.add(i).write_unaligned(fd.as_raw_fd());
            }
        }
    }
    loop {
        // SAFETY: msg points at live buffers for the duration of the call.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EPIPE | libc::ECONNRESET | libc::ECONNREFUSED) => {
                return Err(IpcError::Closed)
            }
            _ => return Err(IpcError::Io(e)),
        }
    }
}

/// Waits until `sock` is readable; `None` waits forever. A signal does not
/// end the wait: it goes on for what is left of the timeout.
fn wait_readable(sock: BorrowedFd<'_>, timeout: Option<Duration>) -> Result<(), IpcError> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        match wait::wait_one(sock.as_raw_fd(), left) {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => return Err(IpcError::Timeout),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(IpcError::Io(e)),
        }
    }
}

/// Receives one packet into `buf`, with at most `max_fds` fds (at most
/// [`MAX_FDS`]); returns the packet length and the fds. `timeout` of
/// `None` waits forever; `Some(Duration::ZERO)` only looks.
pub fn recv(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
    timeout: Option<Duration>,
) -> Result<(usize, Vec<OwnedFd>), IpcError> {
    wait_readable(sock, timeout)?;
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = CmsgBuf([0; 128]);
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    // Room for MAX_FDS whatever the caller expects: extra fds are received
    // (and closed) rather than silently dropped by the kernel.
    msg.msg_controllen = cmsg_space(MAX_FDS);
    let n = loop {
        // SAFETY: msg points at live buffers for the duration of the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Err(IpcError::Timeout),
            Some(libc::ECONNRESET) => return Err(IpcError::Closed),
            _ => return Err(IpcError::Io(e)),
        }
    };
    let fds = take_fds(&msg);
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(IpcError::Limit {
            what: "fds",
            got: MAX_FDS + 1,
            max: MAX_FDS,
        });
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        return Err(IpcError::TooLong(buf.len() + 1));
    }
    let n = usize::try_from(n).unwrap_or(0);
    if n == 0 && fds.is_empty() {
        // End of file only if the peer hung up: a SOCK_SEQPACKET peer can
        // also send a datagram of no bytes, which a hostile one would use
        // to be taken for gone while it runs on.
        let hungup = wait::wait_one(sock.as_raw_fd(), Some(Duration::ZERO))
            .ok()
            .flatten()
            .is_some_and(|e| e.hungup);
        return Err(if hungup {
            IpcError::Closed
        } else {
            IpcError::Empty
        });
    }
    if fds.len() > max_fds.min(MAX_FDS) {
        return Err(IpcError::FdCount {
            got: fds.len(),
            expected: max_fds,
        });
    }
    Ok((n, fds))
}

/// Owns every fd in the control messages of `msg`.
fn take_fds(msg: &libc::msghdr) -> Vec<OwnedFd> {
    let mut fds = Vec::new();
    // SAFETY: walks the control messages the kernel wrote into the buffer
    // `msg` describes, with the CMSG_* helpers; each SCM_RIGHTS payload holds
    // (cmsg_len - CMSG_LEN(0)) / sizeof(int) fds that are now ours.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let header = usize::try_from(libc::CMSG_LEN(0)).unwrap_or(usize::MAX);
                let payload = (*c).cmsg_len.saturating_sub(header);
                let count = payload / std::mem::size_of::<RawFd>();
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                for i in 0..count {
                    let fd = data.add(i).read_unaligned();
                    if fd >= 0 {
                        fds.push(OwnedFd::from_raw_fd(fd));
                    }
                }
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    fds
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn pair() -> (OwnedFd, OwnedFd) {
        crate::seqpacket_pair().unwrap()
    }

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut p = [0; 2];
        // SAFETY: pipe writes two new fds.
        assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
        // SAFETY: both are new and ours.
        unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) }
    }

    fn is_open(fd: RawFd) -> bool {
        // SAFETY: F_GETFD only queries.
        unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
    }

    #[test]
    fn fds_arrive_and_work() {
        let (a, b) = pair();
        let (r, w) = pipe();
        send(a.as_fd(), b"hi", &[w.as_fd()]).unwrap();
        drop(w);
        let mut buf = [0u8; 16];
        let (n, fds) = recv(b.as_fd(), &mut buf, 1, Some(Duration::from_secs(1))).unwrap();
        assert_eq!(&buf[..n], b"hi");
        assert_eq!(fds.len(), 1);
        let w2 = std::fs::File::from(fds.into_iter().next().unwrap());
        use std::io::Write;
        (&w2).write_all(b"x").unwrap();
        let mut got = [0u8; 1];
        use std::io::Read;
        std::fs::File::from(r).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"x");
    }

    #[test]
    fn too_many_fds_are_refused_by_send() {
        let (a, _b) = pair();
        let (_r, w) = pipe();
        let many: Vec<BorrowedFd<'_>> = (0..=MAX_FDS).map(|_| w.as_fd()).collect();
        assert!(matches!(
            send(a.as_fd(), b"x", &many),
            Err(IpcError::Limit { .. })
        ));
    }

    #[test]
    fn unexpected_fds_are_closed() {
        let (a, b) = pair();
        let (_r, w) = pipe();
        send(a.as_fd(), b"x", &[w.as_fd(), w.as_fd()]).unwrap();
        let before: Vec<RawFd> = (0..256).filter(|fd| is_open(*fd)).collect();
        let mut buf = [0u8; 8];
        let r = recv(b.as_fd(), &mut buf, 1, Some(Duration::from_secs(1)));
        assert!(matches!(r, Err(IpcError::FdCount { got: 2, .. })));
        let after: Vec<RawFd> = (0..256).filter(|fd| is_open(*fd)).collect();
        assert_eq!(before, after);
    }

    #[test]
    fn oversized_packets_are_rejected() {
        let (a, b) = pair();
        send(a.as_fd(), &[7u8; 64], &[]).unwrap();
        let mut buf = [0u8; 16];
        assert!(matches!(
            recv(b.as_fd(), &mut buf, 0, Some(Duration::from_secs(1))),
            Err(IpcError::TooLong(_))
        ));
    }

    #[test]
    fn timeout_comes_in_about_the_time_asked() {
        let (_a, b) = pair();
        let start = Instant::now();
        let mut buf = [0u8; 8];
        let r = recv(b.as_fd(), &mut buf, 0, Some(Duration::from_millis(100)));
        assert!(matches!(r, Err(IpcError::Timeout)));
        let t = start.elapsed();
        assert!(
            t >= Duration::from_millis(100) && t < Duration::from_secs(2),
            "{t:?}"
        );
    }

    #[test]
    fn an_empty_message_is_not_end_of_file() {
        let (a, b) = pair();
        // SAFETY: sends a datagram of no bytes on a socket we own.
        let rc = unsafe { libc::send(a.as_raw_fd(), std::ptr::null(), 0, 0) };
        assert_eq!(rc, 0);
        let mut buf = [0u8; 8];
        let timeout = Some(Duration::from_secs(1));
        assert!(matches!(
            recv(b.as_fd(), &mut buf, 0, timeout),
            Err(IpcError::Empty)
        ));
        // The connection is still there; end of file comes with the close.
        send(a.as_fd(), b"x", &[]).unwrap();
        assert_eq!(recv(b.as_fd(), &mut buf, 0, timeout).unwrap().0, 1);
        drop(a);
        assert!(matches!(
            recv(b.as_fd(), &mut buf, 0, timeout),
            Err(IpcError::Closed)
        ));
    }

    #[test]
    fn peer_close_is_reported() {
        let (a, b) = pair();
        drop(a);
        let mut buf = [0u8; 8];
        assert!(matches!(
            recv(b.as_fd(), &mut buf, 0, Some(Duration::from_secs(1))),
            Err(IpcError::Closed)
        ));
        let (a, b) = pair();
        drop(b);
        assert!(matches!(send(a.as_fd(), b"x", &[]), Err(IpcError::Closed)));
    }
}
