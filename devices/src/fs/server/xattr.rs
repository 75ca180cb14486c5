//! Extended attributes, for a share that offers them (`Options::xattr`):
//! the `user.` namespace only, on regular files and directories (the only
//! inodes Linux gives user attributes). Other names read as absent and
//! cannot be set: `security.` and `trusted.` would act on the host's
//! security, `system.` is ACLs naming host ids. The node is opened again
//! for each call (an O_PATH fd takes no f*xattr call).

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};

use super::super::proto::{Answer, Errno, Reader, Writer};
use super::Server;

/// The largest attribute value and name list (the kernel's XATTR_SIZE_MAX).
const SIZE_MAX: usize = 64 * 1024;
/// The namespace served.
const USER: &[u8] = b"user.";

/// A guest attribute name: in `user.`, at most 255 bytes (XATTR_NAME_MAX).
fn user_name(name: &[u8]) -> Result<CString, Errno> {
    if name.len() > 255 || name.len() <= USER.len() {
        return Err(Errno(libc::ERANGE));
    }
    if !name.starts_with(USER) {
        return Err(Errno(libc::EOPNOTSUPP));
    }
    CString::new(name).map_err(|_| Errno(libc::EINVAL))
}

/// `size` bytes asked for: how large the value is (0: GETXATTR's
/// `fuse_getxattr_out`), or the value if it fits (else ERANGE).
fn sized(size: usize, value: &[u8]) -> Answer {
    let mut w = Writer::new();
    if size == 0 {
        w.u32(u32::try_from(value.len()).unwrap_or(u32::MAX)).u32(0);
    } else if value.len() > size {
        return Err(Errno(libc::ERANGE));
    } else {
        w.bytes(value);
    }
    Ok(w.done())
}

fn check(ret: isize) -> Result<usize, Errno> {
    usize::try_from(ret).map_err(|_| Errno::last())
}

impl Server {
    /// Node `id` opened for its attributes.
    fn attr_fd(&self, id: u64) -> Result<OwnedFd, Errno> {
        match self.node(id)?.kind {
            libc::S_IFREG | libc::S_IFDIR => self.reopen(id, libc::O_RDONLY),
            _ => Err(Errno(libc::EOPNOTSUPP)),
        }
    }

    /// GETXATTR.
    pub(super) fn getxattr(&self, id: u64, r: &mut Reader<'_>) -> Answer {
        let size = usize::try_from(r.u32()?).map_err(|_| Errno(libc::EINVAL))?;
        r.u32()?;
        let name = match user_name(r.cstr()?) {
            Ok(n) => n,
            // What is not served is absent (the guest's kernel asks for
            // security.capability on writes and execs).
            Err(Errno(libc::EOPNOTSUPP)) => return Err(Errno(libc::ENODATA)),
            Err(e) => return Err(e),
        };
        let fd = self.attr_fd(id)?;
        let mut buf = vec![0u8; SIZE_MAX];
        // SAFETY: fgetxattr writes at most buf.len() bytes into buf.
        let n = check(unsafe {
            libc::fgetxattr(
                fd.as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        })?;
        sized(size, buf.get(..n).unwrap_or_default())
    }

    /// LISTXATTR: the `user.` names, each NUL-terminated.
    pub(super) fn listxattr(&self, id: u64, r: &mut Reader<'_>) -> Answer {
        let size = usize::try_from(r.u32()?).map_err(|_| Errno(libc::EINVAL))?;
        r.u32()?;
        let fd = self.attr_fd(id)?;
        let mut buf = vec![0u8; SIZE_MAX];
        // SAFETY: flistxattr writes at most buf.len() bytes into buf.
        let n =
            check(unsafe { libc::flistxattr(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })?;
        let mut names = Vec::new();
        for name in buf.get(..n).unwrap_or_default().split(|b| *b == 0) {
            if name.starts_with(USER) {
                names.extend_from_slice(name);
                names.push(0);
            }
        }
        sized(size, &names)
    }

    /// SETXATTR (`fuse_setxattr_in` without the extension, which is not
    /// offered): XATTR_CREATE and XATTR_REPLACE only.
    pub(super) fn setxattr(&self, id: u64, r: &mut Reader<'_>) -> Answer {
        let size = usize::try_from(r.u32()?).map_err(|_| Errno(libc::EINVAL))?;
        let flags = r.u32()?;
        let name = user_name(r.cstr()?)?;
        if size > SIZE_MAX {
            return Err(Errno(libc::E2BIG));
        }
        let value = r.bytes(size)?;
        let flags = i32::try_from(flags).map_err(|_| Errno(libc::EINVAL))?;
        if flags & !(libc::XATTR_CREATE | libc::XATTR_REPLACE) != 0 {
            return Err(Errno(libc::EINVAL));
        }
        let fd = self.attr_fd(id)?;
        // SAFETY: fsetxattr reads value.len() bytes of value.
        check(unsafe {
            libc::fsetxattr(
                fd.as_raw_fd(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            )
        } as isize)?;
        Ok(Vec::new())
    }

    /// REMOVEXATTR.
    pub(super) fn removexattr(&self, id: u64, r: &mut Reader<'_>) -> Answer {
        let name = user_name(r.cstr()?)?;
        let fd = self.attr_fd(id)?;
        // SAFETY: fremovexattr on a valid fd and C string.
        check(unsafe { libc::fremovexattr(fd.as_raw_fd(), name.as_ptr()) } as isize)?;
        Ok(Vec::new())
    }
}
