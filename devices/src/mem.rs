//! virtio-mem, the memory device (virtio 1.2, section 5.15): a region of
//! guest physical addresses, in blocks, that the driver plugs and unplugs
//! on request. The VMM backs the usable part of the region with memory
//! before it raises the requested size; this model keeps which blocks are
//! plugged and answers the driver's requests on its one queue.
//!
//! Guest input is hostile: a request must be one device-readable part of
//! [`REQUEST_LEN`] bytes and one device-writable part for the
//! [`RESPONSE_LEN`]-byte answer; anything else is completed with length 0
//! and counted. Ranges are checked against the usable region with
//! overflow-checked arithmetic.

use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{ByteValued, Bytes, Le16, Le64};

use crate::virtio::{
    check_features, serve_queue, DeviceError, GuestMemory, Processed, VirtioDevice,
    TRANSPORT_FEATURES,
};

/// Device ID of a memory device.
pub const DEVICE_ID_MEM: u32 = 24;
/// Feature bit: the driver must not touch unplugged memory (it is not
/// backed).
pub const VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE: u32 = 1;
/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 128;
/// Bytes of a request.
pub const REQUEST_LEN: usize = 24;
/// Bytes of a response.
pub const RESPONSE_LEN: usize = 10;
/// Most blocks of a region: one bit each in the saved state.
pub const MAX_BLOCKS: u64 = 2048;

const REQ_PLUG: u16 = 0;
const REQ_UNPLUG: u16 = 1;
const REQ_UNPLUG_ALL: u16 = 2;
const REQ_STATE: u16 = 3;
const RESP_ACK: u16 = 0;
const RESP_NACK: u16 = 1;
const RESP_ERROR: u16 = 3;
const STATE_PLUGGED: u16 = 0;
const STATE_UNPLUGGED: u16 = 1;
const STATE_MIXED: u16 = 2;

/// Length of the configuration space.
const CONFIG_LEN: usize = 56;
const _: () = assert!(std::mem::size_of::<MemConfig>() == CONFIG_LEN);

/// `struct virtio_mem_config` (5.15.4).
#[repr(C)]
#[derive(Clone, Copy)]
struct MemConfig {
    block_size: Le64,
    node_id: Le16,
    padding: [u8; 6],
    addr: Le64,
    region_size: Le64,
    usable_region_size: Le64,
    plugged_size: Le64,
    requested_size: Le64,
}

// SAFETY: MemConfig is repr(C) and its explicit `padding` puts every
// 8-byte field at a multiple of 8, so the compiler adds no padding; all
// fields are little-endian integers or bytes, for which every bit pattern
// is a valid value.
unsafe impl ByteValued for MemConfig {}

/// Why a [`MemParams`] cannot describe a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MemError {
    /// `block_size` is not a power of two of at least 4 KiB.
    #[error("block_size {0:#x} is not a power of two of at least 4 KiB")]
    BlockSize(u64),
    /// A field that must be a whole number of blocks is not.
    #[error("{field} {value:#x} is not a multiple of block_size")]
    Unaligned {
        /// The field's name.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// `region_size` is zero or more than [`MAX_BLOCKS`] blocks.
    #[error("region_size of {0} blocks, expected 1 to {max}", max = MAX_BLOCKS)]
    RegionBlocks(u64),
    /// `addr + region_size` overflows.
    #[error("addr {addr:#x} + region_size {region_size:#x} wraps the address space")]
    Wraps {
        /// Start of the region.
        addr: u64,
        /// Its size.
        region_size: u64,
    },
    /// `usable` is larger than `region_size`.
    #[error("usable {usable:#x} is past region_size {region_size:#x}")]
    UsablePastRegion {
        /// The backed size.
        usable: u64,
        /// The region's size.
        region_size: u64,
    },
    /// `requested` is larger than `usable`.
    #[error("requested {requested:#x} is past usable {usable:#x}")]
    RequestedPastUsable {
        /// The size asked for.
        requested: u64,
        /// The backed size.
        usable: u64,
    },
}

/// The region and how much of it the VMM has backed and wants plugged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemParams {
    /// Guest physical address of the region (block aligned).
    pub addr: u64,
    /// Size of the region.
    pub region_size: u64,
    /// Block size (a power of two).
    pub block_size: u64,
    /// The backed part, from the start of the region.
    pub usable: u64,
    /// How much the VMM asks the driver to plug.
    pub requested: u64,
}

impl MemParams {
    /// Checks the geometry: power-of-two blocks, an aligned region of at
    /// most [`MAX_BLOCKS`] blocks, usable and requested within it.
    pub fn validate(&self) -> Result<(), MemError> {
        let b = self.block_size;
        if !b.is_power_of_two() || b < 4096 {
            return Err(MemError::BlockSize(b));
        }
        for (field, value) in [
            ("addr", self.addr),
            ("region_size", self.region_size),
            ("usable", self.usable),
        ] {
            if !value.is_multiple_of(b) {
                return Err(MemError::Unaligned { field, value });
            }
        }
        if self.region_size / b > MAX_BLOCKS || self.region_size == 0 {
            return Err(MemError::RegionBlocks(self.region_size / b));
        }
        let (addr, region_size) = (self.addr, self.region_size);
        if addr.checked_add(region_size).is_none() {
            return Err(MemError::Wraps { addr, region_size });
        }
        let usable = self.usable;
        if usable > region_size {
            return Err(MemError::UsablePastRegion {
                usable,
                region_size,
            });
        }
        if self.requested > usable {
            return Err(MemError::RequestedPastUsable {
                requested: self.requested,
                usable,
            });
        }
        Ok(())
    }
}

/// What the device has done, for statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemStats {
    /// Requests answered.
    pub requests: u64,
    /// Chains completed with length 0 because they were malformed.
    pub bad_chains: u64,
}

/// The virtio-mem device model.
pub struct Mem {
    params: MemParams,
    features: u64,
    plugged: Vec<bool>,
    stats: MemStats,
}

impl Mem {
    /// A device over `params` (checked with [`MemParams::validate`]) with no
    /// block plugged.
    pub fn new(params: MemParams) -> Result<Self, MemError> {
        params.validate()?;
        let blocks = params.region_size / params.block_size;
        let blocks = usize::try_from(blocks).map_err(|_| MemError::RegionBlocks(blocks))?;
        Ok(Self {
            params,
            features: 0,
            plugged: vec![false; blocks],
            stats: MemStats::default(),
        })
    }

    /// Bytes plugged.
    pub fn plugged_size(&self) -> u64 {
        self.plugged.iter().filter(|p| **p).count() as u64 * self.params.block_size
    }

    /// What the device has done so far.
    pub fn stats(&self) -> MemStats {
        self.stats
    }

    /// The blocks `nb_blocks` from `addr`, if they lie in the usable part.
    fn blocks(&self, addr: u64, nb_blocks: u16) -> Option<std::ops::Range<usize>> {
        let p = &self.params;
        let offset = addr.checked_sub(p.addr)?;
        if nb_blocks == 0 || offset % p.block_size != 0 {
            return None;
        }
        let end = offset.checked_add(u64::from(nb_blocks).checked_mul(p.block_size)?)?;
        if end > p.usable {
            return None;
        }
        let first = usize::try_from(offset / p.block_size).ok()?;
        Some(first..first + usize::from(nb_blocks))
    }

    /// Answers one request: (response type, state).
    fn answer(&mut self, kind: u16, addr: u64, nb_blocks: u16) -> (u16, u16) {
        let range = self.blocks(addr, nb_blocks);
        match (kind, range) {
            (REQ_PLUG, Some(r)) => {
                let Some(blocks) = self.plugged.get_mut(r.clone()) else {
                    return (RESP_ERROR, 0);
                };
                if blocks.iter().any(|p| *p) {
                    return (RESP_ERROR, 0);
                }
                let more = u64::from(nb_blocks) * self.params.block_size;
                if self.plugged_size() + more > self.params.requested {
                    return (RESP_NACK, 0);
                }
                if let Some(blocks) = self.plugged.get_mut(r) {
                    blocks.fill(true);
                }
                (RESP_ACK, 0)
            }
            (REQ_UNPLUG, Some(r)) => match self.plugged.get_mut(r) {
                Some(blocks) if blocks.iter().all(|p| *p) => {
                    blocks.fill(false);
                    (RESP_ACK, 0)
                }
                _ => (RESP_ERROR, 0),
            },
            (REQ_UNPLUG_ALL, _) => {
                self.plugged.fill(false);
                (RESP_ACK, 0)
            }
            (REQ_STATE, Some(r)) => match self.plugged.get(r) {
                Some(b) if b.iter().all(|p| *p) => (RESP_ACK, STATE_PLUGGED),
                Some(b) if b.iter().all(|p| !*p) => (RESP_ACK, STATE_UNPLUGGED),
                Some(_) => (RESP_ACK, STATE_MIXED),
                None => (RESP_ERROR, 0),
            },
            _ => (RESP_ERROR, 0),
        }
    }

    /// Serves one request; returns the used length.
    fn serve(&mut self, chain: DescriptorChain<&GuestMemory>, mem: &GuestMemory) -> u32 {
        let descs: Vec<_> = chain.take(3).collect();
        let [req, resp] = descs.as_slice() else {
            self.stats.bad_chains += 1;
            return 0;
        };
        if req.is_write_only()
            || !resp.is_write_only()
            || (req.len() as usize) < REQUEST_LEN
            || (resp.len() as usize) < RESPONSE_LEN
        {
            self.stats.bad_chains += 1;
            return 0;
        }
        let mut r = [0u8; REQUEST_LEN];
        if mem.read_slice(&mut r, req.addr()).is_err() {
            self.stats.bad_chains += 1;
            return 0;
        }
        let kind = u16::from_le_bytes([r[0], r[1]]);
        let addr = u64::from_le_bytes([r[8], r[9], r[10], r[11], r[12], r[13], r[14], r[15]]);
        let nb_blocks = u16::from_le_bytes([r[16], r[17]]);
        let (answer, state) = self.answer(kind, addr, nb_blocks);
        let mut out = [0u8; RESPONSE_LEN];
        out[..2].copy_from_slice(&answer.to_le_bytes());
        out[8..].copy_from_slice(&state.to_le_bytes());
        if mem.write_slice(&out, resp.addr()).is_err() {
            self.stats.bad_chains += 1;
            return 0;
        }
        self.stats.requests += 1;
        u32::try_from(RESPONSE_LEN).unwrap_or(0)
    }
}

impl VirtioDevice for Mem {
    fn device_type(&self) -> u32 {
        DEVICE_ID_MEM
    }

    fn num_queues(&self) -> usize {
        1
    }

    fn max_queue_size(&self) -> u16 {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        TRANSPORT_FEATURES | (1 << VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE)
    }

    fn config(&self) -> Vec<u8> {
        let p = &self.params;
        let config = MemConfig {
            block_size: p.block_size.into(),
            node_id: 0.into(),
            padding: [0; 6],
            addr: p.addr.into(),
            region_size: p.region_size.into(),
            usable_region_size: p.usable.into(),
            plugged_size: self.plugged_size().into(),
            requested_size: p.requested.into(),
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

    /// A reset unplugs everything (section 5.15.5: the driver then finds
    /// no block plugged).
    fn reset(&mut self) {
        self.features = 0;
        self.plugged.fill(false);
    }

    fn report(&self) -> Option<String> {
        (self.stats.bad_chains > 0)
            .then(|| format!("dropped {} malformed requests", self.stats.bad_chains))
    }

    /// One bit per block, plugged or not.
    fn save_state(&self) -> Vec<u8> {
        let mut bits = vec![0u8; self.plugged.len().div_ceil(8)];
        for (i, _) in self.plugged.iter().enumerate().filter(|(_, p)| **p) {
            if let Some(b) = bits.get_mut(i / 8) {
                *b |= 1 << (i % 8);
            }
        }
        bits
    }

    /// Takes the plugged blocks of another instance: the same number of
    /// blocks, none past the usable part.
    fn restore_state(&mut self, state: &[u8]) -> Result<(), DeviceError> {
        if state.len() != self.plugged.len().div_ceil(8) {
            return Err(DeviceError::Refused(format!(
                "mem state of {} bytes for {} blocks",
                state.len(),
                self.plugged.len()
            )));
        }
        let usable = usize::try_from(self.params.usable / self.params.block_size).unwrap_or(0);
        let mut plugged = vec![false; self.plugged.len()];
        for (i, p) in plugged.iter_mut().enumerate() {
            *p = state.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0);
            if *p && i >= usable {
                return Err(DeviceError::Refused(format!(
                    "block {i} plugged past the usable region"
                )));
            }
        }
        if state.last().is_some_and(|b| {
            let used_bits = self.plugged.len() % 8;
            used_bits != 0 && b >> used_bits != 0
        }) {
            return Err(DeviceError::Refused("bits past the last block".into()));
        }
        self.plugged = plugged;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::test_queue::{raw_chains, used};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    const MIB: u64 = 1 << 20;
    const REGION: u64 = 1 << 32;
    const REQ: u64 = 0x10_000;
    const RESP: u64 = 0x20_000;

    fn mem() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn device(usable: u64, requested: u64) -> Mem {
        let mut d = Mem::new(MemParams {
            addr: REGION,
            region_size: 256 * MIB,
            block_size: 2 * MIB,
            usable,
            requested,
        })
        .unwrap();
        d.activate(TRANSPORT_FEATURES).unwrap();
        d
    }

    /// Posts one request and returns (used length, response type, state).
    fn request(d: &mut Mem, kind: u16, addr: u64, nb: u16) -> (u32, u16, u16) {
        let m = mem();
        let mut r = [0u8; REQUEST_LEN];
        r[..2].copy_from_slice(&kind.to_le_bytes());
        r[8..16].copy_from_slice(&addr.to_le_bytes());
        r[16..18].copy_from_slice(&nb.to_le_bytes());
        m.write_slice(&r, GuestAddress(REQ)).unwrap();
        let vq = MockSplitQueue::new(&m, 16);
        let chain = vec![vec![(REQ, 24, false), (RESP, 10, true)]];
        vq.add_desc_chains(&raw_chains(&chain, 0), 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        d.process_queue(0, &mut q, &m).unwrap();
        let len = used(&vq)[0].1;
        let mut out = [0u8; RESPONSE_LEN];
        m.read_slice(&mut out, GuestAddress(RESP)).unwrap();
        (
            len,
            u16::from_le_bytes([out[0], out[1]]),
            u16::from_le_bytes([out[8], out[9]]),
        )
    }

    #[test]
    fn blocks_plug_up_to_the_requested_size_within_the_usable_part() {
        let mut d = device(128 * MIB, 8 * MIB);
        assert_eq!(request(&mut d, REQ_PLUG, REGION, 2), (10, RESP_ACK, 0));
        assert_eq!(d.plugged_size(), 4 * MIB);
        // Already plugged.
        assert_eq!(request(&mut d, REQ_PLUG, REGION, 1).1, RESP_ERROR);
        // Past the requested size: the device says no, not an error.
        assert_eq!(request(&mut d, REQ_PLUG, REGION + 4 * MIB, 3).1, RESP_NACK);
        assert_eq!(request(&mut d, REQ_PLUG, REGION + 4 * MIB, 2).1, RESP_ACK);
        // Past the usable part, unaligned, before the region, zero blocks,
        // wrapping: errors.
        let mut e = device(128 * MIB, 128 * MIB);
        for (addr, nb) in [
            (REGION + 128 * MIB, 1),
            (REGION + 126 * MIB, 2),
            (REGION + 4096, 1),
            (REGION - 2 * MIB, 1),
            (REGION, 0),
            (u64::MAX - MIB, 1),
        ] {
            assert_eq!(
                request(&mut e, REQ_PLUG, addr, nb).1,
                RESP_ERROR,
                "{addr:#x}"
            );
        }
        assert_eq!(e.plugged_size(), 0);
    }

    #[test]
    fn state_unplug_and_unplug_all() {
        let mut d = device(128 * MIB, 128 * MIB);
        request(&mut d, REQ_PLUG, REGION, 1);
        assert_eq!(
            request(&mut d, REQ_STATE, REGION, 1),
            (10, RESP_ACK, STATE_PLUGGED)
        );
        assert_eq!(request(&mut d, REQ_STATE, REGION, 2).2, STATE_MIXED);
        assert_eq!(
            request(&mut d, REQ_STATE, REGION + 2 * MIB, 1).2,
            STATE_UNPLUGGED
        );
        // Unplugging blocks that are not all plugged is an error.
        assert_eq!(request(&mut d, REQ_UNPLUG, REGION, 2).1, RESP_ERROR);
        assert_eq!(request(&mut d, REQ_UNPLUG, REGION, 1).1, RESP_ACK);
        request(&mut d, REQ_PLUG, REGION + 8 * MIB, 3);
        assert_eq!(request(&mut d, REQ_UNPLUG_ALL, 0, 0).1, RESP_ACK);
        assert_eq!(d.plugged_size(), 0);
        assert_eq!(request(&mut d, 99, REGION, 1).1, RESP_ERROR);
    }

    #[test]
    fn malformed_chains_are_completed_empty() {
        let mut d = device(128 * MIB, 128 * MIB);
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let chains = vec![
            vec![(REQ, 24, false)],
            vec![(REQ, 23, false), (RESP, 10, true)],
            vec![(REQ, 24, true), (RESP, 10, true)],
            vec![(REQ, 24, false), (RESP, 9, true)],
            vec![(REQ, 24, false), (RESP, 10, true), (RESP, 10, true)],
            vec![(1 << 30, 24, false), (RESP, 10, true)],
        ];
        vq.add_desc_chains(&raw_chains(&chains, 0), 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        d.process_queue(0, &mut q, &m).unwrap();
        assert!(used(&vq).iter().all(|(_, len)| *len == 0));
        assert_eq!(d.stats().bad_chains, 6);
        assert!(d.report().unwrap().contains("dropped 6"));
    }

    #[test]
    fn the_configuration_says_where_and_how_much() {
        let d = device(64 * MIB, 32 * MIB);
        let c = d.config();
        let at = |i: usize| u64::from_le_bytes(c[i..i + 8].try_into().unwrap());
        assert_eq!(c.len(), 56);
        assert_eq!(at(0), 2 * MIB);
        assert_eq!(at(16), REGION);
        assert_eq!(at(24), 256 * MIB);
        assert_eq!(at(32), 64 * MIB);
        assert_eq!(at(40), 0);
        assert_eq!(at(48), 32 * MIB);
    }

    #[test]
    fn config_bytes_are_pinned() {
        let mut d = device(64 * MIB, 32 * MIB);
        request(&mut d, REQ_PLUG, REGION, 2);
        let c = d.config();
        let expected: Vec<u8> = [
            [0, 0, 0x20, 0, 0, 0, 0, 0], // block_size: 2 MiB
            [0; 8],                      // node_id, padding
            [0, 0, 0, 0, 1, 0, 0, 0],    // addr: 4 GiB
            [0, 0, 0, 0x10, 0, 0, 0, 0], // region_size: 256 MiB
            [0, 0, 0, 0x04, 0, 0, 0, 0], // usable_region_size: 64 MiB
            [0, 0, 0x40, 0, 0, 0, 0, 0], // plugged_size: 4 MiB
            [0, 0, 0, 0x02, 0, 0, 0, 0], // requested_size: 32 MiB
        ]
        .concat();
        assert_eq!(c, expected);
    }

    #[test]
    fn plugged_blocks_carry_over_and_impossible_ones_are_refused() {
        let mut a = device(128 * MIB, 128 * MIB);
        request(&mut a, REQ_PLUG, REGION + 2 * MIB, 3);
        let saved = a.save_state();
        assert_eq!(saved.len(), 16);
        let mut b = device(128 * MIB, 128 * MIB);
        b.restore_state(&saved).unwrap();
        assert_eq!(b.plugged_size(), 6 * MIB);
        assert_eq!(
            request(&mut b, REQ_STATE, REGION + 2 * MIB, 3).2,
            STATE_PLUGGED
        );
        // A block past the usable part, a wrong length.
        let mut past = vec![0u8; 16];
        past[15] = 0x80;
        assert!(b.restore_state(&past).is_err());
        assert!(b.restore_state(&saved[1..]).is_err());
    }

    #[test]
    fn bad_geometry_is_refused() {
        let good = MemParams {
            addr: REGION,
            region_size: 256 * MIB,
            block_size: 2 * MIB,
            usable: 0,
            requested: 0,
        };
        assert!(Mem::new(good).is_ok());
        for bad in [
            MemParams {
                block_size: 3 * MIB,
                ..good
            },
            MemParams {
                addr: REGION + 4096,
                ..good
            },
            MemParams {
                region_size: 0,
                ..good
            },
            MemParams {
                region_size: 8 << 30,
                ..good
            },
            MemParams {
                usable: 512 * MIB,
                ..good
            },
            MemParams {
                requested: 2 * MIB,
                ..good
            },
            MemParams {
                addr: u64::MAX - MIB * 2 + 1,
                ..good
            },
        ] {
            assert!(Mem::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn each_bad_geometry_names_its_field() {
        let good = MemParams {
            addr: REGION,
            region_size: 256 * MIB,
            block_size: 2 * MIB,
            usable: 64 * MIB,
            requested: 32 * MIB,
        };
        let error = |edit: fn(&mut MemParams)| {
            let mut p = good;
            edit(&mut p);
            Mem::new(p).err().unwrap().to_string()
        };
        assert_eq!(
            error(|p| p.block_size = 2048),
            "block_size 0x800 is not a power of two of at least 4 KiB"
        );
        assert_eq!(
            error(|p| p.usable = MIB),
            "usable 0x100000 is not a multiple of block_size"
        );
        assert_eq!(
            error(|p| p.region_size = 0),
            "region_size of 0 blocks, expected 1 to 2048"
        );
        assert_eq!(
            error(|p| p.addr = 0u64.wrapping_sub(2 * MIB)),
            "addr 0xffffffffffe00000 + region_size 0x10000000 wraps the address space"
        );
        assert_eq!(
            error(|p| p.usable = 512 * MIB),
            "usable 0x20000000 is past region_size 0x10000000"
        );
        assert_eq!(
            error(|p| p.requested = 128 * MIB),
            "requested 0x8000000 is past usable 0x4000000"
        );
    }
}
