//! What a device serves, as `Hello` describes it: one kind per device
//! (none, a block image, a tap, a virtio-mem region), its fields, and how
//! many fds travel beside it.

use super::{Reader, Writer};
use crate::{IpcError, MAX_SERIAL};

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
pub(super) const BACKEND_BLOCK: u16 = 1;
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

    pub(super) fn encode(&self, w: &mut Writer) -> Result<(), IpcError> {
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

    pub(super) fn decode(r: &mut Reader<'_>) -> Result<Self, IpcError> {
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
