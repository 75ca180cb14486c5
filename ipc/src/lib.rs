//! The VMM <-> device process protocol: messages, a bounded total decoder and
//! file-descriptor passing with a per-message cap.
//!
//! A device process is hostile to the VMM and the VMM's messages are checked
//! by the device just the same: every message is decoded by a total decoder
//! (any byte string gives a message or an error, never a panic), sizes are
//! capped before anything is allocated, and every received fd is owned at
//! once so that it is closed on any error path.
//!
//! Messages travel on a `SOCK_SEQPACKET` unix socket ([`Channel`]), one
//! message per packet, with their fds as `SCM_RIGHTS`.
//!
//! | kind | direction | message | fds | answer |
//! |---|---|---|---|---|
//! | 1 | VMM -> device | `Hello { version, backend, poll_us }` | the backend's (`backend.fds`, at most 4) | `Welcome` / `Error` |
//! | 2 | VMM -> device | `ConfigRead { offset, len }` | 0 | `ConfigData` |
//! | 3 | VMM -> device | `ConfigWrite { offset, data }` | 0 | `Ack` / `Error` |
//! | 4 | VMM -> device | `Activate { features, regions, queues }` | regions + 2 x queues + 1 | `Ack` / `Error` |
//! | 5 | VMM -> device | `Reset` | 0 | `Ack` |
//! | 6 | VMM -> device | `Shutdown` | 0 | none; the device exits |
//! | 7 | VMM -> device | `Pause` | 0 | `Saved` |
//! | 8 | VMM -> device | `Resume` | 0 | `Ack` |
//! | 9 | VMM -> device | `Restore { regions, state, recover, bulk }` | as `Activate`, then the bulk state's memfd if `bulk` | `Ack` / `Error` |
//! | 101 | device -> VMM | `Welcome { version, info }` | 0 | |
//! | 102 | device -> VMM | `ConfigData { data }` | 0 | |
//! | 103 | device -> VMM | `Ack` | 0 | |
//! | 104 | device -> VMM | `Error { message }` | 0 | |
//! | 105 | device -> VMM | `ConfigChanged { config }` (any time) | 0 | |
//! | 106 | device -> VMM | `NeedsReset { reason }` (any time) | 0 | |
//! | 107 | device -> VMM | `ForbiddenSyscall { nr }` (any time, `--seccomp trap`) | 0 | |
//! | 108 | device -> VMM | `Saved { state, bulk }` | the bulk state's memfd if `bulk` | |
//!
//! The fds of `Activate` are, in order: one memfd per memory region, one kick
//! eventfd per queue, one interrupt eventfd per queue, and the configuration
//! change interrupt eventfd; those of `Restore` are the same, with the
//! queues of its state. The wire format is in [`wire`].
//!
//! Save and restore: `Pause` stops an active device between requests and
//! answers with its [`DeviceState`]; a new instance of the device (a new
//! process, with a new memory map) gets that state with `Restore` and
//! carries on, validating it first: it accepts only state it would have
//! reached itself. A device that died unsaved is restored from what the VMM
//! knows (features, queue layouts) with `recover` set: the queues' indices
//! then come from the used rings in guest memory.
//!
//! The VMM and the devices wait on their fds with [`wait`]: fds with
//! tokens over poll(2), the one wait call the device policies allow.

mod channel;
pub mod fdpass;
pub mod params;
pub mod wait;
pub mod wire;

pub use channel::{seqpacket_pair, Channel};
pub use wire::{
    Backend, DeviceInfo, DeviceState, IdMap, Jail, Limit, MemRegion, QueueLayout, QueueState,
    Reply, Request, Root, SeccompAction, SpawnRequest, SpawnerReply,
};

/// Version of the protocol; both ends must speak the same.
pub const PROTOCOL_VERSION: u16 = 2;
/// Largest encoded message, header included.
pub const MAX_MESSAGE: usize = 4096;
/// Most fds one message may carry.
pub const MAX_FDS: usize = 24;
/// Largest device configuration space.
pub const MAX_CONFIG: usize = 256;
/// Longest adaptive polling a device may be asked for (`Hello::poll_us`),
/// in microseconds.
pub const MAX_POLL_US: u32 = 1000;
/// Most queues of a device.
pub const MAX_QUEUES: usize = 4;
/// Most guest memory regions.
pub const MAX_REGIONS: usize = 8;
/// Longest text (error messages, reasons), in bytes of UTF-8.
pub const MAX_TEXT: usize = 256;
/// Largest device-specific part of a saved [`DeviceState`].
pub const MAX_DEVICE_STATE: usize = 256;

/// Errors of the protocol and its transport.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    /// The message is shorter than its fields.
    #[error("message truncated")]
    Truncated,
    /// The message is longer than allowed or than its fields.
    #[error("message too long: {0} bytes")]
    TooLong(usize),
    /// Bytes after the last field.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    /// Not our magic number.
    #[error("bad magic {0:#x}")]
    BadMagic(u32),
    /// A protocol version we do not speak.
    #[error("unsupported protocol version {0}")]
    Version(u16),
    /// A message kind we do not know in this direction.
    #[error("unknown message kind {0}")]
    UnknownKind(u16),
    /// A count or length above its cap.
    #[error("{what} {got} is above the limit of {max}")]
    Limit {
        /// What was counted.
        what: &'static str,
        /// The value seen.
        got: usize,
        /// The cap.
        max: usize,
    },
    /// Text that is not UTF-8.
    #[error("text is not UTF-8")]
    BadText,
    /// A field with a value the protocol does not define.
    #[error("invalid {0}")]
    BadValue(&'static str),
    /// A message came with the wrong number of fds.
    #[error("message carries {got} fds, expected {expected}")]
    FdCount {
        /// Fds received or given.
        got: usize,
        /// Fds the message needs.
        expected: usize,
    },
    /// The peer closed the socket.
    #[error("peer closed the connection")]
    Closed,
    /// A message of no bytes and no fds from a peer that is still
    /// connected: not end of file, and no message of the protocol.
    #[error("empty message")]
    Empty,
    /// Nothing arrived in time.
    #[error("timed out waiting for the peer")]
    Timeout,
    /// A system call failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
