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
    IpcError, MAX_CONFIG, MAX_DEVICE_STATE, MAX_MESSAGE, MAX_QUEUES, MAX_REGIONS, MAX_SERIAL,
    MAX_TEXT, PROTOCOL_VERSION,
};

const MAGIC: u32 = 0x4d56_4b53;
const HEADER: usize = 12;

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

/// What a device is attached to on the host; sent with `Hello`, with the
/// backend's fds beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// Nothing (virtio-rng); no fds.
    None,
    /// A disk image; one fd, the open image.
    Block {
        /// Capacity in 512-byte sectors.
        sectors: u64,
        /// Refuse writes (and the fd is read-only).
        read_only: bool,
        /// The fd was opened with O_DIRECT.
        direct: bool,
        /// The serial the guest reads with GET_ID (at most 20 bytes).
        serial: Vec<u8>,
    },
    /// A network card; one fd, the tap (IFF_VNET_HDR, 12-byte header,
    /// non-blocking).
    Net {
        /// The MAC address the guest sees.
        mac: [u8; 6],
    },
    /// A virtio-mem region; no fds (the memory comes with activation).
    Mem {
        /// Guest physical address of the region.
        addr: u64,
        /// Size of the region.
        region_size: u64,
        /// Block size.
        block_size: u64,
        /// The part backed with memory, from the start.
        usable: u64,
        /// How much the driver is asked to plug.
        requested: u64,
    },
}

const BACKEND_NONE: u16 = 0;
const BACKEND_BLOCK: u16 = 1;
const BACKEND_NET: u16 = 2;
const BACKEND_MEM: u16 = 3;
const BLOCK_READ_ONLY: u8 = 1;
const BLOCK_DIRECT: u8 = 2;

impl Backend {
    /// How many fds travel with it.
    pub fn fd_count(&self) -> usize {
        match self {
            Backend::None | Backend::Mem { .. } => 0,
            Backend::Block { .. } | Backend::Net { .. } => 1,
        }
    }

    fn encode(&self, w: &mut Writer) -> Result<(), IpcError> {
        match self {
            Backend::None => w.u16(BACKEND_NONE),
            Backend::Block {
                sectors,
                read_only,
                direct,
                serial,
            } => {
                w.u16(BACKEND_BLOCK);
                w.u64(*sectors);
                let mut flags = 0;
                if *read_only {
                    flags |= BLOCK_READ_ONLY;
                }
                if *direct {
                    flags |= BLOCK_DIRECT;
                }
                w.buf.push(flags);
                w.bytes("serial length", serial, MAX_SERIAL)?;
            }
            Backend::Net { mac } => {
                w.u16(BACKEND_NET);
                w.buf.extend_from_slice(mac);
            }
            Backend::Mem {
                addr,
                region_size,
                block_size,
                usable,
                requested,
            } => {
                w.u16(BACKEND_MEM);
                for v in [addr, region_size, block_size, usable, requested] {
                    w.u64(*v);
                }
            }
        }
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, IpcError> {
        match r.u16()? {
            BACKEND_NONE => Ok(Backend::None),
            BACKEND_BLOCK => {
                let sectors = r.u64()?;
                let [flags] = r.array()?;
                if flags & !(BLOCK_READ_ONLY | BLOCK_DIRECT) != 0 {
                    return Err(IpcError::BadValue("block backend flags"));
                }
                Ok(Backend::Block {
                    sectors,
                    read_only: flags & BLOCK_READ_ONLY != 0,
                    direct: flags & BLOCK_DIRECT != 0,
                    serial: r.bytes("serial length", MAX_SERIAL)?,
                })
            }
            BACKEND_NET => Ok(Backend::Net { mac: r.array()? }),
            BACKEND_MEM => Ok(Backend::Mem {
                addr: r.u64()?,
                region_size: r.u64()?,
                block_size: r.u64()?,
                usable: r.u64()?,
                requested: r.u64()?,
            }),
            _ => Err(IpcError::BadValue("backend kind")),
        }
    }
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
struct Writer {
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
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], IpcError> {
        if self.rest.len() < n {
            return Err(IpcError::Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], IpcError> {
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
    fn u64(&mut self) -> Result<u64, IpcError> {
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
    fn end(&self) -> Result<(), IpcError> {
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
            Request::Restore { regions, state, .. } => regions.len() + 2 * state.queues.len() + 1,
            Request::Hello { backend, .. } => backend.fd_count(),
            _ => 0,
        }
    }

    /// The wire form; fails if a field is above its cap.
    pub fn encode(&self) -> Result<Vec<u8>, IpcError> {
        let w = match self {
            Request::Hello { version, backend } => {
                let mut w = Writer::new(HELLO);
                w.u16(*version);
                backend.encode(&mut w)?;
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
            } => {
                let mut w = Writer::new(RESTORE);
                encode_regions(&mut w, regions)?;
                state.encode(&mut w)?;
                w.buf.push(u8::from(*recover));
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
                recover: match r.array()? {
                    [0] => false,
                    [1] => true,
                    _ => return Err(IpcError::BadValue("recover flag")),
                },
            },
            other => return Err(IpcError::UnknownKind(other)),
        };
        r.end()?;
        Ok(req)
    }
}

impl Reply {
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
            Reply::Saved { state } => {
                let mut w = Writer::new(SAVED);
                state.encode(&mut w)?;
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
            },
            other => return Err(IpcError::UnknownKind(other)),
        };
        r.end()?;
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests() -> Vec<Request> {
        vec![
            Request::Hello {
                version: 1,
                backend: Backend::None,
            },
            Request::Hello {
                version: 1,
                backend: Backend::Block {
                    sectors: 1 << 21,
                    read_only: true,
                    direct: false,
                    serial: b"disk-1".to_vec(),
                },
            },
            Request::Hello {
                version: 1,
                backend: Backend::Net {
                    mac: [2, 0, 0, 1, 2, 3],
                },
            },
            Request::Hello {
                version: 1,
                backend: Backend::Mem {
                    addr: 1 << 32,
                    region_size: 1 << 30,
                    block_size: 2 << 20,
                    usable: 256 << 20,
                    requested: 128 << 20,
                },
            },
            Request::ConfigRead { offset: 4, len: 8 },
            Request::ConfigWrite {
                offset: 2,
                data: vec![1, 2, 3],
            },
            Request::Activate {
                features: 1 << 32 | 1 << 29,
                regions: vec![
                    MemRegion {
                        guest_addr: 0,
                        size: 3 << 30,
                        file_offset: 0,
                    },
                    MemRegion {
                        guest_addr: 1 << 32,
                        size: 1 << 30,
                        file_offset: 3 << 30,
                    },
                ],
                queues: vec![QueueLayout {
                    index: 0,
                    size: 256,
                    desc: 0x1000,
                    avail: 0x2000,
                    used: 0x3000,
                }],
            },
            Request::Reset,
            Request::Shutdown,
            Request::Pause,
            Request::Resume,
            Request::Restore {
                regions: vec![MemRegion {
                    guest_addr: 0,
                    size: 1 << 30,
                    file_offset: 0,
                }],
                state: saved(),
                recover: true,
            },
        ]
    }

    fn saved() -> DeviceState {
        DeviceState {
            features: 1 << 32 | 1 << 29,
            queues: vec![QueueState {
                layout: QueueLayout {
                    index: 1,
                    size: 128,
                    desc: 0x1000,
                    avail: 0x2000,
                    used: 0x3000,
                },
                event_idx: true,
                next_avail: 65535,
                next_used: 65530,
            }],
            device: vec![7; 16],
        }
    }

    fn replies() -> Vec<Reply> {
        vec![
            Reply::Welcome {
                version: 1,
                info: DeviceInfo {
                    device_type: 4,
                    num_queues: 1,
                    max_queue_size: 256,
                    features: 1 << 32,
                    config: vec![9; 8],
                },
            },
            Reply::ConfigData { data: vec![1, 2] },
            Reply::Ack,
            Reply::Error {
                message: "no".into(),
            },
            Reply::ConfigChanged { config: vec![] },
            Reply::NeedsReset {
                reason: "queue 0: used ring outside memory".into(),
            },
            Reply::ForbiddenSyscall { nr: 257 },
            Reply::Saved { state: saved() },
            Reply::Saved {
                state: DeviceState::default(),
            },
        ]
    }

    #[test]
    fn saved_state_flags_are_strict_and_restore_carries_activate_fds() {
        let restore = Request::Restore {
            regions: vec![],
            state: saved(),
            recover: false,
        };
        assert_eq!(restore.fd_count(), 2 + 1);
        let good = restore.encode().unwrap();
        // The recover flag is the last byte; the event-index flag sits
        // after the queue layout (header, regions count, features, queue
        // count, layout).
        let event_idx_at = HEADER + 2 + 8 + 2 + QUEUE_BYTES;
        assert_eq!(good[event_idx_at], 1);
        for at in [good.len() - 1, event_idx_at] {
            let mut bad = good.clone();
            bad[at] = 2;
            assert!(matches!(Request::decode(&bad), Err(IpcError::BadValue(_))));
        }
        let mut big = saved();
        big.device = vec![0; MAX_DEVICE_STATE + 1];
        assert!(Reply::Saved { state: big }.encode().is_err());
    }

    #[test]
    fn the_signal_handler_encoding_matches_the_encoder() {
        let r = Reply::ForbiddenSyscall { nr: 0xdead_beef };
        assert_eq!(
            forbidden_syscall_message(0xdead_beef).to_vec(),
            r.encode().unwrap()
        );
    }

    #[test]
    fn every_request_round_trips() {
        for r in requests() {
            assert_eq!(Request::decode(&r.encode().unwrap()).unwrap(), r);
        }
    }

    #[test]
    fn every_reply_round_trips() {
        for r in replies() {
            assert_eq!(Reply::decode(&r.encode().unwrap()).unwrap(), r);
        }
    }

    #[test]
    fn every_strict_prefix_fails_cleanly() {
        for r in requests() {
            let b = r.encode().unwrap();
            for n in 0..b.len() {
                assert!(Request::decode(&b[..n]).is_err(), "{r:?} prefix {n}");
            }
        }
        for r in replies() {
            let b = r.encode().unwrap();
            for n in 0..b.len() {
                assert!(Reply::decode(&b[..n]).is_err(), "{r:?} prefix {n}");
            }
        }
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut b = Request::Reset.encode().unwrap();
        b.push(0);
        assert!(Request::decode(&b).is_err());
        // Even when the header's length covers them.
        b[8] = 1;
        assert!(matches!(Request::decode(&b), Err(IpcError::Trailing(1))));
    }

    #[test]
    fn directions_do_not_mix() {
        let b = Reply::Ack.encode().unwrap();
        assert!(matches!(
            Request::decode(&b),
            Err(IpcError::UnknownKind(ACK))
        ));
        let b = Request::Reset.encode().unwrap();
        assert!(matches!(
            Reply::decode(&b),
            Err(IpcError::UnknownKind(RESET))
        ));
    }

    #[test]
    fn wrong_magic_and_version_are_rejected() {
        let mut b = Request::Reset.encode().unwrap();
        b[0] ^= 1;
        assert!(matches!(Request::decode(&b), Err(IpcError::BadMagic(_))));
        let mut b = Request::Reset.encode().unwrap();
        b[4] = 9;
        assert!(matches!(Request::decode(&b), Err(IpcError::Version(9))));
    }

    #[test]
    fn counts_above_caps_are_rejected_before_allocating() {
        // A ConfigWrite claiming 65535 bytes in a 20-byte message.
        let mut w = Writer::new(CONFIG_WRITE);
        w.u32(0);
        w.u16(u16::MAX);
        let b = w.finish().unwrap();
        assert!(matches!(
            Request::decode(&b),
            Err(IpcError::Limit { got: 65535, .. })
        ));
        // An Activate claiming three queues' worth but carrying one.
        let mut w = Writer::new(ACTIVATE);
        w.u64(0);
        w.u16(0);
        w.u16(3);
        w.buf.extend_from_slice(&[0; QUEUE_BYTES]);
        let b = w.finish().unwrap();
        assert!(matches!(Request::decode(&b), Err(IpcError::Truncated)));
    }

    #[test]
    fn encoding_refuses_what_decoding_would_refuse() {
        let r = Request::ConfigWrite {
            offset: 0,
            data: vec![0; MAX_CONFIG + 1],
        };
        assert!(r.encode().is_err());
        let r = Reply::Error {
            message: "x".repeat(MAX_TEXT + 1),
        };
        assert!(r.encode().is_err());
        let r = Request::Activate {
            features: 0,
            regions: vec![],
            queues: vec![
                QueueLayout {
                    index: 0,
                    size: 1,
                    desc: 0,
                    avail: 0,
                    used: 0
                };
                MAX_QUEUES + 1
            ],
        };
        assert!(r.encode().is_err());
    }

    #[test]
    fn unknown_backends_and_flags_are_rejected() {
        let mut w = Writer::new(HELLO);
        w.u16(PROTOCOL_VERSION);
        w.u16(7);
        assert!(matches!(
            Request::decode(&w.finish().unwrap()),
            Err(IpcError::BadValue("backend kind"))
        ));
        let mut w = Writer::new(HELLO);
        w.u16(PROTOCOL_VERSION);
        w.u16(BACKEND_BLOCK);
        w.u64(8);
        w.buf.push(0x80);
        w.u16(0);
        assert!(matches!(
            Request::decode(&w.finish().unwrap()),
            Err(IpcError::BadValue(_))
        ));
        let long = Request::Hello {
            version: PROTOCOL_VERSION,
            backend: Backend::Block {
                sectors: 8,
                read_only: false,
                direct: false,
                serial: vec![b'x'; MAX_SERIAL + 1],
            },
        };
        assert!(long.encode().is_err());
    }

    #[test]
    fn backends_say_how_many_fds_they_carry() {
        let hello = |backend| Request::Hello {
            version: PROTOCOL_VERSION,
            backend,
        };
        assert_eq!(hello(Backend::None).fd_count(), 0);
        let block = Backend::Block {
            sectors: 8,
            read_only: false,
            direct: true,
            serial: vec![],
        };
        assert_eq!(hello(block).fd_count(), 1);
    }

    #[test]
    fn oversized_input_is_rejected() {
        let b = vec![0u8; MAX_MESSAGE + 1];
        assert!(matches!(Request::decode(&b), Err(IpcError::TooLong(_))));
    }

    #[test]
    fn invalid_utf8_text_is_rejected() {
        let mut w = Writer::new(ERROR);
        w.bytes("t", &[0xff, 0xfe], MAX_TEXT).unwrap();
        assert!(matches!(
            Reply::decode(&w.finish().unwrap()),
            Err(IpcError::BadText)
        ));
    }

    /// xorshift64: enough randomness to shake a decoder.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn garbage_never_panics() {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..5000 {
            let len = usize::try_from(next(&mut s) % 200).unwrap();
            let mut b: Vec<u8> = (0..len).map(|_| (next(&mut s) & 0xff) as u8).collect();
            let _ = Request::decode(&b);
            let _ = Reply::decode(&b);
            // A valid header in front makes the payload decoders work too.
            if b.len() >= HEADER {
                b[..4].copy_from_slice(&MAGIC.to_le_bytes());
                b[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
                let kinds = [1u16, 2, 3, 4, 5, 6, 101, 102, 103, 104, 105, 106, 107];
                let k = kinds[usize::try_from(next(&mut s) % 13).unwrap()];
                b[6..8].copy_from_slice(&k.to_le_bytes());
                let plen = u32::try_from(b.len() - HEADER).unwrap();
                b[8..12].copy_from_slice(&plen.to_le_bytes());
                let _ = Request::decode(&b);
                let _ = Reply::decode(&b);
            }
        }
    }

    #[test]
    fn single_byte_mutations_never_panic() {
        let mut s = 42u64;
        let all: Vec<Vec<u8>> = requests()
            .iter()
            .map(|r| r.encode().unwrap())
            .chain(replies().iter().map(|r| r.encode().unwrap()))
            .collect();
        for b in &all {
            for i in 0..b.len() {
                for _ in 0..8 {
                    let mut m = b.clone();
                    m[i] = (next(&mut s) & 0xff) as u8;
                    let _ = Request::decode(&m);
                    let _ = Reply::decode(&m);
                }
            }
        }
    }
}
