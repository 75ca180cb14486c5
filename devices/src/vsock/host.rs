//! The host side of vsock streams: non-blocking reads and writes on the
//! unix sockets the device holds, and the connector's protocol.
//!
//! The device may not open a path or create a socket. Guest connections to
//! the host reach it as connected fds from the connector, a process skvm
//! forks before the VMM confines itself: the device writes a [`Request`]
//! (an id and the host port) on its end of a SOCK_SEQPACKET pair, and the
//! connector answers each request, in order, with a [`Reply`] carrying the
//! connected socket (SCM_RIGHTS) or the errno of the failed connect.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use crate::hostio::errno;

/// Length of a request: id, port.
pub const REQUEST_LEN: usize = 8;
/// Length of a reply: id, port, errno.
pub const REPLY_LEN: usize = 12;

/// The device asks the connector for a connection to host port `port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Echoed in the reply.
    pub id: u32,
    /// The host port: the connector connects to `PATH_<port>`.
    pub port: u32,
}

/// The connector's answer to a [`Request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// The request's id.
    pub id: u32,
    /// The request's port.
    pub port: u32,
    /// 0 with a connected fd, else why the connect failed.
    pub errno: i32,
}

fn le32(b: &[u8], at: usize) -> Option<[u8; 4]> {
    b.get(at..at + 4)?.try_into().ok()
}

impl Request {
    /// The wire form.
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[..4].copy_from_slice(&self.id.to_le_bytes());
        b[4..].copy_from_slice(&self.port.to_le_bytes());
        b
    }

    /// A request from exactly [`REQUEST_LEN`] bytes.
    pub fn decode(b: &[u8]) -> Option<Self> {
        (b.len() == REQUEST_LEN).then_some(())?;
        Some(Self {
            id: u32::from_le_bytes(le32(b, 0)?),
            port: u32::from_le_bytes(le32(b, 4)?),
        })
    }
}

impl Reply {
    /// The wire form.
    pub fn encode(&self) -> [u8; REPLY_LEN] {
        let mut b = [0u8; REPLY_LEN];
        b[..4].copy_from_slice(&self.id.to_le_bytes());
        b[4..8].copy_from_slice(&self.port.to_le_bytes());
        b[8..].copy_from_slice(&self.errno.to_le_bytes());
        b
    }

    /// A reply from exactly [`REPLY_LEN`] bytes.
    pub fn decode(b: &[u8]) -> Option<Self> {
        (b.len() == REPLY_LEN).then_some(())?;
        Some(Self {
            id: u32::from_le_bytes(le32(b, 0)?),
            port: u32::from_le_bytes(le32(b, 4)?),
            errno: i32::from_le_bytes(le32(b, 8)?),
        })
    }
}

/// Ends the host side's input: the peer reads end of file.
pub fn shut_write(fd: RawFd) {
    // SAFETY: shutdown on an fd we hold; failure changes nothing we rely on.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
}

/// Sends `req` to the connector; false if it cannot take it now.
pub fn send_request(connector: RawFd, req: Request) -> bool {
    let b = req.encode();
    // SAFETY: writes from a valid buffer; a seqpacket write is all or
    // nothing.
    let n = unsafe { libc::write(connector, b.as_ptr().cast(), b.len()) };
    usize::try_from(n) == Ok(b.len())
}

/// What [`recv_reply`] got.
#[derive(Debug)]
pub enum Received {
    /// A reply, with the fd it carried (the first, if several came).
    Reply(Reply, Option<OwnedFd>),
    /// A message that is not a reply (dropped, with any fds).
    Garbage,
    /// Nothing now.
    Nothing,
    /// The connector is gone.
    Closed,
}

/// Most fds one reply may carry; more are cut off (and closed by the
/// kernel: MSG_CTRUNC).
const MAX_REPLY_FDS: usize = 4;

/// Receives one message from the connector without blocking.
pub fn recv_reply(connector: RawFd) -> Received {
    let mut data = [0u8; REPLY_LEN + 1];
    // Room for MAX_REPLY_FDS fds, aligned for cmsghdr.
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; zero is a valid start.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    let n = loop {
        // SAFETY: msg points at buffers that live across the call.
        let n = unsafe {
            libc::recvmsg(
                connector,
                &mut msg,
                libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
            )
        };
        if n >= 0 || errno() != Some(libc::EINTR) {
            break n;
        }
    };
    let Ok(n) = usize::try_from(n) else {
        return match errno() {
            Some(libc::EAGAIN) => Received::Nothing,
            _ => Received::Closed,
        };
    };
    if n == 0 {
        return Received::Closed;
    }
    let mut fds = Vec::new();
    // SAFETY: the CMSG_* walk stays within msg_control as the kernel
    // filled it (msg_controllen was updated by recvmsg).
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let bytes = ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                let p = libc::CMSG_DATA(c).cast::<RawFd>();
                for i in 0..(bytes / std::mem::size_of::<RawFd>()).min(MAX_REPLY_FDS) {
                    fds.push(OwnedFd::from_raw_fd(p.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    match data.get(..n).and_then(Reply::decode) {
        Some(r) => Received::Reply(r, fds.into_iter().next()),
        None => Received::Garbage,
    }
}

/// Polls `fds` once without waiting; their `revents` say what is ready.
pub fn poll_now(fds: &mut [libc::pollfd]) {
    if fds.is_empty() {
        return;
    }
    let n = libc::nfds_t::try_from(fds.len()).unwrap_or(0);
    // SAFETY: fds is a valid array of n pollfds.
    if unsafe { libc::poll(fds.as_mut_ptr(), n, 0) } < 0 {
        for p in fds {
            p.revents = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip_and_other_lengths_are_refused() {
        let r = Request { id: 7, port: 1234 };
        assert_eq!(Request::decode(&r.encode()), Some(r));
        assert!(Request::decode(&r.encode()[1..]).is_none());
        let a = Reply {
            id: 7,
            port: 1234,
            errno: libc::ECONNREFUSED,
        };
        assert_eq!(Reply::decode(&a.encode()), Some(a));
        assert!(Reply::decode(&[0; REPLY_LEN + 1]).is_none());
    }
}
