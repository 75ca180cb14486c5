//! Messages and their wire format.
//!
//! Every message is a 12-byte header and a payload, all little-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `0x4d564b53` ("SKVM") |
//! | 4 | 2 | protocol version |
//! | 6 | 2 | kind (see the crate's table) |
//! | 8 | 4 | payload length; must equal what follows |
//!
//! Payload fields are fixed-size integers, or a u16 length followed by that
//! many bytes (byte strings, UTF-8 text) or items (lists of fixed-size
//! records). Every length is checked against its cap before anything is
//! allocated, and a payload must be consumed exactly.

use crate::{
    IpcError, MAX_CONFIG, MAX_DEVICE_STATE, MAX_MESSAGE, MAX_POLL_US, MAX_QUEUES, MAX_REGIONS,
    MAX_TEXT, PROTOCOL_VERSION,
};

mod backend;
pub mod spawn;

pub use backend::{valid_kind, Backend, MAX_BACKEND_FDS, MAX_KIND, MAX_PARAMS};
pub use spawn::{IdMap, Jail, Limit, Root, SeccompAction, SpawnRequest, SpawnerReply};

const MAGIC: u32 = 0x4d56_4b53;
pub(crate) const HEADER: usize = 12;

const HELLO: u16 = 1;
const CONFIG_READ: u16 = 2;
const CONFIG_WRITE: u16 = 3;
const ACTIVATE: u16 = 4;
const RESET: u16 = 5;
const SHUTDOWN: u16 = 6;
const PAUSE: u16 = 7;
const RESUME: u16 = 8;
const RESTORE: u16 = 9;
const WELCOME: u16 = 101;
const CONFIG_DATA: u16 = 102;
const ACK: u16 = 103;
const ERROR: u16 = 104;
const CONFIG_CHANGED: u16 = 105;
const NEEDS_RESET: u16 = 106;
const FORBIDDEN_SYSCALL: u16 = 107;
const SAVED: u16 = 108;

/// A guest memory region; the memfd carrying it travels beside the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemRegion {
    /// Guest physical address of the first byte.
    pub guest_addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Offset of the first byte in the memfd.
    pub file_offset: u64,
}

/// Where the driver put a split virtqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLayout {
    /// Queue index.
    pub index: u16,
    /// Number of descriptors.
    pub size: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Available (driver) ring.
    pub avail: u64,
    /// Used (device) ring.
    pub used: u64,
}

/// Where a queue was when its device was saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueState {
    /// Where the driver put it.
    pub layout: QueueLayout,
    /// Whether event indices are in use (VIRTIO_F_RING_EVENT_IDX).
    pub event_idx: bool,
    /// The next available-ring entry the device would take.
    pub next_avail: u16,
    /// The next used-ring entry the device would fill.
    pub next_used: u16,
}

/// A device's state: what a new instance needs to carry on where the old
/// one stopped. Plain data; the device validates it on restore.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceState {
    /// Negotiated features.
    pub features: u64,
    /// The queues the driver enabled.
    pub queues: Vec<QueueState>,
    /// The model's own state (its format is the model's).
    pub device: Vec<u8>,
}

impl DeviceState {
    fn encode(&self, w: &mut Writer) -> Result<(), IpcError> {
        w.u64(self.features);
        w.count("queues", self.queues.len(), MAX_QUEUES)?;
        for q in &self.queues {
            encode_layout(w, &q.layout);
            w.buf.push(u8::from(q.event_idx));
            w.u16(q.next_avail);
            w.u16(q.next_used);
        }
        w.bytes("device state length", &self.device, MAX_DEVICE_STATE)
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, IpcError> {
        let features = r.u64()?;
        let n = r.count("queues", MAX_QUEUES, QUEUE_STATE_BYTES)?;
        let mut queues = Vec::with_capacity(n);
        for _ in 0..n {
            let layout = decode_layout(r)?;
            let event_idx = match r.array()? {
                [0] => false,
                [1] => true,
                _ => return Err(IpcError::BadValue("event index flag")),
            };
            queues.push(QueueState {
                layout,
                event_idx,
                next_avail: r.u16()?,
                next_used: r.u16()?,
            });
        }
        Ok(Self {
            features,
            queues,
            device: r.bytes("device state length", MAX_DEVICE_STATE)?,
        })
    }
}

fn encode_layout(w: &mut Writer, q: &QueueLayout) {
    w.u16(q.index);
    w.u16(q.size);
    w.u64(q.desc);
    w.u64(q.avail);
    w.u64(q.used);
}

fn decode_layout(r: &mut Reader<'_>) -> Result<QueueLayout, IpcError> {
    Ok(QueueLayout {
        index: r.u16()?,
        size: r.u16()?,
        desc: r.u64()?,
        avail: r.u64()?,
        used: r.u64()?,
    })
}

/// A one-byte flag: 0 or 1, nothing else.
fn flag(r: &mut Reader<'_>, what: &'static str) -> Result<bool, IpcError> {
    match r.array()? {
        [0] => Ok(false),
        [1] => Ok(true),
        _ => Err(IpcError::BadValue(what)),
    }
}

fn encode_regions(w: &mut Writer, regions: &[MemRegion]) -> Result<(), IpcError> {
    w.count("memory regions", regions.len(), MAX_REGIONS)?;
    for r in regions {
        w.u64(r.guest_addr);
        w.u64(r.size);
        w.u64(r.file_offset);
    }
    Ok(())
}

fn decode_regions(r: &mut Reader<'_>) -> Result<Vec<MemRegion>, IpcError> {
    let n = r.count("memory regions", MAX_REGIONS, REGION_BYTES)?;
    let mut regions = Vec::with_capacity(n);
    for _ in 0..n {
        regions.push(MemRegion {
            guest_addr: r.u64()?,
            size: r.u64()?,
            file_offset: r.u64()?,
        });
    }
    Ok(regions)
}

/// What a device is, as it tells the VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Virtio device ID (1 net, 2 block, 4 entropy).
    pub device_type: u32,
    /// Number of virtqueues.
    pub num_queues: u16,
    /// Largest queue size it accepts.
    pub max_queue_size: u16,
    /// Feature bits it offers.
    pub features: u64,
    /// Its configuration space.
    pub config: Vec<u8>,
}

/// VMM -> device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The first message; answered with `Welcome`. Carries the backend's
    /// fds.
    Hello {
        /// The VMM's protocol version.
        version: u16,
        /// What the device serves.
        backend: Backend,
        /// How long, in microseconds, the device looks at its queues for
        /// more work after serving a kick before it sleeps (adaptive
        /// polling, at most [`MAX_POLL_US`]); 0: it sleeps at once.
        poll_us: u32,
    },
    /// Read device configuration; answered with `ConfigData`.
    ConfigRead {
        /// First byte.
        offset: u32,
        /// Length.
        len: u32,
    },
    /// A driver write to the configuration; answered with `Ack` or `Error`.
    ConfigWrite {
        /// First byte.
        offset: u32,
        /// The bytes.
        data: Vec<u8>,
    },
    /// DRIVER_OK: start serving. Carries fds (see the crate docs).
    Activate {
        /// Negotiated features.
        features: u64,
        /// Guest memory, one memfd each.
        regions: Vec<MemRegion>,
        /// The queues the driver enabled.
        queues: Vec<QueueLayout>,
    },
    /// Back to the initial state; answered with `Ack`.
    Reset,
    /// Exit; no answer.
    Shutdown,
    /// Stop serving the queues between two requests and answer with the
    /// state (`Saved`); kicks wait in their eventfds meanwhile.
    Pause,
    /// Serve the queues again after `Pause`; answered with `Ack`.
    Resume,
    /// Carry on from `state` (a saved one, or one the VMM put together) in
    /// place of `Activate`; answered with `Ack` or `Error`. Carries fds
    /// like `Activate`.
    Restore {
        /// Guest memory, one memfd each.
        regions: Vec<MemRegion>,
        /// Where to carry on from.
        state: DeviceState,
        /// The previous instance died unsaved: take the queues' indices
        /// from the used rings (the state's are ignored) and interrupt the
        /// driver once per queue, in case an interrupt was lost.
        recover: bool,
        /// The previous instance's bulk state (`Saved`'s) comes too, as
        /// the last fd.
        bulk: bool,
    },
}

/// Device -> VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Answer to `Hello`.
    Welcome {
        /// The device's protocol version.
        version: u16,
        /// What it is.
        info: DeviceInfo,
    },
    /// Answer to `ConfigRead`.
    ConfigData {
        /// The bytes.
        data: Vec<u8>,
    },
    /// Done.
    Ack,
    /// Refused, with why.
    Error {
        /// Why.
        message: String,
    },
    /// The configuration changed (sent at any time).
    ConfigChanged {
        /// The new configuration space.
        config: Vec<u8>,
    },
    /// The device cannot go on without a reset (sent at any time).
    NeedsReset {
        /// Why.
        reason: String,
    },
    /// The device made a syscall its seccomp policy forbids (trap mode; sent
    /// from its SIGSYS handler at any time).
    ForbiddenSyscall {
        /// The syscall number (x86_64).
        nr: u32,
    },
    /// Answer to `Pause`: the device's state (no queues when it was not
    /// active).
    Saved {
        /// The state.
        state: DeviceState,
        /// The model's bulk state (too large for `state`: virtio-fs's node
        /// table) comes with it, as one fd (a memfd) to pass on to the
        /// next instance.
        bulk: bool,
    },
}

/// Bytes of an encoded `ForbiddenSyscall`.
pub const FORBIDDEN_SYSCALL_BYTES: usize = HEADER + 4;

/// `Reply::ForbiddenSyscall { nr }` encoded without allocating, for a
/// signal handler.
pub fn forbidden_syscall_message(nr: u32) -> [u8; FORBIDDEN_SYSCALL_BYTES] {
    let mut b = [0u8; FORBIDDEN_SYSCALL_BYTES];
    let fields: [&[u8]; 5] = [
        &MAGIC.to_le_bytes(),
        &PROTOCOL_VERSION.to_le_bytes(),
        &FORBIDDEN_SYSCALL.to_le_bytes(),
        &4u32.to_le_bytes(),
        &nr.to_le_bytes(),
    ];
    let mut at = 0;
    for f in fields {
        for (d, s) in b.iter_mut().skip(at).zip(f) {
            *d = *s;
        }
        at += f.len();
    }
    b
}

/// Appends fields to a message under construction.
pub(crate) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn new(kind: u16) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&MAGIC.to_le_bytes());
        buf.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        buf.extend_from_slice(&kind.to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes());
        Self { buf }
    }
    fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn count(&mut self, what: &'static str, n: usize, max: usize) -> Result<(), IpcError> {
        if n > max {
            return Err(IpcError::Limit { what, got: n, max });
        }
        self.u16(u16::try_from(n).map_err(|_| IpcError::Limit { what, got: n, max })?);
        Ok(())
    }
    fn bytes(&mut self, what: &'static str, b: &[u8], max: usize) -> Result<(), IpcError> {
        self.count(what, b.len(), max)?;
        self.buf.extend_from_slice(b);
        Ok(())
    }
    fn finish(mut self) -> Result<Vec<u8>, IpcError> {
        if self.buf.len() > MAX_MESSAGE {
            return Err(IpcError::TooLong(self.buf.len()));
        }
        let len = u32::try_from(self.buf.len() - HEADER).map_err(|_| IpcError::TooLong(0))?;
        self.buf[8..12].copy_from_slice(&len.to_le_bytes());
        Ok(self.buf)
    }
}

/// Takes fields off a received payload.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads `bytes` from the start.
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], IpcError> {
        if self.rest.len() < n {
            return Err(IpcError::Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], IpcError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16, IpcError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, IpcError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, IpcError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// A count, checked against `max` and against the bytes left for
    /// `item` bytes per element, before the caller allocates.
    fn count(&mut self, what: &'static str, max: usize, item: usize) -> Result<usize, IpcError> {
        let n = usize::from(self.u16()?);
        if n > max {
            return Err(IpcError::Limit { what, got: n, max });
        }
        if n.saturating_mul(item) > self.rest.len() {
            return Err(IpcError::Truncated);
        }
        Ok(n)
    }
    fn bytes(&mut self, what: &'static str, max: usize) -> Result<Vec<u8>, IpcError> {
        let n = self.count(what, max, 1)?;
        Ok(self.take(n)?.to_vec())
    }
    fn text(&mut self, what: &'static str) -> Result<String, IpcError> {
        String::from_utf8(self.bytes(what, MAX_TEXT)?).map_err(|_| IpcError::BadText)
    }
    pub(crate) fn end(&self) -> Result<(), IpcError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(IpcError::Trailing(self.rest.len()))
        }
    }
}

/// Checks the header and returns the kind and a reader over the payload.
fn open(bytes: &[u8]) -> Result<(u16, Reader<'_>), IpcError> {
    if bytes.len() > MAX_MESSAGE {
        return Err(IpcError::TooLong(bytes.len()));
    }
    let mut r = Reader { rest: bytes };
    let magic = r.u32()?;
    if magic != MAGIC {
        return Err(IpcError::BadMagic(magic));
    }
    let version = r.u16()?;
    if version != PROTOCOL_VERSION {
        return Err(IpcError::Version(version));
    }
    let kind = r.u16()?;
    let len = usize::try_from(r.u32()?).map_err(|_| IpcError::TooLong(usize::MAX))?;
    match len.cmp(&r.rest.len()) {
        std::cmp::Ordering::Greater => Err(IpcError::Truncated),
        std::cmp::Ordering::Less => Err(IpcError::Trailing(r.rest.len() - len)),
        std::cmp::Ordering::Equal => Ok((kind, r)),
    }
}

const REGION_BYTES: usize = 24;
const QUEUE_BYTES: usize = 28;
const QUEUE_STATE_BYTES: usize = QUEUE_BYTES + 5;

impl Request {
    /// How many fds the message must carry.
    pub fn fd_count(&self) -> usize {
        match self {
            Request::Activate {
                regions, queues, ..
            } => regions.len() + 2 * queues.len() + 1,
            Request::Restore {
                regions,
                state,
                bulk,
                ..
            } => regions.len() + 2 * state.queues.len() + 1 + usize::from(*bulk),
            Request::Hello { backend, .. } => backend.fd_count(),
            _ => 0,
        }
    }

    /// The wire form; fails if a field is above its cap.
    pub fn encode(&self) -> Result<Vec<u8>, IpcError> {
        let w = match self {
            Request::Hello {
                version,
                backend,
                poll_us,
            } => {
                let mut w = Writer::new(HELLO);
                w.u16(*version);
                backend.encode(&mut w)?;
                if *poll_us > MAX_POLL_US {
                    return Err(IpcError::Limit {
                        what: "poll time (us)",
                        got: *poll_us as usize,
                        max: MAX_POLL_US as usize,
                    });
                }
                w.u32(*poll_us);
                w
            }
            Request::ConfigRead { offset, len } => {
                let mut w = Writer::new(CONFIG_READ);
                w.u32(*offset);
                w.u32(*len);
                w
            }
            Request::ConfigWrite { offset, data } => {
                let mut w = Writer::new(CONFIG_WRITE);
                w.u32(*offset);
                w.bytes("config write length", data, MAX_CONFIG)?;
                w
            }
            Request::Activate {
                features,
                regions,
                queues,
            } => {
                let mut w = Writer::new(ACTIVATE);
                w.u64(*features);
                encode_regions(&mut w, regions)?;
                w.count("queues", queues.len(), MAX_QUEUES)?;
                for q in queues {
                    encode_layout(&mut w, q);
                }
                w
            }
            Request::Reset => Writer::new(RESET),
            Request::Shutdown => Writer::new(SHUTDOWN),
            Request::Pause => Writer::new(PAUSE),
            Request::Resume => Writer::new(RESUME),
            Request::Restore {
                regions,
                state,
                recover,
                bulk,
            } => {
                let mut w = Writer::new(RESTORE);
                encode_regions(&mut w, regions)?;
                state.encode(&mut w)?;
                w.buf.push(u8::from(*recover));
                w.buf.push(u8::from(*bulk));
                w
            }
        };
        w.finish()
    }

    /// Decodes one message; total over any input.
    pub fn decode(bytes: &[u8]) -> Result<Self, IpcError> {
        let (kind, mut r) = open(bytes)?;
        let req = match kind {
            HELLO => Request::Hello {
                version: r.u16()?,
                backend: Backend::decode(&mut r)?,
                poll_us: match r.u32()? {
                    p if p <= MAX_POLL_US => p,
                    p => {
                        return Err(IpcError::Limit {
                            what: "poll time (us)",
                            got: p as usize,
                            max: MAX_POLL_US as usize,
                        })
                    }
                },
            },
            CONFIG_READ => Request::ConfigRead {
                offset: r.u32()?,
                len: r.u32()?,
            },
            CONFIG_WRITE => Request::ConfigWrite {
                offset: r.u32()?,
                data: r.bytes("config write length", MAX_CONFIG)?,
            },
            ACTIVATE => {
                let features = r.u64()?;
                let regions = decode_regions(&mut r)?;
                let n = r.count("queues", MAX_QUEUES, QUEUE_BYTES)?;
                let mut queues = Vec::with_capacity(n);
                for _ in 0..n {
                    queues.push(decode_layout(&mut r)?);
                }
                Request::Activate {
                    features,
                    regions,
                    queues,
                }
            }
            RESET => Request::Reset,
            SHUTDOWN => Request::Shutdown,
            PAUSE => Request::Pause,
            RESUME => Request::Resume,
            RESTORE => Request::Restore {
                regions: decode_regions(&mut r)?,
                state: DeviceState::decode(&mut r)?,
                recover: flag(&mut r, "recover flag")?,
                bulk: flag(&mut r, "bulk flag")?,
            },
            other => return Err(IpcError::UnknownKind(other)),
        };
        r.end()?;
        Ok(req)
    }
}

impl Reply {
    /// How many fds come with it.
    pub fn fd_count(&self) -> usize {
        match self {
            Reply::Saved { bulk, .. } => usize::from(*bulk),
            _ => 0,
        }
    }

    /// The wire form; fails if a field is above its cap.
    pub fn encode(&self) -> Result<Vec<u8>, IpcError> {
        let w = match self {
            Reply::Welcome { version, info } => {
                let mut w = Writer::new(WELCOME);
                w.u16(*version);
                w.u32(info.device_type);
                w.u16(info.num_queues);
                w.u16(info.max_queue_size);
                w.u64(info.features);
                w.bytes("config length", &info.config, MAX_CONFIG)?;
                w
            }
            Reply::ConfigData { data } => {
                let mut w = Writer::new(CONFIG_DATA);
                w.bytes("config length", data, MAX_CONFIG)?;
                w
            }
            Reply::Ack => Writer::new(ACK),
            Reply::Error { message } => {
                let mut w = Writer::new(ERROR);
                w.bytes("text length", message.as_bytes(), MAX_TEXT)?;
                w
            }
            Reply::ConfigChanged { config } => {
                let mut w = Writer::new(CONFIG_CHANGED);
                w.bytes("config length", config, MAX_CONFIG)?;
                w
            }
            Reply::NeedsReset { reason } => {
                let mut w = Writer::new(NEEDS_RESET);
                w.bytes("text length", reason.as_bytes(), MAX_TEXT)?;
                w
            }
            Reply::ForbiddenSyscall { nr } => {
                let mut w = Writer::new(FORBIDDEN_SYSCALL);
                w.u32(*nr);
                w
            }
            Reply::Saved { state, bulk } => {
                let mut w = Writer::new(SAVED);
                state.encode(&mut w)?;
                w.buf.push(u8::from(*bulk));
                w
            }
        };
        w.finish()
    }

    /// Decodes one message; total over any input.
    pub fn decode(bytes: &[u8]) -> Result<Self, IpcError> {
        let (kind, mut r) = open(bytes)?;
        let reply = match kind {
            WELCOME => Reply::Welcome {
                version: r.u16()?,
                info: DeviceInfo {
                    device_type: r.u32()?,
                    num_queues: r.u16()?,
                    max_queue_size: r.u16()?,
                    features: r.u64()?,
                    config: r.bytes("config length", MAX_CONFIG)?,
                },
            },
            CONFIG_DATA => Reply::ConfigData {
                data: r.bytes("config length", MAX_CONFIG)?,
            },
            ACK => Reply::Ack,
            ERROR => Reply::Error {
                message: r.text("text length")?,
            },
            CONFIG_CHANGED => Reply::ConfigChanged {
                config: r.bytes("config length", MAX_CONFIG)?,
            },
            NEEDS_RESET => Reply::NeedsReset {
                reason: r.text("text length")?,
            },
            FORBIDDEN_SYSCALL => Reply::ForbiddenSyscall { nr: r.u32()? },
            SAVED => Reply::Saved {
                state: DeviceState::decode(&mut r)?,
                bulk: flag(&mut r, "bulk flag")?,
            },
            other => return Err(IpcError::UnknownKind(other)),
        };
        r.end()?;
        Ok(reply)
    }
}

#[cfg(test)]
mod tests;
