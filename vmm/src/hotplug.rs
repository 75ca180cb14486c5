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

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::device_host::DeviceHost;
use crate::kinds::mem::{self, GRANULE};
use crate::memory::Memory;

/// The name of the virtio-mem device (the first of the mem kind).
pub const DEVICE: &str = "mem0";

/// The hot-added memory and what it takes to add more.
pub struct Hotplug {
    memory: Arc<Mutex<Memory>>,
    addr: u64,
    size: u64,
    added: u64,
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
    /// A region of `size` at `addr` in `memory`, nothing added yet.
    pub fn new(memory: Arc<Mutex<Memory>>, (addr, size): (u64, u64)) -> Self {
        Self {
            memory,
            addr,
            size,
            added: 0,
        }
    }

    /// The same, with `added` bytes already backed (a restored VM's).
    pub fn with_added(mut self, added: u64) -> Self {
        self.added = added.min(self.size);
        self
    }

    /// The region mem-add fills: its address and size.
    pub fn room(&self) -> (u64, u64) {
        (self.addr, self.size)
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
        let devices_map = {
            let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
            memory
                .add_region(self.addr + self.added, size)
                .context("mem-add")?;
            memory.for_devices()
        };
        self.added += size;
        // Every device gets the new map; virtio-mem last, with the new size.
        host.set_memory(devices_map);
        let params = mem::params(self.addr, self.size, self.added);
        host.set_params(DEVICE, mem::encode(&params))?;
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
