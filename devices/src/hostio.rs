//! Non-blocking calls on the host fds devices serve (a console's pty or
//! client, vsock's streams and listener): one `read`, as much of a
//! `write` as the fd takes now, and `accept` on a listening socket. None
//! waits; each says what happened in an [`Io`] (or an `Option`). Also
//! `fallocate`, which blk and virtio-fs share, and [`IoVecs`], the iovecs
//! blk and net keep from one request to the next.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// A request's host iovecs, kept by a device from one request to the next
/// so that a request allocates nothing. Reached only through
/// [`IoVecs::with`], which hands out an empty vector and empties it again
/// afterwards, whatever the request did with it.
#[derive(Debug, Default)]
pub(crate) struct IoVecs(Vec<libc::iovec>);

impl IoVecs {
    /// Runs `f` on the (empty) vector; it is empty again after.
    pub(crate) fn with<R>(&mut self, f: impl FnOnce(&mut Vec<libc::iovec>) -> R) -> R {
        self.0.clear();
        let r = f(&mut self.0);
        self.0.clear();
        r
    }
}

// SAFETY: the pointers an `IoVecs` holds live only within one call of
// `with`, on the thread that made it; a device moved to another thread
// between requests moves no pointer.
unsafe impl Send for IoVecs {}

/// What a non-blocking call on a host fd did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    /// This many bytes moved (never 0 for a read).
    Done(usize),
    /// Nothing now (EAGAIN).
    Later,
    /// End of file (reads only).
    End,
    /// The fd failed (a peer gone: EPIPE, ECONNRESET; a pty hung up).
    Failed,
}

/// The calling thread's errno after a failed call.
pub(crate) fn errno() -> Option<i32> {
    std::io::Error::last_os_error().raw_os_error()
}

/// One non-blocking `read(2)` into `buf`.
pub fn read(fd: RawFd, buf: &mut [u8]) -> Io {
    loop {
        // SAFETY: reads at most buf.len() bytes into buf.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        match usize::try_from(n) {
            Ok(0) if !buf.is_empty() => return Io::End,
            Ok(n) => return Io::Done(n),
            Err(_) => match errno() {
                Some(libc::EINTR) => {}
                Some(libc::EAGAIN) => return Io::Later,
                _ => return Io::Failed,
            },
        }
    }
}

/// Writes as much of `buf` as `fd` takes now: `Done(n)` (n may be 0 when
/// it is full), or `Failed`.
pub fn write(fd: RawFd, buf: &[u8]) -> Io {
    let mut done = 0;
    while let Some(rest) = buf.get(done..).filter(|r| !r.is_empty()) {
        // SAFETY: writes from a valid buffer of the given length.
        let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
        match usize::try_from(n) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(_) => match errno() {
                Some(libc::EINTR) => {}
                Some(libc::EAGAIN) => break,
                _ => return Io::Failed,
            },
        }
    }
    Io::Done(done)
}

/// Takes a client waiting on `listener` (non-blocking, close-on-exec);
/// `None` when there is none.
pub fn accept(listener: RawFd) -> Option<OwnedFd> {
    loop {
        // SAFETY: accept4 with null address pointers returns a new fd or -1.
        let fd = unsafe {
            libc::accept4(
                listener,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: a new fd this function owns.
            return Some(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        if errno() != Some(libc::EINTR) {
            return None;
        }
    }
}

/// `fallocate(2)` on `fd` (blk's discards and write-zeroes, virtio-fs's
/// guest fallocate); offsets past `off_t` are EINVAL.
pub(crate) fn fallocate(
    fd: BorrowedFd<'_>,
    mode: libc::c_int,
    offset: u64,
    len: u64,
) -> std::io::Result<()> {
    let einval = || std::io::Error::from_raw_os_error(libc::EINVAL);
    let off = libc::off_t::try_from(offset).map_err(|_| einval())?;
    let len = libc::off_t::try_from(len).map_err(|_| einval())?;
    // SAFETY: fallocate has no memory effects.
    if unsafe { libc::fallocate(fd.as_raw_fd(), mode, off, len) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
