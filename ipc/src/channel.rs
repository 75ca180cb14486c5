//! A control channel: one end of a `SOCK_SEQPACKET` socket pair carrying
//! [`Request`]s one way and [`Reply`]s the other.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::wire::{Reply, Request};
use crate::{fdpass, IpcError, MAX_FDS, MAX_MESSAGE};

/// A connected `SOCK_SEQPACKET` pair, both ends close-on-exec (the
/// channels of devices, the spawner and vsock's connector).
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two new fds into the array.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds are new and owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// One end of a control socket.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    /// A connected pair (close-on-exec).
    pub fn pair() -> Result<(Channel, Channel), IpcError> {
        let (a, b) = seqpacket_pair().map_err(IpcError::Io)?;
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    /// Wraps a connected SOCK_SEQPACKET socket.
    pub fn from_fd(fd: OwnedFd) -> Channel {
        Channel { fd }
    }

    /// Sends a request with exactly the fds it needs.
    pub fn send_request(&self, r: &Request, fds: &[BorrowedFd<'_>]) -> Result<(), IpcError> {
        if fds.len() != r.fd_count() {
            return Err(IpcError::FdCount {
                got: fds.len(),
                expected: r.fd_count(),
            });
        }
        fdpass::send(self.fd.as_fd(), &r.encode()?, fds)
    }

    /// Sends a reply (replies carry no fds).
    pub fn send_reply(&self, r: &Reply) -> Result<(), IpcError> {
        self.send_reply_with(r, &[])
    }

    /// Sends a reply with its fds (`Saved` with a bulk state).
    pub fn send_reply_with(&self, r: &Reply, fds: &[BorrowedFd<'_>]) -> Result<(), IpcError> {
        fdpass::send(self.fd.as_fd(), &r.encode()?, fds)
    }

    /// Receives a request and its fds, which must be exactly as many as it
    /// needs. `timeout` of `None` waits forever.
    pub fn recv_request(
        &self,
        timeout: Option<Duration>,
    ) -> Result<(Request, Vec<OwnedFd>), IpcError> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let (n, fds) = fdpass::recv(self.fd.as_fd(), &mut buf, MAX_FDS, timeout)?;
        let req = Request::decode(buf.get(..n).unwrap_or_default())?;
        if fds.len() != req.fd_count() {
            return Err(IpcError::FdCount {
                got: fds.len(),
                expected: req.fd_count(),
            });
        }
        Ok((req, fds))
    }

    /// Receives a reply; one that comes with fds is an error (the fds are
    /// closed).
    pub fn recv_reply(&self, timeout: Option<Duration>) -> Result<Reply, IpcError> {
        let (reply, _) = self.recv_reply_with(timeout)?;
        Ok(reply)
    }

    /// Receives a reply and its fds, which must be exactly as many as it
    /// says ([`Reply::fd_count`]).
    pub fn recv_reply_with(
        &self,
        timeout: Option<Duration>,
    ) -> Result<(Reply, Vec<OwnedFd>), IpcError> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let (n, fds) = fdpass::recv(self.fd.as_fd(), &mut buf, 1, timeout)?;
        let reply = Reply::decode(buf.get(..n).unwrap_or_default())?;
        if fds.len() != reply.fd_count() {
            return Err(IpcError::FdCount {
                expected: reply.fd_count(),
                got: fds.len(),
            });
        }
        Ok((reply, fds))
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Channel {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl From<Channel> for OwnedFd {
    fn from(c: Channel) -> OwnedFd {
        c.fd
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{MemRegion, QueueLayout};

    fn eventfd() -> OwnedFd {
        // SAFETY: eventfd returns a new fd or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: new and ours.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    fn activate() -> Request {
        Request::Activate {
            features: 1,
            regions: vec![MemRegion {
                guest_addr: 0,
                size: 4096,
                file_offset: 0,
            }],
            queues: vec![QueueLayout {
                index: 0,
                size: 16,
                desc: 0,
                avail: 256,
                used: 512,
            }],
        }
    }

    #[test]
    fn a_request_with_its_fds_arrives() {
        let (vmm, dev) = Channel::pair().unwrap();
        let fds: Vec<OwnedFd> = (0..4).map(|_| eventfd()).collect();
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
        vmm.send_request(&activate(), &borrowed).unwrap();
        let (req, got) = dev.recv_request(Some(Duration::from_secs(1))).unwrap();
        assert_eq!(req, activate());
        assert_eq!(got.len(), 4);
    }

    #[test]
    fn a_request_with_the_wrong_fd_count_is_not_sent() {
        let (vmm, _dev) = Channel::pair().unwrap();
        let e = eventfd();
        assert!(matches!(
            vmm.send_request(&activate(), &[e.as_fd()]),
            Err(IpcError::FdCount {
                got: 1,
                expected: 4
            })
        ));
    }

    #[test]
    fn a_request_arriving_with_the_wrong_fd_count_is_rejected() {
        let (vmm, dev) = Channel::pair().unwrap();
        let e = eventfd();
        // Forge a Reset carrying an fd.
        fdpass::send(vmm.as_fd(), &Request::Reset.encode().unwrap(), &[e.as_fd()]).unwrap();
        assert!(matches!(
            dev.recv_request(Some(Duration::from_secs(1))),
            Err(IpcError::FdCount {
                got: 1,
                expected: 0
            })
        ));
    }

    #[test]
    fn a_reply_with_fds_is_rejected() {
        let (vmm, dev) = Channel::pair().unwrap();
        let e = eventfd();
        fdpass::send(dev.as_fd(), &Reply::Ack.encode().unwrap(), &[e.as_fd()]).unwrap();
        assert!(matches!(
            vmm.recv_reply(Some(Duration::from_secs(1))),
            Err(IpcError::FdCount { .. })
        ));
    }

    #[test]
    fn replies_round_trip() {
        let (vmm, dev) = Channel::pair().unwrap();
        dev.send_reply(&Reply::NeedsReset {
            reason: "bad ring".into(),
        })
        .unwrap();
        assert_eq!(
            vmm.recv_reply(Some(Duration::from_secs(1))).unwrap(),
            Reply::NeedsReset {
                reason: "bad ring".into()
            }
        );
    }

    #[test]
    fn garbage_from_the_peer_is_an_error() {
        let (vmm, dev) = Channel::pair().unwrap();
        fdpass::send(dev.as_fd(), &[0xde, 0xad, 0xbe, 0xef], &[]).unwrap();
        assert!(vmm.recv_reply(Some(Duration::from_secs(1))).is_err());
    }
}
