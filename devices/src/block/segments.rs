//! Guest buffers of a request: the readable or writable bytes of a chain as
//! a list of segments, split, read, written, or turned into host iovecs.
//! Every access goes through vm-memory's checked accessors.

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend as _};

use super::{io_err, Fail};
use crate::virtio::GuestMemory;

/// One guest buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Seg {
    pub(super) addr: GuestAddress,
    pub(super) len: usize,
}

/// The first `n` bytes of `segs` and what is left after them.
pub(super) fn split_at(segs: &[Seg], mut n: usize) -> (Vec<Seg>, Vec<Seg>) {
    let mut head = Vec::new();
    let mut tail = Vec::new();
    for s in segs {
        if n == 0 {
            tail.push(*s);
        } else if s.len <= n {
            head.push(*s);
            n -= s.len;
        } else {
            head.push(Seg {
                addr: s.addr,
                len: n,
            });
            // The descriptor's range was checked not to wrap.
            tail.push(Seg {
                addr: s.addr.unchecked_add(n as u64),
                len: s.len - n,
            });
            n = 0;
        }
    }
    (head, tail)
}

pub(super) fn total(segs: &[Seg]) -> usize {
    segs.iter().map(|s| s.len).sum()
}

/// Reads `buf.len()` bytes from the start of `segs`.
pub(super) fn gather(mem: &GuestMemory, segs: &[Seg], buf: &mut [u8]) -> Result<(), Fail> {
    let mut done = 0;
    for s in segs {
        if done == buf.len() {
            break;
        }
        let n = s.len.min(buf.len() - done);
        let dst = buf.get_mut(done..done + n).ok_or(Fail::IoErr)?;
        mem.read_slice(dst, s.addr).map_err(io_err)?;
        done += n;
    }
    if done == buf.len() {
        Ok(())
    } else {
        Err(Fail::IoErr)
    }
}

/// Writes `data` to the start of `segs`; returns how many bytes fit.
pub(super) fn scatter(mem: &GuestMemory, segs: &[Seg], data: &[u8]) -> Result<usize, Fail> {
    let mut done = 0;
    for s in segs {
        if done == data.len() {
            break;
        }
        let n = s.len.min(data.len() - done);
        let src = data.get(done..done + n).ok_or(Fail::IoErr)?;
        mem.write_slice(src, s.addr).map_err(io_err)?;
        done += n;
    }
    Ok(done)
}

/// Host iovecs for `segs`; fails if any byte is outside guest memory. The
/// pointers stay valid while `mem` is mapped (for the request's duration).
pub(super) fn iovecs(mem: &GuestMemory, segs: &[Seg]) -> Result<Vec<libc::iovec>, Fail> {
    let mut v = Vec::with_capacity(segs.len());
    for s in segs {
        let slice = mem.get_slice(s.addr, s.len).map_err(io_err)?;
        let ptr = slice.ptr_guard_mut().as_ptr();
        v.push(libc::iovec {
            iov_base: ptr.cast(),
            iov_len: s.len,
        });
    }
    Ok(v)
}
