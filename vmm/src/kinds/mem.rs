//! virtio-mem (`--hotplug-mem`): a region above guest RAM that `skvm ctl
//! SOCKET mem-add` backs 128 MiB at a time (the hotplug module). It runs in a
//! VMM thread, never a process: it is the VMM's memory manager, touches no
//! guest data but its own small requests, and must not be lost.

use std::os::fd::OwnedFd;

use devices::mem::{MemParams, DEVICE_ID_MEM};
use devices::virtio::VirtioDevice;
use ipc::params::{Decoder, Encoder};

use super::{
    take_fds, Confinement, DeviceConfig, DeviceKind, KindError, KindOption, OpenContext, Opened,
};
use crate::memory::parse_size;

const NAME: &str = "mem";
/// Version of its parameters: address, region size, block size, usable
/// and requested sizes.
const PARAMS_V1: u8 = 1;

/// virtio-mem block size: the x86 pageblock.
pub const BLOCK_SIZE: u64 = 2 << 20;
/// What one mem-add adds a multiple of: Linux's memory block on x86-64.
pub const GRANULE: u64 = 128 << 20;
/// The largest region (virtio-mem's saved state has a bit per block).
pub const MAX_REGION: u64 = devices::mem::MAX_BLOCKS * BLOCK_SIZE;

/// The virtio-mem kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mem;

/// `--hotplug-mem`: room for this many bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemConfig {
    /// Size of the region.
    pub room: u64,
}

impl DeviceConfig for MemConfig {
    fn open(&self, ctx: &mut OpenContext<'_>) -> anyhow::Result<Opened> {
        let addr = crate::layout::hotplug_region(ctx.ram_top);
        ctx.hotplug = Some((addr, self.room));
        Ok(Opened {
            params: encode(&params(addr, self.room, 0)),
            fds: Vec::new(),
            file_size: 0,
            root: ipc::Root::Empty,
            status: None,
            terminal: None,
        })
    }
}

/// What virtio-mem is told for a region at `addr` of `size` with `usable`
/// bytes backed, all of them requested.
pub fn params(addr: u64, size: u64, usable: u64) -> MemParams {
    MemParams {
        addr,
        region_size: size,
        block_size: BLOCK_SIZE,
        usable,
        requested: usable,
    }
}

/// The wire form of a region's parameters.
pub fn encode(p: &MemParams) -> Vec<u8> {
    Encoder::new(PARAMS_V1)
        .u64(p.addr)
        .u64(p.region_size)
        .u64(p.block_size)
        .u64(p.usable)
        .u64(p.requested)
        .finish()
}

/// Decodes what [`encode`] made; total over any input.
pub fn decode(b: &[u8]) -> Result<MemParams, ipc::IpcError> {
    let mut d = Decoder::new(b, PARAMS_V1)?;
    let p = MemParams {
        addr: d.u64()?,
        region_size: d.u64()?,
        block_size: d.u64()?,
        usable: d.u64()?,
        requested: d.u64()?,
    };
    d.end()?;
    Ok(p)
}

/// The room `--hotplug-mem` asks for: whole memory blocks up to 4 GiB.
fn room(given: &str) -> Result<u64, KindError> {
    parse_size(given)
        .filter(|s| s.is_multiple_of(GRANULE) && *s <= MAX_REGION)
        .ok_or_else(|| {
            KindError::Option(format!(
                "invalid --hotplug-mem '{given}': expected a multiple of 128M up to 4G, or 0"
            ))
        })
}

impl DeviceKind for Mem {
    fn name(&self) -> &str {
        NAME
    }

    fn virtio_id(&self) -> u32 {
        DEVICE_ID_MEM
    }

    fn option(&self) -> Option<KindOption> {
        Some(KindOption {
            long: "hotplug-mem",
            value_name: Some("SIZE"),
            repeatable: false,
            help: "Room for memory hotplug: adds a virtio-mem device (mem0, in a VMM thread) \
                   with a region of this size above guest RAM, which `skvm ctl SOCKET mem-add \
                   SIZE` fills 128 MiB at a time. A multiple of 128 MiB, at most 4G; 0 (the \
                   default): no hotplug",
        })
    }

    fn parse(&self, value: Option<&str>) -> Result<Option<Box<dyn DeviceConfig>>, KindError> {
        let room = room(value.unwrap_or_default())?;
        Ok((room > 0).then(|| Box::new(MemConfig { room }) as Box<dyn DeviceConfig>))
    }

    fn model(&self, params: &[u8], fds: Vec<OwnedFd>) -> Result<Box<dyn VirtioDevice>, KindError> {
        let params = decode(params).map_err(KindError::params(NAME))?;
        take_fds::<0>(NAME, fds)?;
        let model = devices::mem::Mem::new(params).map_err(|e| KindError::Model(Box::new(e)))?;
        Ok(Box::new(model))
    }

    fn confinement(&self) -> Option<Confinement> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hotplug_room_is_whole_memory_blocks_up_to_4g() {
        assert!(Mem.parse(Some("0")).unwrap().is_none());
        assert!(Mem.parse(Some("128M")).unwrap().is_some());
        assert_eq!(room("128M").unwrap(), 128 << 20);
        assert_eq!(room("4G").unwrap(), 4 << 30);
        for bad in ["100M", "5G", "lots", "-1", ""] {
            let e = room(bad).unwrap_err().to_string();
            assert!(e.contains("--hotplug-mem"), "{bad}: {e}");
        }
    }

    #[test]
    fn parameters_round_trip_and_build_a_model() {
        let p = params(4 << 30, 1 << 30, 256 << 20);
        assert_eq!(decode(&encode(&p)).unwrap(), p);
        assert!(Mem.model(&encode(&p), Vec::new()).is_ok());
        let bad = params(4 << 30, 1 << 30, 2 << 30);
        assert!(Mem.model(&encode(&bad), Vec::new()).is_err());
        assert!(decode(&encode(&p)[..20]).is_err());
    }

    #[test]
    fn the_region_holds_4_gib_at_most() {
        assert_eq!(MAX_REGION, 4 << 30);
    }
}
