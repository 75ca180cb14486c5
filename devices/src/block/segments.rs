//! Guest buffers of a request: the readable or writable bytes of a chain as
//! a list of segments, trimmed, read, written, or turned into host iovecs.
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

/// Takes the last byte off `segs` (the status byte of a request); its
/// address, or None if `segs` has no byte.
pub(super) fn pop_last_byte(segs: &mut Vec<Seg>) -> Option<GuestAddress> {
    let last = segs.last_mut()?;
    let len = last.len.checked_sub(1)?;
    // The descriptor's range was checked not to wrap.
    let at = last.addr.unchecked_add(len as u64);
    if len == 0 {
        segs.pop();
    } else {
        last.len = len;
    }
    Some(at)
}

/// Drops the first `n` bytes of `segs` (a request's header), in place.
pub(super) fn drop_front(segs: &mut Vec<Seg>, mut n: usize) {
    let mut whole = 0;
    for s in segs.iter_mut() {
        if n == 0 {
            break;
        }
        if s.len <= n {
            n -= s.len;
            whole += 1;
        } else {
            // The descriptor's range was checked not to wrap.
            s.addr = s.addr.unchecked_add(n as u64);
            s.len -= n;
            n = 0;
        }
    }
    segs.drain(..whole);
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

/// Host iovecs for `segs`, appended to `v`; fails if any byte is outside
/// guest memory. The pointers stay valid while `mem` is mapped (for the
/// request's duration).
pub(super) fn iovecs(
    mem: &GuestMemory,
    segs: &[Seg],
    v: &mut Vec<libc::iovec>,
) -> Result<(), Fail> {
    for s in segs {
        let slice = mem.get_slice(s.addr, s.len).map_err(io_err)?;
        let ptr = slice.ptr_guard_mut().as_ptr();
        v.push(libc::iovec {
            iov_base: ptr.cast(),
            iov_len: s.len,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(addr: u64, len: usize) -> Seg {
        Seg {
            addr: GuestAddress(addr),
            len,
        }
    }

    #[test]
    fn the_status_byte_comes_off_the_end_and_the_header_off_the_front() {
        let mut w = vec![seg(0x1000, 512), seg(0x3000, 1)];
        assert_eq!(pop_last_byte(&mut w), Some(GuestAddress(0x3000)));
        assert_eq!(w, [seg(0x1000, 512)]);
        assert_eq!(pop_last_byte(&mut w), Some(GuestAddress(0x11ff)));
        assert_eq!(w, [seg(0x1000, 511)]);
        assert_eq!(pop_last_byte(&mut Vec::new()), None);

        let mut r = vec![seg(0x100, 10), seg(0x200, 10), seg(0x300, 4)];
        drop_front(&mut r, 16);
        assert_eq!(r, [seg(0x206, 4), seg(0x300, 4)]);
        drop_front(&mut r, 4);
        assert_eq!(r, [seg(0x300, 4)]);
        drop_front(&mut r, 100);
        assert!(r.is_empty());
    }
}
