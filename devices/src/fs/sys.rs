//! The host calls the file-system server makes, each relative to an fd
//! the server holds (never a path from the root), with the guest's names
//! as single path components: checked by [`component`] before they get
//! here. Failures are the host's errno, which the guest gets as is.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::proto::Errno;

const EMPTY: &CStr = c"";

/// Longest path component (NAME_MAX).
const NAME_MAX: usize = 255;

/// A checked path component, NUL-terminated in place: a request's name
/// costs no allocation (a node that keeps it makes its own copy).
pub struct Name {
    bytes: [u8; NAME_MAX + 1],
}

impl std::ops::Deref for Name {
    type Target = CStr;
    fn deref(&self) -> &CStr {
        // `component` put a NUL after the name and none inside it.
        CStr::from_bytes_until_nul(&self.bytes).unwrap_or(EMPTY)
    }
}

/// A guest-supplied name as one path component: not empty, no `/`, no NUL,
/// not `.` or `..`, at most 255 bytes (NAME_MAX).
pub fn component(name: &[u8]) -> Result<Name, Errno> {
    if name.is_empty() || name.len() > NAME_MAX {
        return Err(Errno(if name.is_empty() {
            libc::EINVAL
        } else {
            libc::ENAMETOOLONG
        }));
    }
    if name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(Errno(libc::EINVAL));
    }
    let mut n = Name {
        bytes: [0; NAME_MAX + 1],
    };
    n.bytes[..name.len()].copy_from_slice(name);
    Ok(n)
}

/// `-1` from a libc call becomes the errno.
fn check(ret: libc::c_int) -> Result<libc::c_int, Errno> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

/// `openat(dir, name, flags | O_CLOEXEC | O_NOFOLLOW, mode)`: a name that
/// is a symlink is not followed (ELOOP, or the link itself with O_PATH).
pub fn open_at(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: u32) -> Result<OwnedFd, Errno> {
    // SAFETY: a valid fd and NUL-terminated name; the result is checked.
    let fd = check(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            mode,
        )
    })?;
    // SAFETY: openat returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The directory `dir` itself (".") opened again with `flags`.
fn reopen(dir: BorrowedFd<'_>, flags: i32) -> Result<OwnedFd, Errno> {
    open_at(dir, c".", flags | libc::O_DIRECTORY, 0)
}

/// An O_PATH fd of the directory `dir` (any fd of it).
pub fn reopen_path(dir: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    reopen(dir, libc::O_PATH)
}

/// The directory `dir` (an O_PATH fd) opened again for reading.
pub fn reopen_dir(dir: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    reopen(dir, libc::O_RDONLY)
}

/// `fstatat(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW)`: works on O_PATH
/// fds.
pub fn stat(fd: BorrowedFd<'_>) -> Result<libc::stat, Errno> {
    // SAFETY: all-zero is a valid stat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd, empty name and stat buffer.
    check(unsafe {
        libc::fstatat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            &raw mut st,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

/// `fstatfs` (works on O_PATH fds).
pub fn statfs(fd: BorrowedFd<'_>) -> Result<libc::statfs, Errno> {
    // SAFETY: all-zero is a valid statfs.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and buffer.
    check(unsafe { libc::fstatfs(fd.as_raw_fd(), &raw mut st) })?;
    Ok(st)
}

/// `mkdirat`.
pub fn mkdir_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> Result<(), Errno> {
    // SAFETY: a valid fd and name.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

/// `mknodat` (regular files, fifos and sockets only; the caller checks).
pub fn mknod_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u64) -> Result<(), Errno> {
    // SAFETY: a valid fd and name.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, rdev) }).map(drop)
}

/// `symlinkat(target, dir, name)`: the target is stored as given; it is
/// never followed by the server.
pub fn symlink_at(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> Result<(), Errno> {
    // SAFETY: valid strings and fd.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

/// `unlinkat` (`AT_REMOVEDIR` for rmdir).
pub fn unlink_at(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> Result<(), Errno> {
    // SAFETY: a valid fd and name.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

/// `renameat2`, as the syscall itself: glibc's wrapper makes a plain
/// `renameat` when there are no flags, which a device's allowlist lacks.
pub fn rename_at(
    old_dir: BorrowedFd<'_>,
    old: &CStr,
    new_dir: BorrowedFd<'_>,
    new: &CStr,
    flags: u32,
) -> Result<(), Errno> {
    // SAFETY: valid fds and names.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            old_dir.as_raw_fd(),
            old.as_ptr(),
            new_dir.as_raw_fd(),
            new.as_ptr(),
            flags,
        )
    };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// `linkat(old_dir, old, new_dir, new, 0)`: never follows a symlink.
pub fn link_at(
    old_dir: BorrowedFd<'_>,
    old: &CStr,
    new_dir: BorrowedFd<'_>,
    new: &CStr,
) -> Result<(), Errno> {
    // SAFETY: valid fds and names.
    check(unsafe {
        libc::linkat(
            old_dir.as_raw_fd(),
            old.as_ptr(),
            new_dir.as_raw_fd(),
            new.as_ptr(),
            0,
        )
    })
    .map(drop)
}

/// The target of the symlink `fd` (an O_PATH fd of the link).
pub fn readlink(fd: BorrowedFd<'_>) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: writes at most buf.len() bytes into buf.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let n = usize::try_from(n).map_err(|_| Errno::last())?;
    buf.truncate(n);
    Ok(buf)
}

/// `fchownat(fd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW)`;
/// `u32::MAX` leaves an id as it is.
pub fn chown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> Result<(), Errno> {
    // SAFETY: a valid fd and empty name.
    check(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// `fchmod` on an open (not O_PATH) fd.
pub fn chmod(fd: BorrowedFd<'_>, mode: u32) -> Result<(), Errno> {
    // SAFETY: a valid fd.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode) }).map(drop)
}

/// `ftruncate` on a writable fd.
pub fn truncate(fd: BorrowedFd<'_>, size: u64) -> Result<(), Errno> {
    let size = i64::try_from(size).map_err(|_| Errno(libc::EFBIG))?;
    // SAFETY: a valid fd.
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), size) }).map(drop)
}

/// `utimensat(fd, "", times, AT_EMPTY_PATH)` (works on O_PATH fds).
pub fn utimens(fd: BorrowedFd<'_>, times: &[libc::timespec; 2]) -> Result<(), Errno> {
    // SAFETY: a valid fd, empty name and two timespecs.
    check(unsafe {
        libc::utimensat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            times.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    })
    .map(drop)
}

/// `pread` into `buf`; the bytes read.
pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> Result<usize, Errno> {
    let offset = i64::try_from(offset).map_err(|_| Errno(libc::EINVAL))?;
    loop {
        // SAFETY: reads at most buf.len() bytes into buf.
        let n = unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), offset) };
        match usize::try_from(n) {
            Ok(n) => return Ok(n),
            Err(_) if Errno::last().0 == libc::EINTR => {}
            Err(_) => return Err(Errno::last()),
        }
    }
}

/// `pwrite` of `buf`; the bytes written.
pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> Result<usize, Errno> {
    let offset = i64::try_from(offset).map_err(|_| Errno(libc::EFBIG))?;
    loop {
        // SAFETY: writes from a valid buffer of the given length.
        let n = unsafe { libc::pwrite(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), offset) };
        match usize::try_from(n) {
            Ok(n) => return Ok(n),
            Err(_) if Errno::last().0 == libc::EINTR => {}
            Err(_) => return Err(Errno::last()),
        }
    }
}

/// `fsync`, or `fdatasync` when `data_only`.
pub fn sync(fd: BorrowedFd<'_>, data_only: bool) -> Result<(), Errno> {
    // SAFETY: a valid fd.
    check(unsafe {
        if data_only {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    })
    .map(drop)
}

/// `lseek`.
pub fn seek(fd: BorrowedFd<'_>, offset: u64, whence: i32) -> Result<u64, Errno> {
    let offset = i64::try_from(offset).map_err(|_| Errno(libc::EINVAL))?;
    // SAFETY: a valid fd.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), offset, whence) };
    u64::try_from(r).map_err(|_| Errno::last())
}

/// One directory entry of `getdents64`.
pub struct DirEntry<'a> {
    /// Inode number.
    pub ino: u64,
    /// The cookie that seeks to the entry after this one.
    pub next: u64,
    /// `DT_*` type.
    pub typ: u8,
    /// The name, without NUL.
    pub name: &'a [u8],
}

/// Reads entries of the open directory `fd` from cookie `offset` into
/// `buf`, and calls `each` for them in order until it returns false.
pub fn read_dir(
    fd: BorrowedFd<'_>,
    offset: u64,
    buf: &mut [u8],
    mut each: impl FnMut(&DirEntry<'_>) -> bool,
) -> Result<(), Errno> {
    seek(fd, offset, libc::SEEK_SET)?;
    loop {
        // SAFETY: getdents64 writes at most buf.len() bytes into buf.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                fd.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        let n = usize::try_from(n).map_err(|_| Errno::last())?;
        if n == 0 {
            return Ok(());
        }
        let mut at = 0;
        while at + 19 < n {
            let rec = &buf[at..n];
            let ino = u64::from_ne_bytes(rec[0..8].try_into().map_err(|_| Errno(libc::EIO))?);
            let next = u64::from_ne_bytes(rec[8..16].try_into().map_err(|_| Errno(libc::EIO))?);
            let reclen = usize::from(u16::from_ne_bytes([rec[16], rec[17]]));
            if reclen < 20 || reclen > rec.len() {
                return Err(Errno(libc::EIO));
            }
            let typ = rec[18];
            let raw = &rec[19..reclen];
            let name = &raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())];
            if !each(&DirEntry {
                ino,
                next,
                typ,
                name,
            }) {
                return Ok(());
            }
            at += reclen;
        }
    }
}
