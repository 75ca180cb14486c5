//! Host file I/O for the block device: whole transfers between an image and
//! guest memory.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Drops the first `n` bytes of `iov`.
pub(super) fn advance(iov: &mut Vec<libc::iovec>, mut n: usize) {
    let mut skip = 0;
    for v in iov.iter_mut() {
        if n == 0 {
            break;
        }
        if v.iov_len <= n {
            n -= v.iov_len;
            skip += 1;
        } else {
            // SAFETY: n < iov_len, so the pointer stays inside the buffer.
            v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n).cast() };
            v.iov_len -= n;
            n = 0;
        }
    }
    iov.drain(..skip);
}

/// preadv/pwritev of the whole of `iov` at `offset`, going on after short
/// transfers and EINTR. A transfer that stops early (end of file) fails.
/// Each iovec is taken off `iov` once it has been transferred.
pub(super) fn transfer(
    file: &File,
    iov: &mut Vec<libc::iovec>,
    mut offset: u64,
    write: bool,
) -> io::Result<()> {
    while !iov.is_empty() {
        let cnt = libc::c_int::try_from(iov.len().min(1024)).unwrap_or(1024);
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: every iovec points into mapped guest memory of its length
        // (see `iovecs`); the kernel reads or writes only those bytes.
        let n = unsafe {
            if write {
                libc::pwritev(file.as_raw_fd(), iov.as_ptr(), cnt, off)
            } else {
                libc::preadv(file.as_raw_fd(), iov.as_ptr(), cnt, off)
            }
        };
        match usize::try_from(n) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Ok(n) => {
                advance(iov, n);
                offset += n as u64;
            }
            Err(_) => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iovec_advance_handles_partial_transfers() {
        let mut a = [0u8; 8];
        let mut b = [0u8; 8];
        let mut v = vec![
            libc::iovec {
                iov_base: a.as_mut_ptr().cast(),
                iov_len: 8,
            },
            libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: 8,
            },
        ];
        advance(&mut v, 10);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].iov_len, 6);
        advance(&mut v, 6);
        assert!(v.is_empty());
    }
}
