//! The server's tables: the nodes the guest holds (each an O_PATH fd, found
//! by a lookup of one name in its parent's fd, and forgotten when the
//! guest and its children no longer hold it) and the files it opened.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::super::proto::{self, Answer, Errno, Reader, Writer};
use super::super::sys;
use super::Server;

/// A node the guest holds.
pub(super) struct Inode {
    /// Its O_PATH fd.
    pub(super) fd: OwnedFd,
    /// Its host inode.
    pub(super) key: (u64, u64),
    /// `S_IFMT` bits.
    pub(super) kind: u32,
    /// Lookups the guest holds, plus one per child node held here.
    pub(super) refs: u64,
    /// The parent node and the name this node was last found under.
    pub(super) parent: Option<(u64, CString)>,
}

/// A file or directory the guest opened.
pub(super) struct Handle {
    /// The open fd.
    pub(super) fd: OwnedFd,
    /// Its node.
    pub(super) node: u64,
    /// The flags it opens with again ([`Server::reopen`]) in a new
    /// instance: what it was opened with, less O_CREAT, O_EXCL, O_TRUNC.
    pub(super) flags: i32,
}

/// The identity of a host inode.
pub(super) fn key(st: &libc::stat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

impl Server {
    pub(super) fn node(&self, id: u64) -> Result<&Inode, Errno> {
        self.inodes.get(&id).ok_or(Errno(libc::ESTALE))
    }

    /// The O_PATH fd of directory node `id`.
    pub(super) fn dir(&self, id: u64) -> Result<BorrowedFd<'_>, Errno> {
        let n = self.node(id)?;
        if n.kind != libc::S_IFDIR {
            return Err(Errno(libc::ENOTDIR));
        }
        Ok(n.fd.as_fd())
    }

    /// What a request on a file the server does not hold gets: one a
    /// dead instance opened (a restart loses open files), or a hostile
    /// guest's number. EIO: the device lost it.
    pub(super) const NO_HANDLE: Errno = Errno(libc::EIO);

    pub(super) fn handle_fd(&self, fh: u64) -> Result<BorrowedFd<'_>, Errno> {
        self.handles
            .get(&fh)
            .map(|h| h.fd.as_fd())
            .ok_or(Self::NO_HANDLE)
    }

    /// A new handle for `fd`, node `node`'s, opened with `flags`.
    pub(super) fn new_handle(&mut self, fd: OwnedFd, node: u64, flags: i32) -> Answer {
        if self.handles.len() >= self.opts.max_handles {
            return Err(Errno(libc::ENFILE));
        }
        let fh = self.next_fh;
        self.next_fh += 1;
        let flags = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC);
        self.handles.insert(fh, Handle { fd, node, flags });
        let mut w = Writer::new();
        proto::open_out(&mut w, fh, 0);
        Ok(w.done())
    }

    /// Looks `name` up in directory `parent` and holds the node once more:
    /// its id and attributes.
    pub(super) fn lookup(&mut self, parent: u64, name: &CStr) -> Result<(u64, libc::stat), Errno> {
        let fd = sys::open_at(self.dir(parent)?, name, libc::O_PATH, 0)?;
        let st = sys::stat(fd.as_fd())?;
        if st.st_dev != self.root_dev {
            // A mount inside the share: not part of it.
            return Err(Errno(libc::EACCES));
        }
        if let Some(&id) = self.by_key.get(&key(&st)) {
            if let Some(n) = self.inodes.get_mut(&id) {
                n.refs += 1;
                if n.parent.as_ref().is_none_or(|(p, _)| *p != parent) {
                    let old = n.parent.replace((parent, name.to_owned()));
                    self.hold(parent);
                    if let Some((p, _)) = old {
                        self.unref(p, 1);
                    }
                } else if let Some((_, n_name)) = n.parent.as_mut() {
                    // Found again under the name it has: nothing to copy.
                    if n_name.as_c_str() != name {
                        *n_name = name.to_owned();
                    }
                }
                return Ok((id, st));
            }
        }
        if self.inodes.len() >= self.opts.max_inodes {
            return Err(Errno(libc::ENFILE));
        }
        let id = self.next_node;
        self.next_node += 1;
        self.by_key.insert(key(&st), id);
        self.inodes.insert(
            id,
            Inode {
                fd,
                key: key(&st),
                kind: st.st_mode & libc::S_IFMT,
                refs: 1,
                parent: Some((parent, name.to_owned())),
            },
        );
        self.hold(parent);
        Ok((id, st))
    }

    pub(super) fn hold(&mut self, id: u64) {
        if let Some(n) = self.inodes.get_mut(&id) {
            n.refs += 1;
        }
    }

    /// Drops `count` references of node `id`; a node left with none is
    /// forgotten, and its parent loses the reference it held.
    pub(super) fn unref(&mut self, mut id: u64, mut count: u64) {
        loop {
            let Some(n) = self.inodes.get_mut(&id) else {
                return;
            };
            n.refs = n.refs.saturating_sub(count);
            if n.refs > 0 || id == proto::ROOT_ID {
                return;
            }
            let Some(n) = self.inodes.remove(&id) else {
                return;
            };
            if self.by_key.get(&n.key) == Some(&id) {
                self.by_key.remove(&n.key);
            }
            match n.parent {
                Some((p, _)) => {
                    id = p;
                    count = 1;
                }
                None => return,
            }
        }
    }

    pub(super) fn forget(&mut self, id: u64, r: &mut Reader<'_>) {
        if let Ok(n) = r.u64() {
            if id != proto::ROOT_ID {
                self.unref(id, n);
            }
        }
    }

    pub(super) fn batch_forget(&mut self, r: &mut Reader<'_>) {
        let Ok(count) = r.u32() else { return };
        if r.u32().is_err() {
            return;
        }
        for _ in 0..count {
            let (Ok(id), Ok(n)) = (r.u64(), r.u64()) else {
                return;
            };
            if id != proto::ROOT_ID {
                self.unref(id, n);
            }
        }
    }

    /// Node `id` opened again with `flags` (a regular file by its last
    /// name, checked to be the same inode; a directory through ".").
    pub(super) fn reopen(&self, id: u64, flags: i32) -> Result<OwnedFd, Errno> {
        let n = self.node(id)?;
        match n.kind {
            libc::S_IFDIR => sys::reopen_dir(n.fd.as_fd()),
            libc::S_IFREG => {
                let (parent, name) = n.parent.as_ref().ok_or(Errno(libc::ESTALE))?;
                let fd = sys::open_at(self.dir(*parent)?, name, flags, 0)?;
                if key(&sys::stat(fd.as_fd())?) != n.key {
                    return Err(Errno(libc::ESTALE));
                }
                Ok(fd)
            }
            libc::S_IFLNK => Err(Errno(libc::ELOOP)),
            _ => Err(Errno(libc::EACCES)),
        }
    }

    /// Records that the node at `dir`/`name` (if this server holds it) now
    /// lives there.
    pub(super) fn renamed(&mut self, dir: u64, name: &CStr) {
        let Ok(d) = self.dir(dir) else { return };
        let Ok(fd) = sys::open_at(d, name, libc::O_PATH, 0) else {
            return;
        };
        let Ok(st) = sys::stat(fd.as_fd()) else {
            return;
        };
        let Some(&id) = self.by_key.get(&key(&st)) else {
            return;
        };
        let old = self
            .inodes
            .get_mut(&id)
            .and_then(|n| n.parent.replace((dir, name.to_owned())));
        self.hold(dir);
        if let Some((p, _)) = old {
            self.unref(p, 1);
        }
    }
}
