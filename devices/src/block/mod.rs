//! virtio-blk, the block device (virtio 1.2, section 5.2), over a raw image
//! the VMM opened: the device holds one fd and cannot open anything.
//!
//! One request queue. Each request is a device-readable header (type,
//! reserved, sector), data (device-readable for writes, device-writable for
//! reads) and a one-byte device-writable status at the very end. Nothing is
//! assumed about how the driver splits these over descriptors: the readable
//! bytes are one stream, the writable bytes another, and the header and the
//! status are taken from their ends.
//!
//! Guest input is hostile. A chain with no writable byte has nowhere to put
//! a status and is returned with length 0 ("dropped"); a chain cut short (a
//! loop, a next index outside the table) likewise. Everything else gets a
//! status: IOERR for requests past the end, data lengths that are not whole
//! sectors, buffers outside guest memory, readable bytes after writable
//! ones, writes to a read-only disk and failed host I/O; UNSUPP for unknown
//! types and features that were not negotiated.
//!
//! `segments` holds the guest-buffer side (splitting the streams, checked
//! reads and writes, host iovecs), `hostio` the image side (whole
//! preadv/pwritev transfers; fallocate is `crate::hostio`'s); this file the protocol.

mod hostio;
mod segments;

use std::fs::File;
use std::os::fd::AsFd;

use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{Address, ByteValued, Bytes, Le16, Le32, Le64};

use crate::hostio::fallocate;
use crate::hostio::IoVecs;
use hostio::transfer;
use segments::{drop_front, gather, iovecs, pop_last_byte, scatter, total, Seg};

use crate::virtio::{
    check_features, serve_queue, DeviceError, GuestMemory, Processed, VirtioDevice,
    DEVICE_ID_BLOCK, TRANSPORT_FEATURES,
};

/// Bytes in a sector, the unit of every offset and length in the protocol.
pub const SECTOR: u64 = 512;
/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
/// Largest data segment the driver may use (`size_max`).
pub const SIZE_MAX: u32 = 1 << 20;
/// Most data segments per request (`seg_max`): a queue's worth less the
/// header and the status.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Most descriptors of one request that the device looks at; longer chains
/// (possible with indirect tables) fail with IOERR.
pub const MAX_DESCRIPTORS: usize = 1024;
/// Most sectors one discard or write-zeroes segment may cover (1 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 21;
/// Most segments of one discard or write-zeroes request.
pub const MAX_DISCARD_SEG: u32 = 1;
/// Length of the serial returned by GET_ID.
pub const ID_BYTES: usize = 20;

/// Feature bits of virtio-blk (5.2.3).
pub const VIRTIO_BLK_F_SIZE_MAX: u32 = 1;
/// `seg_max` is valid.
pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
/// The disk is read-only.
pub const VIRTIO_BLK_F_RO: u32 = 5;
/// `blk_size` is valid.
pub const VIRTIO_BLK_F_BLK_SIZE: u32 = 6;
/// The FLUSH command is supported.
pub const VIRTIO_BLK_F_FLUSH: u32 = 9;
/// The DISCARD command is supported.
pub const VIRTIO_BLK_F_DISCARD: u32 = 13;
/// The WRITE_ZEROES command is supported.
pub const VIRTIO_BLK_F_WRITE_ZEROES: u32 = 14;

/// Request types (5.2.6).
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Write.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Flush the write cache.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Read the device ID (serial).
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Discard sectors.
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
/// Write zeroes to sectors.
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

/// Request status values.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// The request failed.
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// The request is not supported.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Flag of a write-zeroes segment: the device may deallocate.
const FLAG_UNMAP: u32 = 1;
/// Bytes of the request header.
const HEADER: usize = 16;
/// Bytes of a discard / write-zeroes segment.
const DWZ_SEGMENT: usize = 16;
/// Length of the configuration space we describe (up to
/// `write_zeroes_may_unmap` and its padding).
const CONFIG_LEN: usize = 60;
const _: () = assert!(std::mem::size_of::<BlockConfig>() == CONFIG_LEN);

/// `struct virtio_blk_config` (5.2.4) up to `unused1`; the secure-erase
/// fields after it are not offered. Packed because `capacity` would
/// otherwise align the whole to 8 bytes and pad it to 64; every field sits
/// at its natural alignment anyway.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct BlockConfig {
    capacity: Le64,
    size_max: Le32,
    seg_max: Le32,
    geometry: BlockGeometry,
    blk_size: Le32,
    topology: BlockTopology,
    writeback: u8,
    unused0: u8,
    num_queues: Le16,
    max_discard_sectors: Le32,
    max_discard_seg: Le32,
    discard_sector_alignment: Le32,
    max_write_zeroes_sectors: Le32,
    max_write_zeroes_seg: Le32,
    write_zeroes_may_unmap: u8,
    unused1: [u8; 3],
}

// SAFETY: BlockConfig is repr(C, packed), so it has no padding, and its
// fields are integers, little-endian integers, byte arrays and the two
// repr(C) structs below, which are made of the same and have no padding:
// every bit pattern is a valid value.
unsafe impl ByteValued for BlockConfig {}

/// `struct virtio_blk_geometry`: not offered (no GEOMETRY), left zero.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct BlockGeometry {
    cylinders: Le16,
    heads: u8,
    sectors: u8,
}

/// `struct virtio_blk_topology`: not offered (no TOPOLOGY), left zero.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct BlockTopology {
    physical_block_exp: u8,
    alignment_offset: u8,
    min_io_size: Le16,
    opt_io_size: Le32,
}

/// What the disk is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskParams {
    /// Capacity in sectors.
    pub sectors: u64,
    /// Writes fail and RO is offered.
    pub read_only: bool,
    /// The image was opened with O_DIRECT: the guest is told 4 KiB blocks,
    /// so that its I/O is aligned as the host requires.
    pub direct: bool,
    /// The GET_ID answer (at most 20 bytes).
    pub serial: Vec<u8>,
}

/// What the device has done, for statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// Requests completed, whatever their status.
    pub requests: u64,
    /// Bytes read from the image into the guest.
    pub bytes_read: u64,
    /// Bytes written from the guest to the image.
    pub bytes_written: u64,
    /// Requests completed with IOERR.
    pub errors: u64,
    /// Requests completed with UNSUPP.
    pub unsupported: u64,
    /// Chains returned without a status (nowhere to put one).
    pub dropped: u64,
}

/// The virtio-blk device model.
pub struct Block {
    file: File,
    params: DiskParams,
    features: u64,
    stats: BlockStats,
    /// The request being served, kept between requests for their
    /// capacity: serving one allocates nothing.
    parsed: Parsed,
    iov: IoVecs,
}

/// A chain split into its readable and writable bytes.
#[derive(Default)]
struct Parsed {
    readable: Vec<Seg>,
    writable: Vec<Seg>,
    /// A readable descriptor came after a writable one.
    misordered: bool,
    /// More than [`MAX_DESCRIPTORS`] descriptors.
    too_long: bool,
}

/// Why a request failed, as a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fail {
    IoErr,
    Unsupp,
}

pub(super) fn io_err<T>(_: T) -> Fail {
    Fail::IoErr
}

impl Block {
    /// A device over `file`, an image of `params.sectors` sectors.
    pub fn new(file: File, params: DiskParams) -> Self {
        Self {
            file,
            params,
            features: 0,
            stats: BlockStats::default(),
            parsed: Parsed::default(),
            iov: IoVecs::default(),
        }
    }

    /// What the device has done so far.
    pub fn stats(&self) -> BlockStats {
        self.stats
    }

    fn negotiated(&self, bit: u32) -> bool {
        self.features & (1 << bit) != 0
    }

    fn block_size(&self) -> u32 {
        if self.params.direct {
            4096
        } else {
            512
        }
    }

    /// Splits `chain` into readable and writable segments, into `p`;
    /// false if the chain was cut short (a loop or a bad next index).
    fn parse(chain: DescriptorChain<&GuestMemory>, p: &mut Parsed) -> bool {
        p.readable.clear();
        p.writable.clear();
        p.misordered = false;
        p.too_long = false;
        let mut count = 0usize;
        let mut cut = false;
        for desc in chain {
            cut = desc.has_next();
            count += 1;
            if count > MAX_DESCRIPTORS {
                p.too_long = true;
                continue;
            }
            let len = usize::try_from(desc.len()).unwrap_or(0);
            if len == 0 {
                continue;
            }
            // A range that wraps the address space is outside memory.
            if desc.addr().checked_add(desc.len().into()).is_none() {
                p.too_long = true;
                continue;
            }
            let seg = Seg {
                addr: desc.addr(),
                len,
            };
            if desc.is_write_only() {
                p.writable.push(seg);
            } else {
                if !p.writable.is_empty() {
                    p.misordered = true;
                }
                p.readable.push(seg);
            }
        }
        !cut && count != 0
    }

    /// Serves one request; returns the used length.
    fn serve(&mut self, chain: DescriptorChain<&GuestMemory>, mem: &GuestMemory) -> u32 {
        self.stats.requests += 1;
        let mut p = std::mem::take(&mut self.parsed);
        let used = self.serve_parsed(chain, &mut p, mem);
        self.parsed = p;
        used
    }

    fn serve_parsed(
        &mut self,
        chain: DescriptorChain<&GuestMemory>,
        p: &mut Parsed,
        mem: &GuestMemory,
    ) -> u32 {
        if !Self::parse(chain, p) {
            self.stats.dropped += 1;
            return 0;
        }
        // The status is the last writable byte; the data is before it.
        let Some(status_at) = pop_last_byte(&mut p.writable) else {
            self.stats.dropped += 1;
            return 0;
        };
        let (status, written) = match self.execute(p, mem) {
            Ok(n) => (VIRTIO_BLK_S_OK, n),
            Err(Fail::IoErr) => {
                self.stats.errors += 1;
                (VIRTIO_BLK_S_IOERR, 0)
            }
            Err(Fail::Unsupp) => {
                self.stats.unsupported += 1;
                (VIRTIO_BLK_S_UNSUPP, 0)
            }
        };
        if mem.write_obj(status, status_at).is_err() {
            self.stats.dropped += 1;
            return 0;
        }
        u32::try_from(written + 1).unwrap_or(u32::MAX)
    }

    /// Runs a well-formed request; returns the bytes written to the
    /// guest's data buffers.
    fn execute(&mut self, p: &mut Parsed, mem: &GuestMemory) -> Result<usize, Fail> {
        if p.misordered || p.too_long {
            return Err(Fail::IoErr);
        }
        let mut header = [0u8; HEADER];
        gather(mem, &p.readable, &mut header)?;
        let word = |i: usize| header.get(i..i + 4).and_then(|b| b.try_into().ok());
        let kind = u32::from_le_bytes(word(0).ok_or(Fail::IoErr)?);
        let sector = u64::from_le_bytes(
            header
                .get(8..16)
                .and_then(|b| b.try_into().ok())
                .ok_or(Fail::IoErr)?,
        );
        drop_front(&mut p.readable, HEADER);
        let (data_in, data_out) = (&p.readable, &p.writable);
        match kind {
            VIRTIO_BLK_T_IN => {
                let len = self.check_range(sector, total(data_out))?;
                let file = &self.file;
                self.iov.with(|iov| {
                    iovecs(mem, data_out, iov)?;
                    transfer(file, iov, sector * SECTOR, false).map_err(io_err)
                })?;
                self.stats.bytes_read += len as u64;
                Ok(len)
            }
            VIRTIO_BLK_T_OUT => {
                self.writable()?;
                let len = self.check_range(sector, total(data_in))?;
                let file = &self.file;
                self.iov.with(|iov| {
                    iovecs(mem, data_in, iov)?;
                    transfer(file, iov, sector * SECTOR, true).map_err(io_err)
                })?;
                if !self.negotiated(VIRTIO_BLK_F_FLUSH) {
                    // Without FLUSH the driver assumes write-through.
                    self.file.sync_data().map_err(io_err)?;
                }
                self.stats.bytes_written += len as u64;
                Ok(0)
            }
            VIRTIO_BLK_T_FLUSH => {
                if !self.negotiated(VIRTIO_BLK_F_FLUSH) {
                    return Err(Fail::Unsupp);
                }
                self.file.sync_data().map_err(io_err)?;
                Ok(0)
            }
            VIRTIO_BLK_T_GET_ID => {
                let mut id = [0u8; ID_BYTES];
                let n = self.params.serial.len().min(ID_BYTES);
                id.get_mut(..n)
                    .ok_or(Fail::IoErr)?
                    .copy_from_slice(self.params.serial.get(..n).ok_or(Fail::IoErr)?);
                scatter(mem, data_out, &id)
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                let feature = if kind == VIRTIO_BLK_T_DISCARD {
                    VIRTIO_BLK_F_DISCARD
                } else {
                    VIRTIO_BLK_F_WRITE_ZEROES
                };
                if !self.negotiated(feature) {
                    return Err(Fail::Unsupp);
                }
                self.writable()?;
                self.discard_or_zero(kind, data_in, mem)?;
                Ok(0)
            }
            _ => Err(Fail::Unsupp),
        }
    }

    fn writable(&self) -> Result<(), Fail> {
        if self.params.read_only {
            Err(Fail::IoErr)
        } else {
            Ok(())
        }
    }

    /// Checks that `len` bytes from `sector` are whole sectors inside the
    /// disk; returns `len`.
    fn check_range(&self, sector: u64, len: usize) -> Result<usize, Fail> {
        let bytes = len as u64;
        if !bytes.is_multiple_of(SECTOR) {
            return Err(Fail::IoErr);
        }
        match sector.checked_add(bytes / SECTOR) {
            Some(end) if end <= self.params.sectors => Ok(len),
            _ => Err(Fail::IoErr),
        }
    }

    fn discard_or_zero(&mut self, kind: u32, data: &[Seg], mem: &GuestMemory) -> Result<(), Fail> {
        let len = total(data);
        if len == 0 || !len.is_multiple_of(DWZ_SEGMENT) {
            return Err(Fail::IoErr);
        }
        if len / DWZ_SEGMENT > MAX_DISCARD_SEG as usize {
            return Err(Fail::Unsupp);
        }
        let mut seg = [0u8; DWZ_SEGMENT];
        gather(mem, data, &mut seg)?;
        let field = |i: usize, n: usize| seg.get(i..i + n).ok_or(Fail::IoErr);
        let sector = u64::from_le_bytes(field(0, 8)?.try_into().map_err(io_err)?);
        let count = u32::from_le_bytes(field(8, 4)?.try_into().map_err(io_err)?);
        let flags = u32::from_le_bytes(field(12, 4)?.try_into().map_err(io_err)?);
        let unmap = flags & FLAG_UNMAP != 0;
        if flags & !FLAG_UNMAP != 0 || (kind == VIRTIO_BLK_T_DISCARD && unmap) {
            return Err(Fail::Unsupp);
        }
        if count > MAX_DISCARD_SECTORS {
            return Err(Fail::IoErr);
        }
        let bytes = u64::from(count) * SECTOR;
        self.check_range(sector, usize::try_from(bytes).map_err(io_err)?)?;
        let offset = sector * SECTOR;
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        if kind == VIRTIO_BLK_T_DISCARD {
            // Discarded sectors read back as zeroes here, which the
            // protocol allows.
            return fallocate(self.file.as_fd(), punch, offset, bytes).map_err(io_err);
        }
        let zero = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
        if unmap && fallocate(self.file.as_fd(), punch, offset, bytes).is_ok() {
            return Ok(());
        }
        if fallocate(self.file.as_fd(), zero, offset, bytes).is_ok() {
            return Ok(());
        }
        // Some file systems have neither: write the zeroes.
        self.write_zeroes(offset, bytes)
    }

    fn write_zeroes(&mut self, mut offset: u64, mut bytes: u64) -> Result<(), Fail> {
        const CHUNK: usize = 64 * 1024;
        // O_DIRECT wants an aligned buffer: carve one out of a larger one.
        let mut buf = vec![0u8; CHUNK + 4096];
        let start = buf.as_ptr().align_offset(4096).min(4096);
        let zeroes = buf.get_mut(start..start + CHUNK).ok_or(Fail::IoErr)?;
        while bytes > 0 {
            let n = usize::try_from(bytes.min(CHUNK as u64)).unwrap_or(CHUNK);
            let part = zeroes.get_mut(..n).ok_or(Fail::IoErr)?;
            let mut iov = vec![libc::iovec {
                iov_base: part.as_mut_ptr().cast(),
                iov_len: n,
            }];
            transfer(&self.file, &mut iov, offset, true).map_err(io_err)?;
            offset += n as u64;
            bytes -= n as u64;
        }
        Ok(())
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        DEVICE_ID_BLOCK
    }

    fn num_queues(&self) -> usize {
        1
    }

    fn max_queue_size(&self) -> u16 {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        let mut f = TRANSPORT_FEATURES
            | 1 << VIRTIO_BLK_F_SIZE_MAX
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_DISCARD
            | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        if self.params.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }

    fn config(&self) -> Vec<u8> {
        let block_size = self.block_size();
        let config = BlockConfig {
            capacity: self.params.sectors.into(),
            size_max: SIZE_MAX.into(),
            seg_max: SEG_MAX.into(),
            blk_size: block_size.into(),
            max_discard_sectors: MAX_DISCARD_SECTORS.into(),
            max_discard_seg: MAX_DISCARD_SEG.into(),
            // In 512-byte sectors: one block.
            discard_sector_alignment: (block_size / 512).into(),
            max_write_zeroes_sectors: MAX_DISCARD_SECTORS.into(),
            max_write_zeroes_seg: MAX_DISCARD_SEG.into(),
            write_zeroes_may_unmap: 1,
            ..BlockConfig::default()
        };
        config.as_slice().to_vec()
    }

    fn activate(&mut self, features: u64) -> Result<(), DeviceError> {
        check_features(features, self.features())?;
        self.features = features;
        Ok(())
    }

    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<Processed, DeviceError> {
        if index != 0 {
            return Err(DeviceError::NoQueue(index));
        }
        serve_queue(queue, mem, |chain| self.serve(chain, mem))
    }

    fn reset(&mut self) {
        self.features = 0;
    }
}

#[cfg(test)]
mod tests;
