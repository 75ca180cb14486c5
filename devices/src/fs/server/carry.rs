//! The node and file tables carried to the next instance of the device (a
//! restart or a mem-add rebuild: `VirtioDevice::save_bulk`), so that the
//! guest's node ids and open files stay good.
//!
//! What is saved is what finds each one again: a node by its parent's id
//! and its last name, checked to be the same host inode; a file by its node
//! and the flags it was opened with. The new instance opens them again
//! from the root down. One that is gone, or is another inode now, is left
//! out: the guest then gets ESTALE for the node (its kernel looks the path
//! up again) or EIO for the file, as after a crash. What comes in is
//! hostile input like any request: bounded, every name one component, and
//! nothing opened but below the share's root.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::os::fd::AsFd;

use super::super::proto::{self, Errno, Reader, Writer};
use super::super::sys;
use super::nodes::{key, Handle, Inode};
use super::Server;

/// Version of the format.
const VERSION: u32 = 1;

/// A saved node.
struct Node {
    id: u64,
    parent: u64,
    name: CString,
    key: (u64, u64),
    refs: u64,
}

impl Server {
    /// The tables as bytes; empty when the guest holds nothing but the
    /// root.
    pub fn save_tables(&self) -> Vec<u8> {
        if self.inodes.len() <= 1 && self.handles.is_empty() {
            return Vec::new();
        }
        let mut w = Writer::new();
        w.u32(VERSION).u64(self.next_node).u64(self.next_fh);
        let nodes: Vec<(&u64, &Inode)> = self
            .inodes
            .iter()
            .filter(|(id, _)| **id != proto::ROOT_ID)
            .collect();
        w.u32(u32::try_from(nodes.len()).unwrap_or(u32::MAX));
        for (id, n) in nodes {
            let (parent, name) = n
                .parent
                .as_ref()
                .map_or((0, &[][..]), |(p, name)| (*p, name.as_bytes()));
            w.u64(*id)
                .u64(parent)
                .u16(u16::try_from(name.len()).unwrap_or(0))
                .bytes(name)
                .u64(n.key.0)
                .u64(n.key.1)
                .u64(n.refs);
        }
        w.u32(u32::try_from(self.handles.len()).unwrap_or(u32::MAX));
        for (fh, h) in &self.handles {
            w.u64(*fh).u64(h.node).u32(h.flags.cast_unsigned());
        }
        w.done()
    }

    /// Takes over what [`Server::save_tables`] of another instance wrote,
    /// into a server that holds only its root. Returns how many nodes and
    /// files could not be found again.
    pub fn restore_tables(&mut self, b: &[u8]) -> Result<(usize, usize), Errno> {
        let bad = Errno(libc::EINVAL);
        let mut r = Reader::new(b);
        if r.u32()? != VERSION || self.inodes.len() != 1 || !self.handles.is_empty() {
            return Err(bad);
        }
        let (next_node, next_fh) = (r.u64()?, r.u64()?);
        let count = usize::try_from(r.u32()?).map_err(|_| bad)?;
        if count >= self.opts.max_inodes {
            return Err(bad);
        }
        // The saved nodes by parent, to find them again from the root down.
        let mut children: HashMap<u64, Vec<Node>> = HashMap::new();
        let mut ids = HashSet::with_capacity(count);
        for _ in 0..count {
            let id = r.u64()?;
            let parent = r.u64()?;
            let len = usize::from(r.u16()?);
            let name = sys::component(r.bytes(len)?)?.to_owned();
            let node = Node {
                id,
                parent,
                name,
                key: (r.u64()?, r.u64()?),
                refs: r.u64()?,
            };
            if id == proto::ROOT_ID || id >= next_node || !ids.insert(id) {
                return Err(bad);
            }
            children.entry(parent).or_default().push(node);
        }
        let mut files = Vec::new();
        let count = usize::try_from(r.u32()?).map_err(|_| bad)?;
        if count > self.opts.max_handles {
            return Err(bad);
        }
        for _ in 0..count {
            let (fh, node, flags) = (r.u64()?, r.u64()?, r.u32()?.cast_signed());
            if fh == 0 || fh >= next_fh {
                return Err(bad);
            }
            files.push((fh, node, flags));
        }
        if !r.rest_is_empty() {
            return Err(bad);
        }
        // Parents before children, whatever the order the table has: the
        // children of each node found, from the root down. Nodes below one
        // not found (or in a cycle) are never reached, and lost.
        let mut lost_nodes = 0;
        let mut found = vec![proto::ROOT_ID];
        while let Some(parent) = found.pop() {
            for n in children.remove(&parent).unwrap_or_default() {
                let id = n.id;
                if self.find_again(n) {
                    found.push(id);
                } else {
                    lost_nodes += 1;
                }
            }
        }
        lost_nodes += children.values().map(Vec::len).sum::<usize>();
        let mut lost_files = 0;
        for (fh, node, flags) in files {
            match self.reopen(node, flags) {
                Ok(fd) => {
                    self.handles.insert(fh, Handle { fd, node, flags });
                }
                Err(_) => lost_files += 1,
            }
        }
        self.next_node = self.next_node.max(next_node);
        self.next_fh = self.next_fh.max(next_fh);
        Ok((lost_nodes, lost_files))
    }

    /// Opens saved node `n` again below its parent, if it is still the
    /// same inode on the share's file system; else its parent loses the
    /// reference it held for it. Whether it was found.
    fn find_again(&mut self, n: Node) -> bool {
        let found = self.dir(n.parent).ok().and_then(|d| {
            let fd = sys::open_at(d, &n.name, libc::O_PATH, 0).ok()?;
            let st = sys::stat(fd.as_fd()).ok()?;
            (key(&st) == n.key && st.st_dev == self.root_dev && !self.by_key.contains_key(&n.key))
                .then_some((fd, st))
        });
        let Some((fd, st)) = found else {
            self.unref(n.parent, 1);
            return false;
        };
        self.by_key.insert(n.key, n.id);
        self.inodes.insert(
            n.id,
            Inode {
                fd,
                key: n.key,
                kind: st.st_mode & libc::S_IFMT,
                refs: n.refs.max(1),
                parent: Some((n.parent, n.name)),
            },
        );
        true
    }
}
