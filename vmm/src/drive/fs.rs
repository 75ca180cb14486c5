//! virtio-fs: FUSE requests on the device's request queue, as a guest's
//! kernel sends them, against a host directory (`--fs` as `skvm run` takes
//! it). Sequential reads and writes of one file, or one metadata operation
//! per request (create, stat, unlink): the device's own cost per request,
//! which a guest on an emulating host hides behind its kernel.
//!
//! Each request is two descriptors: the readable request (header,
//! arguments, and a write's data) and the writable reply (header, body,
//! and a read's data). The files a run makes or needs are named
//! `skvm-drive-PID*` in the shared directory; the harness makes the ones a
//! run reads or removes from the host side before the device starts, and
//! removes every one of them at the end, failed runs included.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use devices::fs::proto::{self, op, InHeader, Writer};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::queue::{Ring, BUFFERS, DESC_F_NEXT, DESC_F_WRITE, QUEUE0, QUEUE1, STRIDE};
use super::{DriveArgs, Figures, Op};
use crate::virtio_pci::DeviceEvents;

/// The largest read or write (the device's `max_write`).
pub const MAX_SIZE: u32 = devices::fs::server::MAX_WRITE;
/// The most metadata requests in one run: each file made or looked up is a
/// node the device holds until the guest forgets it (at most 16 384).
pub const MAX_META: u32 = 10_000;
/// High-priority queue (FORGET; unused here) and request queue, at the
/// device's size.
pub const HIPRIO: Ring = QUEUE0.sized(devices::fs::QUEUE_SIZE);
pub const REQUESTS: Ring = QUEUE1.sized(devices::fs::QUEUE_SIZE);
/// Descriptors per request: the request, the reply.
const DESCS: u16 = 2;
/// Where a slot's reply goes, past its request.
const REPLY: u64 = 0x8_0000;
/// Bytes of a file read or written, at most: offsets wrap at it.
const SPAN: u64 = 64 << 20;
/// `fuse_entry_out` and `fuse_open_out`.
const ENTRY_LEN: u32 = 128;
const OPEN_LEN: u32 = 16;

/// The shared directory and the names a run uses in it.
pub struct Host {
    dir: PathBuf,
    read_only: bool,
    prefix: String,
    /// Names made so far (removed at drop).
    made: u32,
}

impl Host {
    /// The share at `dir`.
    pub fn new(dir: PathBuf, read_only: bool) -> Host {
        Host {
            dir,
            read_only,
            prefix: format!("skvm-drive-{}", std::process::id()),
            made: 0,
        }
    }

    /// The file read or written.
    fn data(&self) -> String {
        format!("{}.data", self.prefix)
    }

    /// Metadata request `i`'s file.
    fn name(&self, i: u32) -> String {
        format!("{}-{i}", self.prefix)
    }

    /// Bytes of the file a run reads or writes: the run's bytes, at most
    /// [`SPAN`], a whole number of requests.
    fn span(args: &DriveArgs) -> u64 {
        let size = u64::from(args.size());
        (u64::from(args.requests) * size).min(SPAN / size * size)
    }

    /// Refuses what the share cannot do, and makes on the host side what
    /// the run needs before it starts: the file a read run reads (each
    /// request's first 8 bytes its offset), the files stat and unlink runs
    /// act on.
    pub fn prepare(&mut self, args: &DriveArgs, op: Op) -> Result<()> {
        if self.read_only && !matches!(op, Op::Read | Op::Stat) {
            bail!("--op {}: the share is read-only", op.name());
        }
        self.made = args.requests;
        let at = |name: &str| self.dir.join(name);
        match op {
            Op::Read => {
                let size = u64::from(args.size());
                let mut bytes = vec![0u8; usize::try_from(Self::span(args))?];
                for (i, chunk) in bytes.chunks_mut(usize::try_from(size)?).enumerate() {
                    let offset = u64::try_from(i)? * size;
                    chunk[..8].copy_from_slice(&offset.to_le_bytes());
                }
                std::fs::write(at(&self.data()), bytes)
                    .with_context(|| format!("cannot write {}", at(&self.data()).display()))?;
            }
            Op::Stat | Op::Unlink => {
                for i in 0..args.requests {
                    let path = at(&self.name(i));
                    std::fs::File::create(&path)
                        .with_context(|| format!("cannot create {}", path.display()))?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Checks from the host side what a write run wrote: every request's
    /// first 8 bytes, its offset, and the file's size.
    fn check_written(&self, args: &DriveArgs) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let path = self.dir.join(self.data());
        let f = std::fs::File::open(&path)?;
        let span = Self::span(args);
        ensure!(
            f.metadata()?.len() == span,
            "{} holds {} bytes, not the {span} written",
            path.display(),
            f.metadata()?.len()
        );
        let size = u64::from(args.size());
        let mut word = [0u8; 8];
        for offset in (0..span).step_by(usize::try_from(size)?) {
            f.read_exact_at(&mut word, offset)?;
            ensure!(
                u64::from_le_bytes(word) == offset,
                "{} at {offset} does not hold what the device was asked to write",
                path.display()
            );
        }
        Ok(())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.dir.join(self.data()));
        for i in 0..self.made {
            let _ = std::fs::remove_file(self.dir.join(self.name(i)));
        }
    }
}

/// One request in slot `slot`: its opcode, node, arguments (with a
/// write's data already in place after them, `data` bytes), and the reply
/// body it must get.
struct Request<'a> {
    opcode: u32,
    nodeid: u64,
    args: &'a [u8],
    data: u32,
    reply: u32,
}

fn slot_base(slot: u16) -> u64 {
    BUFFERS + u64::from(slot) * STRIDE
}

/// Writes request `r` as the `unique`th into slot `slot` and its two
/// descriptors.
fn post(mem: &GuestMemoryMmap, slot: u16, unique: u64, r: &Request<'_>) -> Result<()> {
    let base = slot_base(slot);
    let args = u32::try_from(r.args.len())?;
    let len = u32::try_from(proto::IN_HEADER_LEN)? + args + r.data;
    let mut w = Writer::new();
    InHeader {
        len,
        opcode: r.opcode,
        unique,
        nodeid: r.nodeid,
        pid: 1,
        ..InHeader::default()
    }
    .write(&mut w);
    w.bytes(r.args);
    mem.write_slice(&w.buf, GuestAddress(base))?;
    // A stale reply must not pass for this one.
    mem.write_slice(&[0u8; proto::OUT_HEADER_LEN], GuestAddress(base + REPLY))?;
    let head = slot * DESCS;
    REQUESTS.write_desc(mem, head, base, len, DESC_F_NEXT)?;
    let out = u32::try_from(proto::OUT_HEADER_LEN)? + r.reply;
    REQUESTS.write_desc(mem, head + 1, base + REPLY, out, DESC_F_WRITE)
}

/// Checks slot `slot`'s reply to request `unique` (`what`, for errors),
/// `used` bytes long; its body.
fn answer(mem: &GuestMemoryMmap, slot: u16, unique: u64, used: u32, what: &str) -> Result<Vec<u8>> {
    let at = slot_base(slot) + REPLY;
    let len: u32 = mem.read_obj(GuestAddress(at))?;
    let error: i32 = mem.read_obj(GuestAddress(at + 4))?;
    let id: u64 = mem.read_obj(GuestAddress(at + 8))?;
    ensure!(
        id == unique,
        "{what}: the reply names request {id}, not {unique}"
    );
    if error != 0 {
        let e = std::io::Error::from_raw_os_error(error.saturating_neg());
        if error == -libc::EACCES {
            let (uid, gid) = sandbox::jail::outside_ids();
            bail!(
                "{what}: the device answered {e}: it runs as host user {uid} (group {gid}), \
                 which must be able to write the share"
            );
        }
        bail!("{what}: the device answered {e}");
    }
    ensure!(
        len == used && len as usize >= proto::OUT_HEADER_LEN,
        "{what}: reply of {len} bytes, {used} used"
    );
    let mut body = vec![0u8; len as usize - proto::OUT_HEADER_LEN];
    mem.read_slice(&mut body, GuestAddress(at + proto::OUT_HEADER_LEN as u64))?;
    Ok(body)
}

/// The driver's state: running positions in the request queue and the
/// next request id.
struct Driver<'a> {
    mem: &'a GuestMemoryMmap,
    events: &'a DeviceEvents,
    next_avail: u16,
    unique: u64,
}

impl Driver<'_> {
    /// One request, alone, answered: its reply body.
    fn call(&mut self, r: &Request<'_>, what: &str) -> Result<Vec<u8>> {
        self.unique += 1;
        post(self.mem, 0, self.unique, r)?;
        let used = REQUESTS
            .submit_one(self.mem, self.events, self.next_avail)
            .with_context(|| what.to_owned())?;
        self.next_avail = self.next_avail.wrapping_add(1);
        answer(self.mem, 0, self.unique, used, what)
    }
}

fn u64_at(b: &[u8], at: usize) -> Result<u64> {
    let word = b
        .get(at..at + 8)
        .context("reply too short")?
        .try_into()
        .context("reply too short")?;
    Ok(u64::from_le_bytes(word))
}

fn name_arg(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.push(0);
    v
}

/// `fuse_read_in` / `fuse_write_in` (same layout).
fn io_args(fh: u64, offset: u64, size: u32) -> Vec<u8> {
    let mut w = Writer::new();
    w.u64(fh).u64(offset).u32(size).u32(0).u64(0).u32(0).u32(0);
    w.done()
}

/// The benchmark: INIT, the run's file opened (read, write), then
/// `args.requests` requests, `args.depth` per kick.
pub fn drive(
    mem: &GuestMemoryMmap,
    events: &DeviceEvents,
    host: &Host,
    args: &DriveArgs,
    op: Op,
) -> Result<Figures> {
    let mut d = Driver {
        mem,
        events,
        next_avail: 0,
        unique: 0,
    };
    let mut init = Writer::new();
    init.u32(proto::KERNEL_VERSION)
        .u32(proto::KERNEL_MINOR_VERSION)
        .u32(MAX_SIZE)
        .u32(proto::init_flags::BIG_WRITES | proto::init_flags::MAX_PAGES);
    init.bytes(&[0u8; 48]);
    d.call(
        &Request {
            opcode: op::INIT,
            nodeid: 0,
            args: &init.buf,
            data: 0,
            reply: 64,
        },
        "INIT",
    )?;
    let fh = match op {
        Op::Write => {
            let mut a = Writer::new();
            let flags = libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC;
            a.u32(flags.cast_unsigned()).u32(0o100_644).u32(0).u32(0);
            a.bytes(&name_arg(&host.data()));
            let body = d.call(
                &Request {
                    opcode: op::CREATE,
                    nodeid: proto::ROOT_ID,
                    args: &a.buf,
                    data: 0,
                    reply: ENTRY_LEN + OPEN_LEN,
                },
                &format!("CREATE {}", host.data()),
            )?;
            u64_at(&body, ENTRY_LEN as usize)?
        }
        Op::Read => {
            let what = format!("LOOKUP {}", host.data());
            let body = d.call(
                &Request {
                    opcode: op::LOOKUP,
                    nodeid: proto::ROOT_ID,
                    args: &name_arg(&host.data()),
                    data: 0,
                    reply: ENTRY_LEN,
                },
                &what,
            )?;
            let node = u64_at(&body, 0)?;
            let mut a = Writer::new();
            a.u32(libc::O_RDONLY.cast_unsigned()).u32(0);
            let body = d.call(
                &Request {
                    opcode: op::OPEN,
                    nodeid: node,
                    args: &a.buf,
                    data: 0,
                    reply: OPEN_LEN,
                },
                &format!("OPEN {}", host.data()),
            )?;
            u64_at(&body, 0)?
        }
        _ => 0,
    };
    let figures = timed(&mut d, host, args, op, fh)?;
    if matches!(op, Op::Read | Op::Write) {
        let mut a = Writer::new();
        a.u64(fh).u32(0).u32(0).u64(0);
        d.call(
            &Request {
                opcode: op::RELEASE,
                nodeid: 0,
                args: &a.buf,
                data: 0,
                reply: 0,
            },
            "RELEASE",
        )?;
    }
    if op == Op::Write {
        host.check_written(args)?;
    }
    Ok(figures)
}

/// The timed requests.
fn timed(d: &mut Driver<'_>, host: &Host, args: &DriveArgs, op: Op, fh: u64) -> Result<Figures> {
    let size = args.size();
    let span = Host::span(args);
    let mut latencies = Vec::with_capacity(usize::try_from(args.requests).unwrap_or(0));
    let mut done: u32 = 0;
    let mut bytes: u64 = 0;
    let start = Instant::now();
    while done < args.requests {
        let batch = u16::try_from((args.requests - done).min(u32::from(args.depth))).unwrap_or(1);
        let first = d.unique + 1;
        for slot in 0..batch {
            let n = done + u32::from(slot);
            let offset = u64::from(n) * u64::from(size) % span;
            let (opcode, nodeid, a, data, reply) = match op {
                Op::Read => (op::READ, 0, io_args(fh, offset, size), 0, size),
                Op::Write => {
                    let at = slot_base(slot) + proto::IN_HEADER_LEN as u64 + 40;
                    d.mem.write_obj(offset, GuestAddress(at))?;
                    (op::WRITE, 0, io_args(fh, offset, size), size, 8)
                }
                Op::Create => {
                    let mut a = Writer::new();
                    a.u32(0o100_644).u32(0).u32(0).u32(0);
                    a.bytes(&name_arg(&host.name(n)));
                    (op::MKNOD, proto::ROOT_ID, a.done(), 0, ENTRY_LEN)
                }
                Op::Stat => {
                    let a = name_arg(&host.name(n));
                    (op::LOOKUP, proto::ROOT_ID, a, 0, ENTRY_LEN)
                }
                Op::Unlink => (op::UNLINK, proto::ROOT_ID, name_arg(&host.name(n)), 0, 0),
                other => bail!("--op {} is not for fs devices", other.name()),
            };
            let r = Request {
                opcode,
                nodeid,
                args: &a,
                data,
                reply,
            };
            post(d.mem, slot, first + u64::from(slot), &r)?;
            REQUESTS.offer(d.mem, d.next_avail.wrapping_add(slot), slot * DESCS)?;
        }
        let seen = d.next_avail;
        d.next_avail = d.next_avail.wrapping_add(batch);
        d.unique += u64::from(batch);
        let kicked = Instant::now();
        REQUESTS.publish_and_wait(d.mem, d.events, d.next_avail)?;
        latencies.push(u64::try_from(kicked.elapsed().as_nanos()).unwrap_or(u64::MAX));
        for i in 0..batch {
            let (id, used) = REQUESTS.used_entry(d.mem, seen.wrapping_add(i))?;
            let per = u32::from(DESCS);
            ensure!(
                id.is_multiple_of(per) && id / per < u32::from(batch),
                "used entry names descriptor {id}"
            );
            let slot = u16::try_from(id / per)?;
            let n = done + u32::from(slot);
            let what = format!("{} request {n}", op.name());
            let body = answer(d.mem, slot, first + u64::from(slot), used, &what)?;
            match op {
                Op::Read => {
                    let offset = u64::from(n) * u64::from(size) % span;
                    ensure!(
                        body.len() == size as usize && u64_at(&body, 0)? == offset,
                        "{what}: read {} bytes at {offset}, not the file's {size}",
                        body.len()
                    );
                    bytes += u64::from(size);
                }
                Op::Write => {
                    ensure!(
                        u32::try_from(u64_at(&body, 0)? & 0xffff_ffff)? == size,
                        "{what}: the device wrote less than {size} bytes"
                    );
                    bytes += u64::from(size);
                }
                _ => {}
            }
        }
        done += u32::from(batch);
    }
    Ok(Figures {
        secs: start.elapsed().as_secs_f64(),
        latencies_ns: latencies,
        bytes,
    })
}
