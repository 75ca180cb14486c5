// Test code: a panic is a failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::proto::{fattr, op, InHeader, Reader, Writer, ROOT_ID};
use super::server::{Options, Server};

mod carry;
mod xattr;

/// A scratch directory inside a scratch directory: `outside` is a file
/// beside the share that no request may reach.
struct Scratch {
    top: PathBuf,
    share: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let top = std::env::temp_dir().join(format!(
            "skvm-fs-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let share = top.join("share");
        fs::create_dir_all(&share).unwrap();
        fs::write(top.join("outside"), b"secret").unwrap();
        Scratch { top, share }
    }

    fn outside(&self) -> PathBuf {
        self.top.join("outside")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.top);
    }
}

/// A guest's FUSE client in miniature.
struct Client {
    server: Server,
    unique: u64,
    uid: u32,
    gid: u32,
}

const ROOM: usize = 256 * 1024;

impl Client {
    fn new(share: &Path, opts: Options) -> Self {
        let dir = fs::File::open(share).unwrap();
        let server = Server::new(dir.as_fd(), opts).unwrap();
        let mut c = Client {
            server,
            unique: 0,
            uid: 0,
            gid: 0,
        };
        let mut w = Writer::new();
        w.u32(7).u32(38).u32(128 * 1024).u32(0xffff_ffff);
        for _ in 0..12 {
            w.u32(0);
        }
        let out = c.call(op::INIT, 0, &w.done()).unwrap();
        assert_eq!(out.len(), 64);
        c
    }

    /// The raw reply of a request with `body`, or None.
    fn raw(&mut self, opcode: u32, nodeid: u64, body: &[u8], room: usize) -> Option<Vec<u8>> {
        self.unique += 1;
        let mut w = Writer::new();
        InHeader {
            len: u32::try_from(40 + body.len()).unwrap(),
            opcode,
            unique: self.unique,
            nodeid,
            uid: self.uid,
            gid: self.gid,
            pid: 1,
            total_extlen: 0,
        }
        .write(&mut w);
        w.bytes(body);
        self.server.handle(&w.done(), room)
    }

    /// The reply's body, or its errno.
    fn call(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> Result<Vec<u8>, i32> {
        let out = self.raw(opcode, nodeid, body, ROOM).expect("a reply");
        let mut r = Reader::new(&out);
        let len = r.u32().unwrap();
        let error = r.u32().unwrap().cast_signed();
        assert_eq!(r.u64().unwrap(), self.unique, "unique echoed");
        assert_eq!(len as usize, out.len());
        if error != 0 {
            assert_eq!(out.len(), 16);
            return Err(-error);
        }
        Ok(out[16..].to_vec())
    }

    fn named(
        &mut self,
        opcode: u32,
        nodeid: u64,
        head: &[u8],
        names: &[&[u8]],
    ) -> Result<Vec<u8>, i32> {
        let mut body = head.to_vec();
        for n in names {
            body.extend_from_slice(n);
            body.push(0);
        }
        self.call(opcode, nodeid, &body)
    }

    /// LOOKUP: (node id, mode, size).
    fn lookup(&mut self, dir: u64, name: &[u8]) -> Result<(u64, u32, u64), i32> {
        let out = self.named(op::LOOKUP, dir, &[], &[name])?;
        Ok(entry(&out))
    }

    fn mkdir(&mut self, dir: u64, name: &[u8], mode: u32) -> Result<u64, i32> {
        let mut w = Writer::new();
        w.u32(mode | libc::S_IFDIR).u32(0);
        self.named(op::MKDIR, dir, &w.done(), &[name])
            .map(|o| entry(&o).0)
    }

    /// CREATE: (node id, file handle).
    fn create(&mut self, dir: u64, name: &[u8], mode: u32) -> Result<(u64, u64), i32> {
        let mut w = Writer::new();
        w.u32(u32::try_from(libc::O_RDWR).unwrap())
            .u32(libc::S_IFREG | mode)
            .u32(0)
            .u32(0);
        let out = self.named(op::CREATE, dir, &w.done(), &[name])?;
        let fh = u64::from_le_bytes(out[128..136].try_into().unwrap());
        Ok((entry(&out).0, fh))
    }

    fn open(&mut self, node: u64, flags: i32) -> Result<u64, i32> {
        let mut w = Writer::new();
        w.u32(u32::try_from(flags).unwrap()).u32(0);
        let out = self.call(op::OPEN, node, &w.done())?;
        Ok(u64::from_le_bytes(out[0..8].try_into().unwrap()))
    }

    fn write(&mut self, node: u64, fh: u64, offset: u64, data: &[u8]) -> Result<u32, i32> {
        let mut w = Writer::new();
        w.u64(fh)
            .u64(offset)
            .u32(u32::try_from(data.len()).unwrap())
            .u32(0)
            .u64(0)
            .u32(0)
            .u32(0)
            .bytes(data);
        let out = self.call(op::WRITE, node, &w.done())?;
        Ok(u32::from_le_bytes(out[0..4].try_into().unwrap()))
    }

    fn read(&mut self, node: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, i32> {
        let mut w = Writer::new();
        w.u64(fh).u64(offset).u32(size).u32(0).u64(0).u32(0).u32(0);
        self.call(op::READ, node, &w.done())
    }

    fn release(&mut self, node: u64, fh: u64) -> Result<Vec<u8>, i32> {
        let mut w = Writer::new();
        w.u64(fh).u32(0).u32(0).u64(0);
        self.call(op::RELEASE, node, &w.done())
    }

    fn forget(&mut self, node: u64, n: u64) {
        let mut w = Writer::new();
        w.u64(n);
        assert!(self.raw(op::FORGET, node, &w.done(), ROOM).is_none());
    }

    /// READDIR(PLUS) from `offset`: (names, next offset), node ids of plus.
    fn readdir(
        &mut self,
        fh: u64,
        offset: u64,
        size: u32,
        plus: bool,
    ) -> Result<Vec<(String, u64, u64)>, i32> {
        let mut w = Writer::new();
        w.u64(fh).u64(offset).u32(size).u32(0).u64(0).u32(0).u32(0);
        let opcode = if plus { op::READDIRPLUS } else { op::READDIR };
        let out = self.call(opcode, ROOT_ID, &w.done())?;
        assert!(out.len() <= size as usize);
        let mut r = Reader::new(&out);
        let mut v = Vec::new();
        while !r.rest_is_empty() {
            let node = if plus {
                let e = r.bytes(128).unwrap();
                entry(e).0
            } else {
                0
            };
            r.u64().unwrap();
            let off = r.u64().unwrap();
            let len = r.u32().unwrap() as usize;
            r.u32().unwrap();
            let name = String::from_utf8(r.bytes(len).unwrap().to_vec()).unwrap();
            r.bytes((24 + len).next_multiple_of(8) - 24 - len).unwrap();
            v.push((name, off, node));
        }
        Ok(v)
    }
}

/// (node id, mode, size) of a `fuse_entry_out`.
fn entry(out: &[u8]) -> (u64, u32, u64) {
    let id = u64::from_le_bytes(out[0..8].try_into().unwrap());
    let size = u64::from_le_bytes(out[48..56].try_into().unwrap());
    let mode = u32::from_le_bytes(out[100..104].try_into().unwrap());
    (id, mode, size)
}

#[test]
fn files_are_created_written_read_back_and_removed() {
    let s = Scratch::new();
    let mut c = Client::new(&s.share, Options::default());
    let (node, fh) = c.create(ROOT_ID, b"hello.txt", 0o640).unwrap();
    assert_eq!(c.write(node, fh, 0, b"hello, ").unwrap(), 7);
    assert_eq!(c.write(node, fh, 7, b"world").unwrap(), 5);
    assert_eq!(c.read(node, fh, 0, 100).unwrap(), b"hello, world");
    assert_eq!(c.read(node, fh, 7, 3).unwrap(), b"wor");
    c.release(node, fh).unwrap();
    assert_eq!(
        fs::read(s.share.join("hello.txt")).unwrap(),
        b"hello, world"
    );
    let meta = fs::metadata(s.share.join("hello.txt")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);

    // Opened again by node: read-only refuses writes (the host's EBADF).
    let fh = c.open(node, libc::O_RDONLY).unwrap();
    assert_eq!(c.read(node, fh, 0, 5).unwrap(), b"hello");
    assert_eq!(c.write(node, fh, 0, b"x"), Err(libc::EBADF));
    c.release(node, fh).unwrap();
    // Released twice: nothing left to release (as after a restart).
    assert_eq!(c.release(node, fh), Ok(Vec::new()));
    assert_eq!(c.read(node, fh, 0, 5), Err(libc::EIO), "read after release");

    let (same, mode, size) = c.lookup(ROOT_ID, b"hello.txt").unwrap();
    assert_eq!((same, mode & libc::S_IFMT, size), (node, libc::S_IFREG, 12));
    c.named(op::UNLINK, ROOT_ID, &[], &[b"hello.txt"]).unwrap();
    assert!(!s.share.join("hello.txt").exists());
    assert_eq!(c.lookup(ROOT_ID, b"hello.txt"), Err(libc::ENOENT));
    // Its node is stale to open now.
    assert_eq!(c.open(node, libc::O_RDONLY), Err(libc::ENOENT));
}

#[test]
fn names_that_are_not_one_component_are_refused() {
    let s = Scratch::new();
    let mut c = Client::new(&s.share, Options::default());
    for name in [&b".."[..], b".", b"a/b", b"../outside", b"/etc/passwd"] {
        assert_eq!(c.lookup(ROOT_ID, name), Err(libc::EINVAL), "{name:?}");
        assert_eq!(
            c.create(ROOT_ID, name, 0o600),
            Err(libc::EINVAL),
            "{name:?}"
        );
        assert_eq!(c.mkdir(ROOT_ID, name, 0o700), Err(libc::EINVAL), "{name:?}");
    }
    assert_eq!(c.lookup(ROOT_ID, &[b'a'; 256]), Err(libc::ENAMETOOLONG));
    // No terminating NUL, an empty name.
    assert_eq!(c.call(op::LOOKUP, ROOT_ID, b"abc"), Err(libc::EINVAL));
    assert_eq!(c.call(op::LOOKUP, ROOT_ID, b"\0"), Err(libc::EINVAL));
    assert_eq!(fs::read(s.outside()).unwrap(), b"secret");
}

#[test]
fn symlinks_are_stored_and_read_but_never_followed() {
    let s = Scratch::new();
    std::os::unix::fs::symlink(s.outside(), s.share.join("out")).unwrap();
    std::os::unix::fs::symlink("/etc", s.share.join("etc")).unwrap();
    let mut c = Client::new(&s.share, Options::default());
    let (node, mode, _) = c.lookup(ROOT_ID, b"out").unwrap();
    assert_eq!(mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(
        c.call(op::READLINK, node, &[]).unwrap(),
        s.outside().as_os_str().as_encoded_bytes()
    );
    assert_eq!(c.open(node, libc::O_RDONLY), Err(libc::ELOOP));
    assert_eq!(
        c.open(node, libc::O_WRONLY | libc::O_TRUNC),
        Err(libc::ELOOP)
    );
    let (etc, _, _) = c.lookup(ROOT_ID, b"etc").unwrap();
    // A lookup below a symlink is a lookup in a non-directory.
    assert_eq!(c.lookup(etc, b"passwd"), Err(libc::ENOTDIR));
    assert_eq!(c.create(etc, b"x", 0o600), Err(libc::ENOTDIR));
    // Changing a symlink's size or mode is refused; the target is untouched.
    let mut w = Writer::new();
    setattr_body(&mut w, fattr::SIZE, 0, 0);
    assert_eq!(c.call(op::SETATTR, node, &w.done()), Err(libc::EINVAL));
    let mut w = Writer::new();
    setattr_body(&mut w, fattr::MODE, 0, 0o777);
    assert_eq!(c.call(op::SETATTR, node, &w.done()), Err(libc::EOPNOTSUPP));
    assert_eq!(fs::read(s.outside()).unwrap(), b"secret");
    // A symlink the guest makes is stored as given.
    c.named(op::SYMLINK, ROOT_ID, &[], &[b"mine", b"/etc/shadow"])
        .unwrap();
    assert_eq!(
        fs::read_link(s.share.join("mine")).unwrap(),
        Path::new("/etc/shadow")
    );
}

#[test]
fn hard_links_renames_and_directories() {
    let s = Scratch::new();
    let mut c = Client::new(&s.share, Options::default());
    let d = c.mkdir(ROOT_ID, b"d", 0o755).unwrap();
    let (f, fh) = c.create(d, b"f", 0o644).unwrap();
    c.write(f, fh, 0, b"data").unwrap();
    c.release(f, fh).unwrap();
    // LINK d/f to g.
    let mut w = Writer::new();
    w.u64(f);
    let out = c.named(op::LINK, ROOT_ID, &w.done(), &[b"g"]).unwrap();
    assert_eq!(entry(&out).0, f, "one node for one inode");
    assert_eq!(fs::metadata(s.share.join("g")).unwrap().nlink(), 2);
    // RENAME d/f to e (a sibling of d), then open it by node.
    let mut w = Writer::new();
    w.u64(ROOT_ID);
    c.named(op::RENAME, d, &w.done(), &[b"f", b"e"]).unwrap();
    let fh = c.open(f, libc::O_RDONLY).unwrap();
    assert_eq!(c.read(f, fh, 0, 10).unwrap(), b"data");
    c.release(f, fh).unwrap();
    // RENAME2 with NOREPLACE refuses an existing target.
    let mut w = Writer::new();
    w.u64(ROOT_ID).u32(libc::RENAME_NOREPLACE).u32(0);
    assert_eq!(
        c.named(op::RENAME2, ROOT_ID, &w.done(), &[b"e", b"g"]),
        Err(libc::EEXIST)
    );
    // Whiteouts are not for guests.
    let mut w = Writer::new();
    w.u64(ROOT_ID).u32(libc::RENAME_WHITEOUT).u32(0);
    assert_eq!(
        c.named(op::RENAME2, ROOT_ID, &w.done(), &[b"e", b"h"]),
        Err(libc::EINVAL)
    );
    // No link of a directory; rmdir of a non-empty one fails as on the host.
    let mut w = Writer::new();
    w.u64(d);
    assert_eq!(
        c.named(op::LINK, ROOT_ID, &w.done(), &[b"dd"]),
        Err(libc::EPERM)
    );
    c.create(d, b"x", 0o600).unwrap();
    assert_eq!(
        c.named(op::RMDIR, ROOT_ID, &[], &[b"d"]),
        Err(libc::ENOTEMPTY)
    );
    c.named(op::UNLINK, d, &[], &[b"x"]).unwrap();
    c.named(op::RMDIR, ROOT_ID, &[], &[b"d"]).unwrap();
    assert!(!s.share.join("d").exists());
}

fn setattr_body(w: &mut Writer, valid: u32, size: u64, mode: u32) {
    w.u32(valid)
        .u32(0)
        .u64(0)
        .u64(size)
        .u64(0)
        .u64(1_000_000)
        .u64(2_000_000)
        .u64(0)
        .u32(0)
        .u32(0)
        .u32(0)
        .u32(mode)
        .u32(0)
        .u32(1234)
        .u32(5678)
        .u32(0);
}

#[test]
fn setattr_changes_size_mode_owner_and_times() {
    let s = Scratch::new();
    fs::write(s.share.join("f"), vec![7u8; 10_000]).unwrap();
    let mut c = Client::new(&s.share, Options::default());
    let (f, _, size) = c.lookup(ROOT_ID, b"f").unwrap();
    assert_eq!(size, 10_000);
    let mut w = Writer::new();
    setattr_body(
        &mut w,
        fattr::SIZE | fattr::MODE | fattr::ATIME | fattr::MTIME,
        100,
        0o600,
    );
    let out = c.call(op::SETATTR, f, &w.done()).unwrap();
    assert_eq!(out.len(), 104);
    let meta = fs::metadata(s.share.join("f")).unwrap();
    assert_eq!(meta.len(), 100);
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    assert_eq!(meta.mtime(), 2_000_000);
    assert_eq!(meta.atime(), 1_000_000);
    if nix_is_root() {
        let mut w = Writer::new();
        setattr_body(&mut w, fattr::UID | fattr::GID, 0, 0);
        c.call(op::SETATTR, f, &w.done()).unwrap();
        let meta = fs::metadata(s.share.join("f")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
    }
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn created_files_belong_to_the_caller() {
    if !nix_is_root() {
        return;
    }
    let s = Scratch::new();
    let mut c = Client::new(&s.share, Options::default());
    c.uid = 1000;
    c.gid = 1001;
    c.create(ROOT_ID, b"f", 0o644).unwrap();
    c.mkdir(ROOT_ID, b"d", 0o755).unwrap();
    c.named(op::SYMLINK, ROOT_ID, &[], &[b"l", b"f"]).unwrap();
    for name in ["f", "d", "l"] {
        let meta = fs::symlink_metadata(s.share.join(name)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (1000, 1001), "{name}");
    }
}

#[test]
fn a_directory_of_a_thousand_files_lists_whole_across_calls() {
    let s = Scratch::new();
    for i in 0..1000 {
        fs::write(s.share.join(format!("file-{i:04}")), b"").unwrap();
    }
    for plus in [false, true] {
        let mut c = Client::new(&s.share, Options::default());
        let fh = u64::from_le_bytes(
            c.call(op::OPENDIR, ROOT_ID, &[0; 8]).unwrap()[0..8]
                .try_into()
                .unwrap(),
        );
        let mut names = Vec::new();
        let mut offset = 0;
        loop {
            let got = c.readdir(fh, offset, 4096, plus).unwrap();
            let Some(last) = got.last() else { break };
            offset = last.1;
            for (name, _, node) in got {
                if plus && name != "." && name != ".." {
                    assert_ne!(node, 0, "{name}");
                }
                names.push(name);
            }
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 1002, "plus {plus}");
        // READDIRPLUS looked each file up once: 1001 nodes held.
        assert_eq!(c.server.inodes(), if plus { 1001 } else { 1 });
        c.release(ROOT_ID, fh).unwrap();
    }
}

#[test]
fn forgotten_nodes_are_let_go_and_the_table_is_bounded() {
    let s = Scratch::new();
    fs::create_dir(s.share.join("d")).unwrap();
    for i in 0..3 {
        fs::write(s.share.join(format!("d/{i}")), b"").unwrap();
    }
    let opts = Options {
        max_inodes: 4,
        max_handles: 1,
        ..Options::default()
    };
    let mut c = Client::new(&s.share, opts);
    let (d, _, _) = c.lookup(ROOT_ID, b"d").unwrap();
    let (a, _, _) = c.lookup(d, b"0").unwrap();
    let (b, _, _) = c.lookup(d, b"1").unwrap();
    assert_eq!(c.server.inodes(), 4);
    assert_eq!(c.lookup(d, b"2"), Err(libc::ENFILE));
    // Looked up twice, forgotten once: still held.
    c.lookup(d, b"0").unwrap();
    c.forget(a, 1);
    assert_eq!(c.server.inodes(), 4);
    c.forget(a, 1);
    assert_eq!(c.server.inodes(), 3);
    // The directory stays while a child holds it, even once forgotten.
    c.forget(d, 1);
    assert_eq!(c.server.inodes(), 3);
    c.forget(b, 1);
    assert_eq!(c.server.inodes(), 1);
    // Forgetting the root or unknown nodes does nothing.
    c.forget(ROOT_ID, 100);
    c.forget(999, 1);
    assert_eq!(c.server.inodes(), 1);
    assert_eq!(c.lookup(d, b"2"), Err(libc::ESTALE), "a forgotten node");
    // One handle at most.
    let fh = u64::from_le_bytes(
        c.call(op::OPENDIR, ROOT_ID, &[0; 8]).unwrap()[0..8]
            .try_into()
            .unwrap(),
    );
    assert_eq!(c.call(op::OPENDIR, ROOT_ID, &[0; 8]), Err(libc::ENFILE));
    c.release(ROOT_ID, fh).unwrap();
}

#[test]
fn a_read_only_share_refuses_every_change() {
    let s = Scratch::new();
    fs::write(s.share.join("f"), b"keep").unwrap();
    let opts = Options {
        read_only: true,
        ..Options::default()
    };
    let mut c = Client::new(&s.share, opts);
    let (f, _, _) = c.lookup(ROOT_ID, b"f").unwrap();
    assert_eq!(c.create(ROOT_ID, b"g", 0o600), Err(libc::EROFS));
    assert_eq!(c.mkdir(ROOT_ID, b"d", 0o700), Err(libc::EROFS));
    assert_eq!(c.named(op::UNLINK, ROOT_ID, &[], &[b"f"]), Err(libc::EROFS));
    assert_eq!(c.open(f, libc::O_RDWR), Err(libc::EROFS));
    assert_eq!(c.open(f, libc::O_RDONLY | libc::O_TRUNC), Err(libc::EROFS));
    let mut w = Writer::new();
    setattr_body(&mut w, fattr::SIZE, 0, 0);
    assert_eq!(c.call(op::SETATTR, f, &w.done()), Err(libc::EROFS));
    let fh = c.open(f, libc::O_RDONLY).unwrap();
    assert_eq!(c.read(f, fh, 0, 10).unwrap(), b"keep");
    assert_eq!(c.write(f, fh, 0, b"x"), Err(libc::EROFS));
    assert_eq!(fs::read(s.share.join("f")).unwrap(), b"keep");
    assert_eq!(fs::read_dir(&s.share).unwrap().count(), 1);
}

#[test]
fn device_nodes_cannot_be_made() {
    let s = Scratch::new();
    let mut c = Client::new(&s.share, Options::default());
    for kind in [libc::S_IFCHR, libc::S_IFBLK] {
        let mut w = Writer::new();
        // /dev/mem is 1:1.
        w.u32(kind | 0o666).u32(0x101).u32(0).u32(0);
        assert_eq!(
            c.named(op::MKNOD, ROOT_ID, &w.done(), &[b"mem"]),
            Err(libc::EPERM)
        );
    }
    let mut w = Writer::new();
    w.u32(libc::S_IFIFO | 0o600).u32(0).u32(0).u32(0);
    c.named(op::MKNOD, ROOT_ID, &w.done(), &[b"fifo"]).unwrap();
}

#[test]
fn malformed_requests_get_errors_not_panics() {
    let s = Scratch::new();
    let opts = Options::default();
    let dir = fs::File::open(&s.share).unwrap();
    let mut server = Server::new(dir.as_fd(), opts).unwrap();
    // Too short for a header: no reply at all.
    assert!(server.handle(&[1, 2, 3], ROOM).is_none());
    // Before INIT, everything else fails with EIO.
    let mut w = Writer::new();
    InHeader {
        len: 40,
        opcode: op::GETATTR,
        unique: 9,
        nodeid: ROOT_ID,
        ..InHeader::default()
    }
    .write(&mut w);
    let out = server.handle(&w.done(), ROOM).unwrap();
    assert_eq!(
        i32::from_le_bytes(out[4..8].try_into().unwrap()),
        -libc::EIO
    );

    let mut c = Client::new(&s.share, Options::default());
    // A length past what came, and one shorter than a header.
    for len in [1000u32, 10] {
        let mut w = Writer::new();
        InHeader {
            len,
            opcode: op::GETATTR,
            unique: 5,
            nodeid: ROOT_ID,
            ..InHeader::default()
        }
        .write(&mut w);
        let out = c.server.handle(&w.done(), ROOM).unwrap();
        assert_eq!(
            i32::from_le_bytes(out[4..8].try_into().unwrap()),
            -libc::EINVAL
        );
    }
    // Unknown operations, unknown nodes and handles, short bodies.
    assert_eq!(c.call(9999, ROOT_ID, &[]), Err(libc::ENOSYS));
    assert_eq!(c.call(op::GETATTR, 12345, &[0; 16]), Err(libc::ESTALE));
    assert_eq!(c.read(ROOT_ID, 777, 0, 10), Err(libc::EIO));
    assert_eq!(c.call(op::READ, ROOT_ID, &[0; 4]), Err(libc::EINVAL));
    assert_eq!(c.call(op::SETATTR, ROOT_ID, &[0; 20]), Err(libc::EINVAL));
    // A WRITE whose size is past its data.
    let mut w = Writer::new();
    w.u64(1)
        .u64(0)
        .u32(100)
        .u32(0)
        .u64(0)
        .u32(0)
        .u32(0)
        .bytes(b"abc");
    assert_eq!(c.call(op::WRITE, ROOT_ID, &w.done()), Err(libc::EINVAL));
    // A reply that does not fit the guest's buffers.
    let out = c.raw(op::GETATTR, ROOT_ID, &[0; 16], 40).unwrap();
    assert_eq!(
        i32::from_le_bytes(out[4..8].try_into().unwrap()),
        -libc::ERANGE
    );
    // Statfs and getattr of the root work.
    assert_eq!(c.call(op::STATFS, ROOT_ID, &[]).unwrap().len(), 80);
    assert_eq!(c.call(op::GETATTR, ROOT_ID, &[0; 16]).unwrap().len(), 104);
}

mod device {
    use super::*;
    use crate::fs::{Fs, DEVICE_ID_FS};
    use crate::test_queue::{raw_chains, used};
    use crate::virtio::{GuestMemory, VirtioDevice, TRANSPORT_FEATURES};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress};

    const REQ: u64 = 0x10_0000;
    const REPLY: u64 = 0x12_0000;

    fn request(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
        let mut w = Writer::new();
        InHeader {
            len: u32::try_from(40 + body.len()).unwrap(),
            opcode,
            unique,
            nodeid,
            ..InHeader::default()
        }
        .write(&mut w);
        w.bytes(body);
        w.done()
    }

    /// Runs `chains` (request bytes placed at REQ, each reply given
    /// `room` bytes at REPLY) on queue `index`; the used entries and
    /// the first reply's bytes.
    fn run(
        fs: &mut Fs,
        index: usize,
        req: &[u8],
        chains: &[Vec<(u64, u32, bool)>],
    ) -> (Vec<(u32, u32)>, Vec<u8>) {
        let m = GuestMemory::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        m.write_slice(req, GuestAddress(REQ)).unwrap();
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(&raw_chains(chains, 0), 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        fs.process_queue(index, &mut q, &m).unwrap();
        let u = used(&vq);
        let mut out = vec![0u8; 256];
        m.read_slice(&mut out, GuestAddress(REPLY)).unwrap();
        (u, out)
    }

    #[test]
    fn requests_come_and_replies_go_through_the_queues() {
        let s = Scratch::new();
        fs::write(s.share.join("f"), b"x").unwrap();
        let dir = fs::File::open(&s.share).unwrap();
        let mut fs_dev = Fs::new("share", dir.as_fd(), Options::default()).unwrap();
        assert_eq!(fs_dev.device_type(), DEVICE_ID_FS);
        let config = fs_dev.config();
        assert_eq!(&config[..6], b"share\0");
        assert_eq!(config.len(), 40);
        assert_eq!(&config[36..], &1u32.to_le_bytes());
        fs_dev.activate(TRANSPORT_FEATURES).unwrap();

        let mut w = Writer::new();
        w.u32(7).u32(38).u32(0).u32(0);
        let init = request(op::INIT, 1, 0, &w.done());
        // The request split over two readable descriptors, the reply over
        // two writable ones.
        let len = u32::try_from(init.len()).unwrap();
        let (u, out) = run(
            &mut fs_dev,
            1,
            &init,
            &[vec![
                (REQ, 10, false),
                (REQ + 10, len - 10, false),
                (REPLY, 20, true),
                (REPLY + 20, 200, true),
            ]],
        );
        assert_eq!(u, vec![(0, 80)]);
        assert_eq!(&out[0..4], &80u32.to_le_bytes());
        assert_eq!(&out[8..16], &1u64.to_le_bytes());
        assert_eq!(&out[16..20], &7u32.to_le_bytes());

        let look = request(op::LOOKUP, 2, ROOT_ID, b"f\0");
        let len = u32::try_from(look.len()).unwrap();
        let (u, out) = run(
            &mut fs_dev,
            1,
            &look,
            &[vec![(REQ, len, false), (REPLY, 256, true)]],
        );
        assert_eq!(u, vec![(0, 144)]);
        let node = u64::from_le_bytes(out[16..24].try_into().unwrap());

        // FORGET on the high-priority queue: used, with nothing written.
        let mut w = Writer::new();
        w.u64(1);
        let forget = request(op::FORGET, 3, node, &w.done());
        let len = u32::try_from(forget.len()).unwrap();
        let (u, _) = run(&mut fs_dev, 0, &forget, &[vec![(REQ, len, false)]]);
        assert_eq!(u, vec![(0, 0)]);

        // Malformed chains: readable after writable, outside memory, too
        // big; each dropped and the next one served.
        let (u, _) = run(
            &mut fs_dev,
            1,
            &look,
            &[
                vec![(REPLY, 256, true), (REQ, len, false)],
                vec![(REQ, len, false), (0x1f_ff00, 0x1000, true)],
                vec![(REQ, 0x10_0000, false), (REPLY, 256, true)],
                vec![(REQ, len, false), (REPLY, 256, true)],
            ],
        );
        assert_eq!(u, vec![(0, 0), (2, 0), (4, 0), (6, 144)]);
        assert_eq!(fs_dev.stats().bad_chains, 3);
        assert!(fs_dev.report().is_some());
        assert!(fs_dev
            .process_queue(
                2,
                &mut Queue::new(16).unwrap(),
                &GuestMemory::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap()
            )
            .is_err());

        // Saved and restored: the new instance answers without a new INIT.
        let state = fs_dev.save_state();
        let mut fresh = Fs::new("share", dir.as_fd(), Options::default()).unwrap();
        fresh.activate(TRANSPORT_FEATURES).unwrap();
        fresh.restore_state(&state).unwrap();
        assert_eq!(fresh.stats(), fs_dev.stats());
        let (u, out) = run(
            &mut fresh,
            1,
            &look,
            &[vec![(REQ, len, false), (REPLY, 256, true)]],
        );
        assert_eq!(u, vec![(0, 144)]);
        assert_eq!(&out[4..8], &0i32.to_le_bytes());
        assert!(fresh.restore_state(&state[..3]).is_err());
        assert!(Fs::new("", dir.as_fd(), Options::default()).is_err());
        assert!(Fs::new(&"t".repeat(37), dir.as_fd(), Options::default()).is_err());
    }
}
