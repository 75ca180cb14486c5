//! A shared directory as a device process's root (virtio-fs's share), in
//! place of the empty one ([`crate::jail::enter_empty_root`]).
//!
//! The directory is bound (over /proc) in the device's own mount namespace
//! and made its root, so that no path leads out of it: `..` stops at a
//! process's root, and at the root of a bind mount the kernel refuses `..`
//! from a directory that was moved out of it (which an fd opened outside
//! the namespace would not stop). Mounts below the directory come along
//! with the bind (a user namespace may not bind a directory without the
//! mounts it holds) and are each covered, a directory with an empty
//! read-only tmpfs and a file with an empty read-only file, so nothing of
//! another file system shows through. The root is never suid,
//! device nodes or exec, and read-only when asked.
//!
//! The bind takes the directory's path (a mount of another namespace cannot
//! be bound from its fd), resolved as the device's user: every directory
//! above the share must be searchable by skvm's unprivileged user.

use std::ffi::{CStr, CString, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::jail::{check, mount, pivot_to};
use crate::process::read_whole;

/// The most of /proc/self/mountinfo read (a host with thousands of mounts
/// has a few hundred KiB).
const MOUNTINFO_MAX: usize = 16 << 20;

/// Where the share is bound before it becomes the root.
const STAGE: &CStr = c"/proc";

/// Flags of the share's root, beside read-only.
const ROOT_FLAGS: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// Makes the directory `dir` (an fd from outside this mount namespace) the
/// root of this mount namespace, as the module says, and returns the new
/// root opened (O_RDONLY): the fd to serve the share from, in place of
/// `dir`, which must not be used for it (`..` from it leads out). The
/// process must be in its own mount namespace, with CAP_SYS_ADMIN in it.
pub fn enter_share_root(dir: BorrowedFd<'_>, read_only: bool) -> io::Result<OwnedFd> {
    // Mount events must not propagate back to the host.
    mount(c"none", c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)?;
    // This namespace is a copy of the one the fd was opened in: the same
    // path names the same directory here, unless it moved (checked below).
    let path = fd_path(dir)?;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mountinfo = open(c"/proc/self/mountinfo", libc::O_RDONLY)?;
    let mounts = read_whole(mountinfo.as_fd(), MOUNTINFO_MAX)?;
    let hidden = mounts_below(&String::from_utf8_lossy(&mounts), &path);
    // Bound onto /proc (which every host has, and which is hidden anyway),
    // not onto itself: a mount on "/" is not where "/" leads.
    mount(&c, STAGE, None, libc::MS_BIND | libc::MS_REC, None).map_err(|e| {
        let hint = if e.raw_os_error() == Some(libc::EACCES) {
            " (the device reaches it by path as skvm's unprivileged user, `--user` or \
             nobody: every directory above it must be searchable by that user)"
        } else {
            ""
        };
        annotate(e, format!("cannot bind {}{hint}", path.display()))
    })?;
    // A mount on a file is covered now, with an empty file from a tmpfs of
    // its own: after the pivot no file system but the share is left to
    // bind one from. A mount on a directory is covered after it.
    let (dirs, files): (Vec<PathBuf>, Vec<PathBuf>) =
        hidden.into_iter().partition(|m| is_dir(&staged(m)));
    cover_files(&files).map_err(|e| {
        let at = files.iter().map(|m| path.join(m).display().to_string());
        annotate(
            e,
            format!(
                "cannot hide the mounts on {}",
                at.collect::<Vec<_>>().join(", ")
            ),
        )
    })?;
    pivot_to(STAGE)?;
    let root = open(c"/", libc::O_RDONLY | libc::O_DIRECTORY)?;
    if identity(root.as_raw_fd())? != identity(dir.as_raw_fd())? {
        return Err(io::Error::other(format!(
            "{} is no longer the directory skvm opened",
            path.display()
        )));
    }
    for m in &dirs {
        hide(m).map_err(|e| {
            annotate(
                e,
                format!("cannot hide the mount at {}", path.join(m).display()),
            )
        })?;
    }
    // A mount's read-only flag, when the host set it, cannot be taken away
    // in a user namespace: keep it.
    let mut flags = libc::MS_REMOUNT | libc::MS_BIND | ROOT_FLAGS;
    if read_only || mounted_read_only(root.as_raw_fd())? {
        flags |= libc::MS_RDONLY;
    }
    mount(c"none", c"/", None, flags, None)?;
    Ok(root)
}

fn annotate(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// The path of `fd` as /proc shows it.
fn fd_path(fd: BorrowedFd<'_>) -> io::Result<PathBuf> {
    let link = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: readlinkat writes at most buf.len() bytes into buf.
    let n = unsafe {
        libc::readlinkat(
            libc::AT_FDCWD,
            link.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    buf.truncate(n);
    let path = PathBuf::from(OsString::from_vec(buf));
    if !path.is_absolute() || n > libc::PATH_MAX as usize {
        return Err(io::Error::other(format!(
            "the shared directory has no path here ({})",
            path.display()
        )));
    }
    Ok(path)
}

/// `path` opened with `flags` (and O_CLOEXEC).
fn open(path: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: open on a valid C string; the fd is checked and owned once.
    let fd = unsafe { libc::openat(libc::AT_FDCWD, path.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Device and inode of an fd's file.
fn identity(fd: libc::c_int) -> io::Result<(u64, u64)> {
    // SAFETY: fstat into a zeroed stat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above, a valid fd and buffer.
    check(unsafe { libc::fstat(fd, &mut st) })?;
    Ok((st.st_dev, st.st_ino))
}

fn mounted_read_only(fd: libc::c_int) -> io::Result<bool> {
    // SAFETY: fstatvfs (fstatfs in glibc) into a zeroed statvfs.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above, a valid fd and buffer.
    check(unsafe { libc::fstatvfs(fd, &mut st) })?;
    Ok(st.f_flag & libc::ST_RDONLY != 0)
}

/// Whether `path` is a directory (not following a symlink). This runs
/// under the spawner's filter, which has newfstatat but not statx (std's
/// metadata calls).
fn is_dir(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a zeroed stat is a valid buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstatat into that buffer, on a valid C string.
    let rc = unsafe {
        libc::fstatat(
            libc::AT_FDCWD,
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    rc == 0 && st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// Where `m`, relative to the share, is while the share is bound at
/// [`STAGE`].
fn staged(m: &Path) -> PathBuf {
    Path::new(std::ffi::OsStr::from_bytes(STAGE.to_bytes())).join(m)
}

/// Covers each mount on a file below the share bound at [`STAGE`] (`files`,
/// relative to it) with an empty read-only file: one file, in a tmpfs of
/// its own mounted on /tmp of the view the pivot leaves behind.
fn cover_files(files: &[PathBuf]) -> io::Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    mount(
        c"skvm-hidden-file",
        c"/tmp",
        Some(c"tmpfs"),
        ROOT_FLAGS,
        Some(c"size=4k,nr_inodes=2,mode=0555"),
    )?;
    let empty = c"/tmp/empty";
    // SAFETY: openat on a valid C string; the fd is closed at once. (Under
    // the spawner's filter a new file is made only with O_NOFOLLOW.)
    let fd = unsafe {
        libc::openat(
            libc::AT_FDCWD,
            empty.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o444,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd we own.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    for m in files {
        let target = CString::new(staged(m).as_os_str().as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        mount(empty, &target, None, libc::MS_BIND, None)?;
        let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | ROOT_FLAGS;
        mount(c"none", &target, None, flags, None)?;
    }
    Ok(())
}

/// Covers the mount at `below` (relative to the new root) with an empty
/// read-only tmpfs.
fn hide(below: &Path) -> io::Result<()> {
    let target = CString::new(Path::new("/").join(below).as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    mount(
        c"skvm-hidden",
        &target,
        Some(c"tmpfs"),
        libc::MS_RDONLY | ROOT_FLAGS,
        Some(c"size=4k,nr_inodes=2,mode=0"),
    )
}

/// The outermost mount points strictly below `dir` in `mountinfo` (the
/// text of /proc/self/mountinfo), relative to `dir`, each once.
pub fn mounts_below(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let dir = dir.as_os_str().as_bytes();
    let prefix: Vec<u8> = if dir.ends_with(b"/") {
        dir.to_vec()
    } else {
        [dir, b"/"].concat()
    };
    let mut below: Vec<Vec<u8>> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .filter_map(|m| m.strip_prefix(prefix.as_slice()).map(<[u8]>::to_vec))
        .filter(|m| !m.is_empty())
        .collect();
    below.sort();
    below.dedup();
    let mut outermost: Vec<Vec<u8>> = Vec::new();
    for m in below {
        let inside = outermost
            .iter()
            .any(|o| m.starts_with(o) && m.get(o.len()) == Some(&b'/'));
        if !inside {
            outermost.push(m);
        }
    }
    outermost
        .into_iter()
        .map(|m| PathBuf::from(OsString::from_vec(m)))
        .collect()
}

/// A mountinfo field with its octal escapes (`\040` for a space) undone.
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| {
            b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)) && d[0] <= b'3'
        });
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:5 / /proc rw - proc proc rw
24 22 0:6 / /srv/share rw - tmpfs t rw
25 24 0:7 / /srv/share/a\\040b rw - tmpfs t rw
26 25 0:8 / /srv/share/a\\040b/inner rw - tmpfs t rw
27 24 0:9 / /srv/share/a-b rw - tmpfs t rw
28 24 0:9 / /srv/share/a-b rw - tmpfs t rw
29 22 0:10 / /srv/shared rw - tmpfs t rw
30 24 0:11 / /srv/share/x\\134y rw - tmpfs t rw
";

    #[test]
    fn the_outermost_mounts_below_a_share_are_found_once() {
        let got = mounts_below(MOUNTINFO, Path::new("/srv/share"));
        let want: Vec<PathBuf> = ["a b", "a-b", "x\\y"].iter().map(PathBuf::from).collect();
        assert_eq!(got, want);
        assert_eq!(
            mounts_below(MOUNTINFO, Path::new("/srv/share/a b")),
            vec![PathBuf::from("inner")]
        );
        let all = mounts_below(MOUNTINFO, Path::new("/"));
        let want: Vec<PathBuf> = ["proc", "srv/share", "srv/shared"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(all, want);
        assert!(mounts_below(MOUNTINFO, Path::new("/srv/nothing")).is_empty());
    }

    #[test]
    fn a_share_becomes_the_root_with_its_mounts_hidden_and_nothing_above() {
        let dir = std::env::temp_dir().join(format!("skvm-share-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::create_dir_all(dir.join("m")).unwrap();
        std::fs::write(dir.join("f"), "hi").unwrap();
        // A file the host mounts another file on (as containers do).
        std::fs::write(dir.join("fm"), "under").unwrap();
        let outside =
            std::env::temp_dir().join(format!("skvm-share-secret-{}", std::process::id()));
        std::fs::write(&outside, "secret").unwrap();
        let fm = CString::new(dir.join("fm").as_os_str().as_bytes()).unwrap();
        let secret = CString::new(outside.as_os_str().as_bytes()).unwrap();
        let share = std::fs::File::open(&dir).unwrap();
        let inner = CString::new(dir.join("m").as_os_str().as_bytes()).unwrap();
        // SAFETY: these getters cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let flags = libc::CLONE_NEWUSER | libc::CLONE_NEWNS;
        let r = crate::jail::in_child(flags, || {
            let fail = |what: &str| Err(io::Error::other(what.to_owned()));
            std::fs::write("/proc/self/setgroups", "deny")?;
            std::fs::write("/proc/self/uid_map", format!("0 {uid} 1"))?;
            std::fs::write("/proc/self/gid_map", format!("0 {gid} 1"))?;
            // A mount inside the share, with a file the device must not see.
            mount(c"t", &inner, Some(c"tmpfs"), 0, None)?;
            std::fs::write(Path::new(inner.to_str().unwrap()).join("secret"), "x")?;
            mount(&secret, &fm, None, libc::MS_BIND, None)?;
            let root = enter_share_root(std::os::fd::AsFd::as_fd(&share), true)?;
            let mut names: Vec<_> = std::fs::read_dir("/")?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<io::Result<_>>()?;
            names.sort();
            if names != ["f", "fm", "m", "sub"] {
                return fail(&format!("/ lists {names:?}"));
            }
            if std::fs::read_to_string("/f")? != "hi" {
                return fail("/f is not the share's file");
            }
            if std::fs::read_dir("/m")?.count() != 0 {
                return fail("the mount inside the share shows through");
            }
            if !std::fs::read("/fm")?.is_empty() {
                return fail("the file mounted inside the share shows through");
            }
            if std::fs::OpenOptions::new().append(true).open("/fm").is_ok() {
                return fail("the cover of a file mount is writable");
            }
            if std::fs::read_dir("/sub/../..")?.count() != 4 {
                return fail(".. leads above the share");
            }
            if identity(root.as_raw_fd())?
                != identity(open(c"/..", libc::O_RDONLY | libc::O_DIRECTORY)?.as_raw_fd())?
            {
                return fail("the returned fd is not the root");
            }
            match std::fs::write("/new", "x") {
                Err(e) if e.raw_os_error() == Some(libc::EROFS) => {}
                other => return fail(&format!("a write to a read-only share: {other:?}")),
            }
            if Path::new("/etc/passwd").exists() || Path::new("/proc/self").exists() {
                return fail("the host's files are reachable");
            }
            Ok(())
        });
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"secret");
        std::fs::remove_file(&outside).unwrap();
        assert_eq!(r, Ok(()));
    }

    #[test]
    fn escapes_are_undone_and_odd_ones_kept() {
        assert_eq!(unescape("a\\040b\\011c"), b"a b\tc");
        assert_eq!(unescape("a\\9b\\"), b"a\\9b\\");
        assert_eq!(unescape("\\400"), b"\\400");
    }
}
