//! The FUSE server behind virtio-fs: answers the guest's requests on one
//! host directory, the share.
//!
//! Every node the guest knows (a node id) is an O_PATH fd the server holds,
//! found by a lookup of one name in its parent's fd; nothing is ever
//! resolved from a path. Names are single components (`sys::component`),
//! opened with `O_NOFOLLOW`, so neither `..`, `/` nor a symlink planted in
//! the share leads anywhere the server did not already hold; entries on
//! another file system than the share's (a mount inside it) are refused.
//! In a device process the share is besides the root of its mount
//! namespace (`sandbox::share`), so `..` from any node stops there.
//!
//! A regular file is opened again, for OPEN and SETATTR, by its last known
//! name in its parent, and must still be the same inode (else ESTALE): an
//! O_PATH fd cannot be reopened without /proc, which a device process does
//! not have. Directories reopen themselves through ".".
//!
//! Memory and fds are bounded: at most `max_inodes` nodes and
//! `max_handles` open files; past them the guest gets ENFILE.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd};

use super::proto::{self, fattr, init_flags, op, Answer, Errno, InHeader, Reader, Writer};
use super::sys;

mod carry;
mod nodes;
mod xattr;
use nodes::{key, Handle, Inode};

/// Seconds the guest may cache a name or attributes. The share may change
/// under the guest (host programs): one second, as virtiofsd's default.
const VALID_SECS: u64 = 1;
/// The largest WRITE the guest is told it may send, and so READ's size.
pub const MAX_WRITE: u32 = 128 * 1024;
/// Bytes of the scratch buffer for one getdents64 call.
const DIRENT_BUF: usize = 32 * 1024;

/// What the share allows.
#[derive(Clone, Debug)]
pub struct Options {
    /// Refuse every change (EROFS).
    pub read_only: bool,
    /// Most nodes held at once (each an fd).
    pub max_inodes: usize,
    /// Most open files and directories at once.
    pub max_handles: usize,
    /// Serve extended attributes (`user.` only: `server::xattr`).
    pub xattr: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            read_only: false,
            max_inodes: 1 << 16,
            max_handles: 4096,
            xattr: false,
        }
    }
}

/// Counters a status report shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests answered.
    pub requests: u64,
    /// Of them, answered with an error.
    pub errors: u64,
}

/// The server's state: the nodes and open files the guest holds.
pub struct Server {
    opts: Options,
    inodes: HashMap<u64, Inode>,
    by_key: HashMap<(u64, u64), u64>,
    handles: HashMap<u64, Handle>,
    next_node: u64,
    next_fh: u64,
    root_dev: u64,
    /// The protocol minor version agreed at INIT (0: not yet).
    minor: u32,
    dirbuf: Vec<u8>,
    /// Counters.
    pub stats: Stats,
}

/// Seconds and nanoseconds of a stat time as FUSE carries them.
fn secs(t: i64) -> u64 {
    u64::try_from(t).unwrap_or(0)
}

fn nsecs(t: i64) -> u32 {
    u32::try_from(t).unwrap_or(0)
}

fn attr(st: &libc::stat) -> proto::Attr {
    proto::Attr {
        ino: st.st_ino,
        size: u64::try_from(st.st_size).unwrap_or(0),
        blocks: u64::try_from(st.st_blocks).unwrap_or(0),
        atime: secs(st.st_atime),
        mtime: secs(st.st_mtime),
        ctime: secs(st.st_ctime),
        atimensec: nsecs(st.st_atime_nsec),
        mtimensec: nsecs(st.st_mtime_nsec),
        ctimensec: nsecs(st.st_ctime_nsec),
        mode: st.st_mode,
        nlink: u32::try_from(st.st_nlink).unwrap_or(u32::MAX),
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: u32::try_from(st.st_rdev).unwrap_or(0),
        blksize: u32::try_from(st.st_blksize).unwrap_or(4096),
    }
}

impl Server {
    /// A server for the directory `root` (any fd of it; kept as O_PATH).
    pub fn new(root: BorrowedFd<'_>, opts: Options) -> Result<Self, Errno> {
        let fd = sys::reopen_path(root)?;
        let st = sys::stat(fd.as_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(Errno(libc::ENOTDIR));
        }
        let mut s = Server {
            opts,
            inodes: HashMap::new(),
            by_key: HashMap::new(),
            handles: HashMap::new(),
            next_node: proto::ROOT_ID + 1,
            next_fh: 1,
            root_dev: st.st_dev,
            minor: 0,
            dirbuf: vec![0; DIRENT_BUF],
            stats: Stats::default(),
        };
        s.by_key.insert(key(&st), proto::ROOT_ID);
        s.inodes.insert(
            proto::ROOT_ID,
            Inode {
                fd,
                key: key(&st),
                kind: libc::S_IFDIR,
                // The root is never forgotten.
                refs: u64::MAX / 2,
                parent: None,
            },
        );
        Ok(s)
    }

    /// The FUSE minor version agreed at INIT (0 before it).
    pub fn minor(&self) -> u32 {
        self.minor
    }

    /// Carries on a session another server agreed with `minor` (0: none
    /// yet), holding only the root.
    pub fn resume(&mut self, minor: u32) -> Result<(), Errno> {
        if minor > proto::KERNEL_MINOR_VERSION {
            return Err(Errno(libc::EPROTO));
        }
        self.destroy();
        self.minor = minor;
        Ok(())
    }

    /// Nodes held now (the root included).
    pub fn inodes(&self) -> usize {
        self.inodes.len()
    }

    /// Files and directories open now.
    pub fn handles(&self) -> usize {
        self.handles.len()
    }

    /// Answers one request (`request`: the bytes the guest made readable);
    /// `room` is how many bytes the guest gave for the reply. Returns the
    /// reply, out-header first, or None for requests that take none
    /// (FORGET, BATCH_FORGET, INTERRUPT) or one that has no header to
    /// answer to.
    pub fn handle(&mut self, request: &[u8], room: usize) -> Option<Vec<u8>> {
        let mut r = Reader::new(request);
        let h = InHeader::read(&mut r).ok()?;
        // The header says how long the request is (extensions included):
        // what came must hold that much.
        let body = usize::try_from(h.len)
            .ok()
            .and_then(|l| l.checked_sub(proto::IN_HEADER_LEN))
            .and_then(|n| r.bytes(n).ok());
        let answer = match body {
            None => Err(Errno(libc::EINVAL)),
            Some(body) => {
                let mut body = Reader::new(body);
                match h.opcode {
                    op::FORGET => {
                        self.forget(h.nodeid, &mut body);
                        return None;
                    }
                    op::BATCH_FORGET => {
                        self.batch_forget(&mut body);
                        return None;
                    }
                    op::INTERRUPT => return None,
                    op::INIT => self.init(&mut body),
                    _ if self.minor == 0 => Err(Errno(libc::EIO)),
                    _ => self.dispatch(&h, &mut body, room.saturating_sub(proto::OUT_HEADER_LEN)),
                }
            }
        };
        self.stats.requests += 1;
        if answer.is_err() {
            self.stats.errors += 1;
        }
        let answer = match answer {
            Ok(body) if body.len() + proto::OUT_HEADER_LEN > room => Err(Errno(libc::ERANGE)),
            a => a,
        };
        let reply = proto::reply(h.unique, &answer);
        if let Ok(body) = answer {
            proto::give_back(body);
        }
        Some(reply)
    }

    fn dispatch(&mut self, h: &InHeader, r: &mut Reader<'_>, room: usize) -> Answer {
        let writes = matches!(
            h.opcode,
            op::SETATTR
                | op::SYMLINK
                | op::MKNOD
                | op::MKDIR
                | op::UNLINK
                | op::RMDIR
                | op::RENAME
                | op::RENAME2
                | op::LINK
                | op::WRITE
                | op::CREATE
                | op::FALLOCATE
                | op::SETXATTR
                | op::REMOVEXATTR
        );
        if writes && self.opts.read_only {
            return Err(Errno(libc::EROFS));
        }
        match h.opcode {
            op::DESTROY => {
                self.destroy();
                Ok(Vec::new())
            }
            op::LOOKUP => {
                let name = sys::component(r.cstr()?)?;
                self.entry(h.nodeid, &name)
            }
            op::GETATTR => self.getattr(h.nodeid),
            op::SETATTR => self.setattr(h.nodeid, r),
            op::READLINK => {
                let node = self.node(h.nodeid)?;
                if node.kind != libc::S_IFLNK {
                    return Err(Errno(libc::EINVAL));
                }
                sys::readlink(node.fd.as_fd())
            }
            op::SYMLINK => {
                let name = sys::component(r.cstr()?)?;
                let target = CString::new(r.cstr()?).map_err(|_| Errno(libc::EINVAL))?;
                let dir = self.dir(h.nodeid)?;
                sys::symlink_at(&target, dir, &name)?;
                self.made(h, &name)
            }
            op::MKNOD => {
                let mode = r.u32()?;
                let rdev = r.u32()?;
                r.u32()?;
                r.u32()?;
                let name = sys::component(r.cstr()?)?;
                // No device nodes: a guest's node could open a host device.
                if !matches!(
                    mode & libc::S_IFMT,
                    libc::S_IFREG | libc::S_IFIFO | libc::S_IFSOCK
                ) {
                    return Err(Errno(libc::EPERM));
                }
                sys::mknod_at(self.dir(h.nodeid)?, &name, mode, u64::from(rdev))?;
                self.made(h, &name)
            }
            op::MKDIR => {
                let mode = r.u32()?;
                r.u32()?;
                let name = sys::component(r.cstr()?)?;
                sys::mkdir_at(self.dir(h.nodeid)?, &name, mode & 0o7777)?;
                self.made(h, &name)
            }
            op::UNLINK | op::RMDIR => {
                let name = sys::component(r.cstr()?)?;
                let flags = if h.opcode == op::RMDIR {
                    libc::AT_REMOVEDIR
                } else {
                    0
                };
                sys::unlink_at(self.dir(h.nodeid)?, &name, flags)?;
                Ok(Vec::new())
            }
            op::RENAME | op::RENAME2 => {
                let newdir = r.u64()?;
                let flags = if h.opcode == op::RENAME2 {
                    let f = r.u32()?;
                    r.u32()?;
                    f
                } else {
                    0
                };
                let old = sys::component(r.cstr()?)?;
                let new = sys::component(r.cstr()?)?;
                self.rename(h.nodeid, &old, newdir, &new, flags)
            }
            op::LINK => {
                let old = r.u64()?;
                let name = sys::component(r.cstr()?)?;
                self.link(old, h.nodeid, &name)
            }
            op::OPEN => {
                let flags = r.u32()?;
                self.open(h.nodeid, flags)
            }
            op::CREATE => self.create(h, r),
            op::READ => {
                let fh = r.u64()?;
                let offset = r.u64()?;
                let size = r.u32()?.min(MAX_WRITE);
                let want = usize::try_from(size).unwrap_or(0).min(room);
                let fd = self.handle_fd(fh)?;
                let mut buf = proto::buffer();
                buf.resize(want, 0);
                let n = sys::pread(fd, &mut buf, offset)?;
                buf.truncate(n);
                Ok(buf)
            }
            op::WRITE => {
                let fh = r.u64()?;
                let offset = r.u64()?;
                let size = usize::try_from(r.u32()?).map_err(|_| Errno(libc::EINVAL))?;
                r.u32()?;
                r.u64()?;
                r.u32()?;
                r.u32()?;
                let data = r.bytes(size)?;
                let n = sys::pwrite(self.handle_fd(fh)?, data, offset)?;
                let mut w = Writer::new();
                w.u32(u32::try_from(n).unwrap_or(u32::MAX)).u32(0);
                Ok(w.done())
            }
            op::STATFS => {
                let st = sys::statfs(self.node(h.nodeid)?.fd.as_fd())?;
                let mut w = Writer::new();
                w.u64(st.f_blocks)
                    .u64(st.f_bfree)
                    .u64(st.f_bavail)
                    .u64(st.f_files)
                    .u64(st.f_ffree)
                    .u32(u32::try_from(st.f_bsize).unwrap_or(4096))
                    .u32(u32::try_from(st.f_namelen).unwrap_or(255))
                    .u32(u32::try_from(st.f_frsize).unwrap_or(4096))
                    .u32(0);
                for _ in 0..6 {
                    w.u32(0);
                }
                Ok(w.done())
            }
            op::RELEASE | op::RELEASEDIR => {
                // A handle a dead instance opened is gone already.
                self.handles.remove(&r.u64()?);
                Ok(Vec::new())
            }
            op::FSYNC | op::FSYNCDIR => {
                let fh = r.u64()?;
                let flags = r.u32()?;
                sys::sync(self.handle_fd(fh)?, flags & 1 != 0)?;
                Ok(Vec::new())
            }
            op::FLUSH => {
                self.handle_fd(r.u64()?)?;
                Ok(Vec::new())
            }
            op::OPENDIR => {
                let node = self.node(h.nodeid)?;
                if node.kind != libc::S_IFDIR {
                    return Err(Errno(libc::ENOTDIR));
                }
                let fd = sys::reopen_dir(node.fd.as_fd())?;
                self.new_handle(fd, h.nodeid, libc::O_RDONLY)
            }
            op::READDIR | op::READDIRPLUS => {
                let fh = r.u64()?;
                let offset = r.u64()?;
                let size = usize::try_from(r.u32()?).unwrap_or(0).min(room);
                self.readdir(fh, offset, size, h.opcode == op::READDIRPLUS)
            }
            op::LSEEK => {
                let fh = r.u64()?;
                let offset = r.u64()?;
                let whence = i32::try_from(r.u32()?).map_err(|_| Errno(libc::EINVAL))?;
                if !matches!(
                    whence,
                    libc::SEEK_SET
                        | libc::SEEK_CUR
                        | libc::SEEK_END
                        | libc::SEEK_DATA
                        | libc::SEEK_HOLE
                ) {
                    return Err(Errno(libc::EINVAL));
                }
                let at = sys::seek(self.handle_fd(fh)?, offset, whence)?;
                let mut w = Writer::new();
                w.u64(at);
                Ok(w.done())
            }
            op::FALLOCATE => {
                let fh = r.u64()?;
                let offset = r.u64()?;
                let len = r.u64()?;
                let mode = i32::try_from(r.u32()?).map_err(|_| Errno(libc::EINVAL))?;
                crate::hostio::fallocate(self.handle_fd(fh)?, mode, offset, len)?;
                Ok(Vec::new())
            }
            op::GETXATTR if self.opts.xattr => self.getxattr(h.nodeid, r),
            op::LISTXATTR if self.opts.xattr => self.listxattr(h.nodeid, r),
            op::SETXATTR if self.opts.xattr => self.setxattr(h.nodeid, r),
            op::REMOVEXATTR if self.opts.xattr => self.removexattr(h.nodeid, r),
            // ACCESS: the guest checks permissions itself (virtiofs mounts
            // with default_permissions). Extended attributes on a share
            // that does not offer them, locks, ioctl, poll, DAX mappings:
            // ENOSYS tells the guest's FUSE not to ask again.
            _ => Err(Errno(libc::ENOSYS)),
        }
    }

    fn init(&mut self, r: &mut Reader<'_>) -> Answer {
        let major = r.u32()?;
        let minor = r.u32()?;
        let readahead = r.u32()?;
        let flags = r.u32()?;
        let mut w = Writer::new();
        if major < proto::KERNEL_VERSION {
            return Err(Errno(libc::EPROTO));
        }
        if major > proto::KERNEL_VERSION {
            // The guest asks again with ours.
            w.u32(proto::KERNEL_VERSION)
                .u32(proto::KERNEL_MINOR_VERSION);
            return Ok(w.done());
        }
        self.destroy();
        self.minor = minor.clamp(1, proto::KERNEL_MINOR_VERSION);
        let offered = init_flags::ASYNC_READ
            | init_flags::ATOMIC_O_TRUNC
            | init_flags::BIG_WRITES
            | init_flags::AUTO_INVAL_DATA
            | init_flags::DO_READDIRPLUS
            | init_flags::READDIRPLUS_AUTO
            | init_flags::PARALLEL_DIROPS
            | init_flags::MAX_PAGES;
        w.u32(proto::KERNEL_VERSION)
            .u32(self.minor)
            .u32(readahead)
            .u32(flags & offered)
            .u16(16)
            .u16(12)
            .u32(MAX_WRITE)
            .u32(1)
            .u16(u16::try_from(MAX_WRITE / 4096).unwrap_or(32))
            .u16(0)
            .u32(0);
        for _ in 0..7 {
            w.u32(0);
        }
        Ok(w.done())
    }

    /// Forgets every node but the root and closes every handle (DESTROY, or
    /// a new INIT).
    fn destroy(&mut self) {
        self.handles.clear();
        self.inodes.retain(|&id, _| id == proto::ROOT_ID);
        self.by_key.retain(|_, id| *id == proto::ROOT_ID);
    }

    /// LOOKUP's answer: `fuse_entry_out`.
    fn entry(&mut self, parent: u64, name: &CStr) -> Answer {
        let (id, st) = self.lookup(parent, name)?;
        let mut w = Writer::new();
        proto::entry_out(&mut w, id, &attr(&st), VALID_SECS);
        Ok(w.done())
    }

    /// After creating `name` in `h.nodeid`: gives it the caller's ids (the
    /// group stays the directory's under a set-group-ID directory) and
    /// answers with its entry.
    fn made(&mut self, h: &InHeader, name: &CStr) -> Answer {
        let (id, st) = self.lookup(h.nodeid, name)?;
        let st = self.own(h, id, st)?;
        let mut w = Writer::new();
        proto::entry_out(&mut w, id, &attr(&st), VALID_SECS);
        Ok(w.done())
    }

    /// A server that may not give files away (no CAP_CHOWN, or the
    /// caller's ids unmapped in its user namespace) leaves them its own:
    /// the guest then sees them as the share's owner's.
    fn own(&self, h: &InHeader, id: u64, st: libc::stat) -> Result<libc::stat, Errno> {
        let parent_setgid = self
            .node(h.nodeid)
            .and_then(|p| sys::stat(p.fd.as_fd()))
            .is_ok_and(|p| p.st_mode & libc::S_ISGID != 0);
        let gid = if parent_setgid { u32::MAX } else { h.gid };
        if st.st_uid == h.uid && (gid == u32::MAX || st.st_gid == gid) {
            return Ok(st);
        }
        let fd = self.node(id)?.fd.as_fd();
        match sys::chown(fd, h.uid, gid) {
            Ok(()) => sys::stat(fd),
            Err(Errno(libc::EPERM | libc::EINVAL)) => Ok(st),
            Err(e) => Err(e),
        }
    }

    fn getattr(&self, id: u64) -> Answer {
        let st = sys::stat(self.node(id)?.fd.as_fd())?;
        let mut w = Writer::new();
        proto::attr_out(&mut w, &attr(&st), VALID_SECS);
        Ok(w.done())
    }

    fn setattr(&mut self, id: u64, r: &mut Reader<'_>) -> Answer {
        let valid = r.u32()?;
        r.u32()?;
        let fh = r.u64()?;
        let size = r.u64()?;
        r.u64()?;
        let atime = r.u64()?;
        let mtime = r.u64()?;
        r.u64()?;
        let atimensec = r.u32()?;
        let mtimensec = r.u32()?;
        r.u32()?;
        let mode = r.u32()?;
        r.u32()?;
        let uid = r.u32()?;
        let gid = r.u32()?;
        let kind = self.node(id)?.kind;
        if valid & fattr::MODE != 0 {
            if kind == libc::S_IFLNK {
                return Err(Errno(libc::EOPNOTSUPP));
            }
            let fd = self.reopen(id, libc::O_RDONLY)?;
            sys::chmod(fd.as_fd(), mode & 0o7777)?;
        }
        if valid & (fattr::UID | fattr::GID) != 0 {
            let u = if valid & fattr::UID != 0 {
                uid
            } else {
                u32::MAX
            };
            let g = if valid & fattr::GID != 0 {
                gid
            } else {
                u32::MAX
            };
            sys::chown(self.node(id)?.fd.as_fd(), u, g)?;
        }
        if valid & fattr::SIZE != 0 {
            if kind != libc::S_IFREG {
                return Err(Errno(libc::EINVAL));
            }
            match self.handles.get(&fh).filter(|_| valid & fattr::FH != 0) {
                Some(hd) if hd.node == id => sys::truncate(hd.fd.as_fd(), size)?,
                _ => sys::truncate(self.reopen(id, libc::O_WRONLY)?.as_fd(), size)?,
            }
        }
        if valid & (fattr::ATIME | fattr::MTIME) != 0 {
            let time = |set: u32, now: u32, s: u64, ns: u32| libc::timespec {
                tv_sec: i64::try_from(s).unwrap_or(i64::MAX),
                tv_nsec: if valid & now != 0 {
                    libc::UTIME_NOW
                } else if valid & set != 0 {
                    i64::from(ns)
                } else {
                    libc::UTIME_OMIT
                },
            };
            let times = [
                time(fattr::ATIME, fattr::ATIME_NOW, atime, atimensec),
                time(fattr::MTIME, fattr::MTIME_NOW, mtime, mtimensec),
            ];
            sys::utimens(self.node(id)?.fd.as_fd(), &times)?;
        }
        self.getattr(id)
    }

    fn rename(&mut self, old_dir: u64, old: &CStr, new_dir: u64, new: &CStr, flags: u32) -> Answer {
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 {
            return Err(Errno(libc::EINVAL));
        }
        sys::rename_at(self.dir(old_dir)?, old, self.dir(new_dir)?, new, flags)?;
        // The moved node (if held) is now found under its new name; with
        // EXCHANGE the other one under the old name.
        self.renamed(new_dir, new);
        if flags & libc::RENAME_EXCHANGE != 0 {
            self.renamed(old_dir, old);
        }
        Ok(Vec::new())
    }

    fn link(&mut self, old: u64, new_dir: u64, name: &CStr) -> Answer {
        let n = self.node(old)?;
        if n.kind == libc::S_IFDIR {
            return Err(Errno(libc::EPERM));
        }
        let (parent, old_name) = n.parent.clone().ok_or(Errno(libc::ESTALE))?;
        let key_was = n.key;
        // Still the same inode under that name?
        let fd = sys::open_at(self.dir(parent)?, &old_name, libc::O_PATH, 0)?;
        if key(&sys::stat(fd.as_fd())?) != key_was {
            return Err(Errno(libc::ESTALE));
        }
        sys::link_at(self.dir(parent)?, &old_name, self.dir(new_dir)?, name)?;
        self.entry(new_dir, name)
    }

    fn open(&mut self, id: u64, flags: u32) -> Answer {
        let flags = i32::try_from(flags).map_err(|_| Errno(libc::EINVAL))?;
        let access = flags & libc::O_ACCMODE;
        if self.opts.read_only && (access != libc::O_RDONLY || flags & libc::O_TRUNC != 0) {
            return Err(Errno(libc::EROFS));
        }
        // The guest gives every write its offset: no O_APPEND. No creating
        // here, no controlling terminal, no atime games, and no O_DIRECT
        // (its alignment rules would fail the guest's unaligned requests).
        let keep = libc::O_ACCMODE | libc::O_TRUNC | libc::O_SYNC | libc::O_DSYNC;
        let fd = self.reopen(id, flags & keep)?;
        self.new_handle(fd, id, flags & keep)
    }

    fn create(&mut self, h: &InHeader, r: &mut Reader<'_>) -> Answer {
        let flags = i32::try_from(r.u32()?).map_err(|_| Errno(libc::EINVAL))?;
        let mode = r.u32()?;
        r.u32()?;
        if self.minor >= 12 {
            r.u32()?;
        }
        let name = sys::component(r.cstr()?)?;
        if self.handles.len() >= self.opts.max_handles {
            return Err(Errno(libc::ENFILE));
        }
        let keep = libc::O_ACCMODE | libc::O_TRUNC | libc::O_EXCL | libc::O_SYNC | libc::O_DSYNC;
        let fd = sys::open_at(
            self.dir(h.nodeid)?,
            &name,
            (flags & keep) | libc::O_CREAT,
            mode & 0o7777,
        )?;
        let (id, st) = self.lookup(h.nodeid, &name)?;
        if let Err(e) = self.own(h, id, st) {
            self.unref(id, 1);
            return Err(e);
        }
        let st = sys::stat(fd.as_fd())?;
        let mut w = Writer::new();
        proto::entry_out(&mut w, id, &attr(&st), VALID_SECS);
        let open = self.new_handle(fd, id, flags & keep)?;
        w.bytes(&open);
        Ok(w.done())
    }

    fn readdir(&mut self, fh: u64, offset: u64, size: usize, plus: bool) -> Answer {
        // Out of the table while READDIRPLUS looks entries up (no dup: a
        // device's allowlist has no fcntl), back in whatever happens.
        let handle = self.handles.remove(&fh).ok_or(Self::NO_HANDLE)?;
        let answer = self.list(&handle, offset, size, plus);
        self.handles.insert(fh, handle);
        answer
    }

    fn list(&mut self, handle: &Handle, offset: u64, size: usize, plus: bool) -> Answer {
        let (fd, node) = (handle.fd.as_fd(), handle.node);
        let mut buf = std::mem::take(&mut self.dirbuf);
        let mut w = Writer::new();
        let mut failed = None;
        let res = sys::read_dir(fd, offset, &mut buf, |e| {
            let room = size.saturating_sub(w.buf.len());
            let dot = e.name == b"." || e.name == b"..";
            if !plus {
                return proto::dirent(&mut w, room, e.ino, e.next, u32::from(e.typ), e.name);
            }
            if proto::direntplus_len(e.name) > room {
                return false;
            }
            if dot {
                // No lookup for these: the guest skips entries of node 0.
                proto::entry_out(&mut w, 0, &proto::Attr::default(), 0);
                return proto::dirent(&mut w, usize::MAX, e.ino, e.next, u32::from(e.typ), e.name);
            }
            let Ok(name) = sys::component(e.name) else {
                return true;
            };
            match self.lookup(node, &name) {
                Ok((id, st)) => {
                    proto::entry_out(&mut w, id, &attr(&st), VALID_SECS);
                    proto::dirent(&mut w, usize::MAX, e.ino, e.next, u32::from(e.typ), e.name)
                }
                // Gone since getdents, or refused (a mount point): left out.
                Err(Errno(libc::ENOENT) | Errno(libc::EACCES)) => true,
                Err(err) => {
                    failed = Some(err);
                    false
                }
            }
        });
        self.dirbuf = buf;
        res?;
        match failed {
            // Nothing listed and the first entry failed: say why.
            Some(err) if w.buf.is_empty() => Err(err),
            _ => Ok(w.done()),
        }
    }
}
