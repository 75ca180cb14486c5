//! The FUSE wire format as virtio-fs carries it (Linux's
//! `include/uapi/linux/fuse.h`, protocol 7.38 in Linux 6.1): a request is
//! an in-header and its operation's arguments, read from the guest's
//! device-readable buffers; a reply is an out-header and the operation's
//! answer, written into its device-writable buffers. Everything here is
//! parsed as hostile: every read is bounds-checked and a short or malformed
//! request is an `EINVAL` answer, never a panic.

/// FUSE protocol major version skvm speaks.
pub const KERNEL_VERSION: u32 = 7;
/// The minor version skvm answers INIT with (at most the guest's).
pub const KERNEL_MINOR_VERSION: u32 = 38;
/// The node id of the share's root directory.
pub const ROOT_ID: u64 = 1;
/// Bytes of an in-header.
pub const IN_HEADER_LEN: usize = 40;
/// Bytes of an out-header.
pub const OUT_HEADER_LEN: usize = 16;

/// Operation codes (`enum fuse_opcode`).
#[allow(missing_docs)]
pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
    pub const SYNCFS: u32 = 50;
}

/// INIT flags (`FUSE_*` of `fuse_init_in.flags`) skvm looks at or grants.
#[allow(missing_docs)]
pub mod init_flags {
    pub const ASYNC_READ: u32 = 1 << 0;
    pub const ATOMIC_O_TRUNC: u32 = 1 << 3;
    pub const BIG_WRITES: u32 = 1 << 5;
    pub const DONT_MASK: u32 = 1 << 6;
    pub const AUTO_INVAL_DATA: u32 = 1 << 12;
    pub const DO_READDIRPLUS: u32 = 1 << 13;
    pub const READDIRPLUS_AUTO: u32 = 1 << 14;
    pub const PARALLEL_DIROPS: u32 = 1 << 18;
    pub const MAX_PAGES: u32 = 1 << 22;
    pub const SETXATTR_EXT: u32 = 1 << 29;
    pub const INIT_EXT: u32 = 1 << 30;
}

/// SETATTR's `valid` bits (`FATTR_*`).
#[allow(missing_docs)]
pub mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
    pub const CTIME: u32 = 1 << 10;
}

/// A FUSE failure: the positive errno the reply carries (negated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    /// The errno of the last failed libc call.
    pub fn last() -> Self {
        Errno(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        )
    }
}

impl From<std::io::Error> for Errno {
    fn from(e: std::io::Error) -> Self {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

/// What a handler answers: the reply's body, or an errno.
pub type Answer = Result<Vec<u8>, Errno>;

/// A bounds-checked little-endian cursor over a request's bytes.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Errno> {
        if n > self.buf.len() {
            return Err(Errno(libc::EINVAL));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// The bytes not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Whether every byte was read.
    pub fn rest_is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> Result<u16, Errno> {
        let b = self.bytes(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> Result<u32, Errno> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> Result<u64, Errno> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A NUL-terminated name, without its NUL. The terminator must be
    /// there; the name may not be empty.
    pub fn cstr(&mut self) -> Result<&'a [u8], Errno> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(Errno(libc::EINVAL))?;
        let name = self.bytes(end)?;
        self.bytes(1)?;
        if name.is_empty() {
            return Err(Errno(libc::EINVAL));
        }
        Ok(name)
    }
}

/// Buffers a reply is built in, kept between requests so that serving
/// one allocates nothing once the first few have given theirs back: a
/// reply needs two at once (its body, then the header and body).
const SPARE_BUFFERS: usize = 2;
/// Larger buffers are not kept: a READ's body is at most 128 KiB.
const SPARE_MAX: usize = 256 * 1024;

thread_local! {
    static SPARE: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An empty buffer, with the room of one given back before if there is.
pub fn buffer() -> Vec<u8> {
    SPARE
        .with(|s| s.borrow_mut().pop())
        .map(|mut b| {
            b.clear();
            b
        })
        .unwrap_or_default()
}

/// Keeps `b`'s room for the next [`buffer`] (up to [`SPARE_BUFFERS`] of
/// at most [`SPARE_MAX`] bytes; others are freed).
pub fn give_back(b: Vec<u8>) {
    if b.capacity() == 0 || b.capacity() > SPARE_MAX {
        return;
    }
    SPARE.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < SPARE_BUFFERS {
            s.push(b);
        }
    });
}

/// A little-endian reply body under construction.
pub struct Writer {
    /// The bytes so far.
    pub buf: Vec<u8>,
}

impl Default for Writer {
    fn default() -> Self {
        Writer { buf: buffer() }
    }
}

impl Writer {
    /// An empty body, in a kept buffer ([`buffer`]).
    pub fn new() -> Self {
        Writer::default()
    }

    /// Appends a u16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends bytes.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }

    /// Zero bytes up to the next multiple of 8 (directory entries).
    pub fn pad8(&mut self) -> &mut Self {
        let n = self.buf.len().next_multiple_of(8);
        self.buf.resize(n, 0);
        self
    }

    /// The body.
    pub fn done(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

/// `fuse_in_header`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InHeader {
    /// Bytes of the whole request, header included.
    pub len: u32,
    /// The operation.
    pub opcode: u32,
    /// The request's id, echoed in the reply.
    pub unique: u64,
    /// The node the operation is on.
    pub nodeid: u64,
    /// The calling guest process's fs uid.
    pub uid: u32,
    /// Its fs gid.
    pub gid: u32,
    /// Its pid (in the guest).
    pub pid: u32,
    /// Length of request extensions, in 8-byte units.
    pub total_extlen: u16,
}

impl InHeader {
    /// Reads the header.
    pub fn read(r: &mut Reader<'_>) -> Result<Self, Errno> {
        let h = InHeader {
            len: r.u32()?,
            opcode: r.u32()?,
            unique: r.u64()?,
            nodeid: r.u64()?,
            uid: r.u32()?,
            gid: r.u32()?,
            pid: r.u32()?,
            total_extlen: r.u16()?,
        };
        r.u16()?;
        Ok(h)
    }

    /// Appends the header (tests and fuzzing build requests with it).
    pub fn write(&self, w: &mut Writer) {
        w.u32(self.len)
            .u32(self.opcode)
            .u64(self.unique)
            .u64(self.nodeid)
            .u32(self.uid)
            .u32(self.gid)
            .u32(self.pid)
            .u16(self.total_extlen)
            .u16(0);
    }
}

/// `fuse_out_header` followed by `body`, or by nothing when `error` is set.
pub fn reply(unique: u64, answer: &Answer) -> Vec<u8> {
    let (error, body): (i32, &[u8]) = match answer {
        Ok(b) => (0, b),
        Err(Errno(e)) => (-e, &[]),
    };
    let len = OUT_HEADER_LEN + body.len();
    let mut w = Writer::new();
    w.u32(u32::try_from(len).unwrap_or(u32::MAX))
        .u32(error.cast_unsigned())
        .u64(unique)
        .bytes(body);
    w.done()
}

/// `fuse_attr`, from a host `stat` as the guest is to see it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attr {
    /// Inode number (the host's).
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    /// Access time, seconds.
    pub atime: u64,
    /// Modification time, seconds.
    pub mtime: u64,
    /// Change time, seconds.
    pub ctime: u64,
    /// Nanoseconds of atime.
    pub atimensec: u32,
    /// Nanoseconds of mtime.
    pub mtimensec: u32,
    /// Nanoseconds of ctime.
    pub ctimensec: u32,
    /// Type and permission bits.
    pub mode: u32,
    /// Hard links.
    pub nlink: u32,
    /// Owner, as the guest sees it.
    pub uid: u32,
    /// Group, as the guest sees it.
    pub gid: u32,
    /// Device number of a device node.
    pub rdev: u32,
    /// Preferred I/O size.
    pub blksize: u32,
}

impl Attr {
    /// Appends `fuse_attr` (88 bytes).
    pub fn write(&self, w: &mut Writer) {
        w.u64(self.ino)
            .u64(self.size)
            .u64(self.blocks)
            .u64(self.atime)
            .u64(self.mtime)
            .u64(self.ctime)
            .u32(self.atimensec)
            .u32(self.mtimensec)
            .u32(self.ctimensec)
            .u32(self.mode)
            .u32(self.nlink)
            .u32(self.uid)
            .u32(self.gid)
            .u32(self.rdev)
            .u32(self.blksize)
            .u32(0);
    }
}

/// `fuse_entry_out` (128 bytes): a node id with its attributes, cached by
/// the guest for `valid_secs`.
pub fn entry_out(w: &mut Writer, nodeid: u64, attr: &Attr, valid_secs: u64) {
    w.u64(nodeid)
        .u64(0)
        .u64(valid_secs)
        .u64(valid_secs)
        .u32(0)
        .u32(0);
    attr.write(w);
}

/// `fuse_attr_out` (104 bytes).
pub fn attr_out(w: &mut Writer, attr: &Attr, valid_secs: u64) {
    w.u64(valid_secs).u32(0).u32(0);
    attr.write(w);
}

/// `fuse_open_out`.
pub fn open_out(w: &mut Writer, fh: u64, open_flags: u32) {
    w.u64(fh).u32(open_flags).u32(0);
}

/// Appends `fuse_dirent` with its name, padded to 8 bytes; false (and
/// nothing appended) when it would not fit in `room` more bytes.
pub fn dirent(w: &mut Writer, room: usize, ino: u64, off: u64, typ: u32, name: &[u8]) -> bool {
    let len = (24 + name.len()).next_multiple_of(8);
    if len > room {
        return false;
    }
    w.u64(ino)
        .u64(off)
        .u32(u32::try_from(name.len()).unwrap_or(u32::MAX))
        .u32(typ)
        .bytes(name)
        .pad8();
    true
}

/// Bytes a `fuse_direntplus` with `name` takes.
pub fn direntplus_len(name: &[u8]) -> usize {
    128 + (24 + name.len()).next_multiple_of(8)
}
