//! Memory hotplug through virtio-mem (`--hotplug-mem MAX`, `skvm ctl SOCKET
//! mem-add SIZE`).
//!
//! The virtio-mem region sits above guest RAM and 4 GiB, 1 GiB aligned, and
//! is not in the e820 map. `mem-add` backs the next SIZE bytes of it with a
//! new memfd and memslot, gives every device process the new memory map by
//! replacing it (pause, save, stop, new process and sandbox, restore: a
//! confined process cannot map anything new itself), and only then raises
//! the size virtio-mem asks the driver to plug, with virtio-mem rebuilt
//! last. Each device process therefore maps exactly the memory that is
//! backed. The guest kernel plugs the blocks and onlines them
//! (CONFIG_MEMORY_HOTPLUG_DEFAULT_ONLINE).

use std::fs::File;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::device_host::DeviceHost;
use crate::memory::{create_memfd, map_ranges, RamRange};

/// The name of the virtio-mem device.
pub const DEVICE: &str = "mem0";
/// virtio-mem block size: the x86 pageblock.
pub const BLOCK_SIZE: u64 = 2 << 20;
/// What one mem-add adds a multiple of: Linux's memory block on x86-64.
pub const GRANULE: u64 = 128 << 20;
/// The largest region (virtio-mem's saved state has a bit per block).
pub const MAX_REGION: u64 = devices::mem::MAX_BLOCKS * BLOCK_SIZE;

/// What virtio-mem is told for a region at `addr` of `size` with `usable`
/// bytes backed, all of them requested.
pub fn backend(addr: u64, size: u64, usable: u64) -> ipc::Backend {
    ipc::Backend::Mem {
        addr,
        region_size: size,
        block_size: BLOCK_SIZE,
        usable,
        requested: usable,
    }
}

/// The hot-added memory and what it takes to add more.
pub struct Hotplug {
    vm: Arc<VmFd>,
    addr: u64,
    size: u64,
    added: u64,
    next_slot: u32,
    /// Every range of guest memory with its file (boot RAM first).
    ranges: Vec<(RamRange, Arc<File>)>,
    /// The VMM's mappings of the added regions (their memslots point in).
    mappings: Vec<GuestMemoryMmap>,
    /// What the vCPUs read guest memory through.
    vcpu_mem: Arc<Mutex<GuestMemoryMmap>>,
}

/// What one mem-add did.
pub struct Added {
    /// Bytes added.
    pub size: u64,
    /// The usable part of the region now.
    pub usable: u64,
    /// Devices given the new memory map.
    pub devices: usize,
    /// The longest any device was paused.
    pub longest_pause: Duration,
}

impl Hotplug {
    /// A region of `size` at `addr`; the boot RAM `ranges` use memslots
    /// 0 to ranges.len() - 1.
    pub fn new(
        vm: Arc<VmFd>,
        (addr, size): (u64, u64),
        ranges: Vec<(RamRange, Arc<File>)>,
        vcpu_mem: Arc<Mutex<GuestMemoryMmap>>,
    ) -> Self {
        let next_slot = u32::try_from(ranges.len()).unwrap_or(u32::MAX);
        Self {
            vm,
            addr,
            size,
            added: 0,
            next_slot,
            ranges,
            mappings: Vec::new(),
            vcpu_mem,
        }
    }

    /// Bytes added so far.
    pub fn added(&self) -> u64 {
        self.added
    }

    /// Adds `size` bytes (a multiple of 128 MiB) of guest memory.
    pub fn add(&mut self, size: u64, host: &mut DeviceHost) -> Result<Added> {
        if size == 0 || !size.is_multiple_of(GRANULE) {
            bail!("mem-add: the size must be a multiple of 128 MiB");
        }
        let room = self.size - self.added;
        if size > room {
            bail!(
                "mem-add: {} MiB left of the {} MiB of --hotplug-mem",
                room >> 20,
                self.size >> 20
            );
        }
        if self.ranges.len() >= ipc::MAX_REGIONS {
            bail!(
                "mem-add: at most {} memory regions; add more at a time",
                ipc::MAX_REGIONS
            );
        }
        let range = RamRange {
            guest_addr: self.addr + self.added,
            size,
            file_offset: 0,
        };
        let file = Arc::new(
            create_memfd(size, Some(range.guest_addr)).context("mem-add: cannot create memory")?,
        );
        let mapping = map_ranges(&[(range, file.clone())]).context("mem-add: cannot map")?;
        let host_addr = mapping
            .get_host_address(GuestAddress(range.guest_addr))
            .context("mem-add: the new memory is not mapped")?;
        let region = kvm_userspace_memory_region {
            slot: self.next_slot,
            guest_phys_addr: range.guest_addr,
            memory_size: size,
            userspace_addr: host_addr as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping kept in `self.mappings` for as
        // long as the VM (the VM is dropped first).
        unsafe { self.vm.set_user_memory_region(region) }
            .with_context(|| format!("mem-add: cannot add memslot {}", self.next_slot))?;
        self.next_slot += 1;
        self.mappings.push(mapping);
        self.ranges.push((range, file.clone()));
        self.added += size;
        if let Ok(all) = map_ranges(&self.ranges) {
            *self.vcpu_mem.lock().unwrap_or_else(|e| e.into_inner()) = all;
        }
        // Every device gets the new map; virtio-mem last, with the new size.
        host.add_memory(range, file);
        host.set_backend(DEVICE, backend(self.addr, self.size, self.added))?;
        let (done, errors) = host.rebuild_all(DEVICE);
        if !errors.is_empty() {
            bail!("mem-add: {}", errors.join("; "));
        }
        Ok(Added {
            size,
            usable: self.added,
            devices: done.len(),
            longest_pause: done
                .iter()
                .map(|(_, t)| t.save + t.spawn + t.restore)
                .max()
                .unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_region_holds_4_gib_at_most() {
        assert_eq!(MAX_REGION, 4 << 30);
    }
}
