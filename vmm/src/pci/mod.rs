//! PCI bus 0 behind configuration mechanism #1 (ports 0xCF8 and 0xCFC..0xCFF,
//! PCI Local Bus 3.0, 3.2.2.3.2), with a host bridge at 00:00.0 and the
//! memory BARs of its functions on the MMIO bus.
//!
//! Functions implement [`PciFunction`]; the bus keeps the map from guest
//! physical addresses to BARs current as the guest enables decoding or moves
//! a BAR, and tells the function (the virtio transport moves its ioeventfds).

pub mod config;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use config::{ConfigSpace, PciIds, NUM_BARS};

/// The address port; a 32-bit access here latches the config address.
pub const CONFIG_ADDRESS: u16 = 0xcf8;
/// The data ports: 0xCFC..=0xCFF.
pub const CONFIG_DATA: u16 = 0xcfc;
/// Device numbers on bus 0.
const MAX_DEVICES: usize = 32;

/// Why a saved configuration header does not fit the bus.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PciStateError {
    /// Not a whole header.
    #[error("a saved PCI header of {0} bytes")]
    Size(usize),
    /// No function at that device number.
    #[error("no PCI device {0} to restore")]
    NoDevice(usize),
    /// Another vendor or device ID there.
    #[error("PCI device {0} is not the saved one (vendor and device IDs differ)")]
    Ids(usize),
}

/// A PCI function as the bus sees it.
pub trait PciFunction: Send {
    /// The configuration header.
    fn config(&self) -> &ConfigSpace;
    /// The configuration header, for writes.
    fn config_mut(&mut self) -> &mut ConfigSpace;
    /// A configuration read; the default reads the header.
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.config().read(offset, data);
    }
    /// A configuration write; the default writes through the masks.
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config_mut().write(offset, data);
    }
    /// A read of BAR `bar` at `offset`.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// A write to BAR `bar` at `offset`.
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
    /// BAR `bar` now decodes at `new` (or nothing) instead of `old`.
    fn bar_moved(&mut self, _bar: usize, _old: Option<u64>, _new: Option<u64>) {}
}

/// The host bridge at 00:00.0: it makes the bus look like a PC's to the
/// guest's probe of configuration mechanism #1.
struct HostBridge {
    config: ConfigSpace,
}

impl PciFunction for HostBridge {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
    fn bar_read(&mut self, _: usize, _: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn bar_write(&mut self, _: usize, _: u64, _: &[u8]) {}
}

type Function = Arc<Mutex<dyn PciFunction>>;

#[derive(Clone, Copy)]
struct BarMapping {
    base: u64,
    size: u64,
    device: usize,
    bar: usize,
}

/// Bus 0: its functions and the MMIO ranges their BARs decode.
pub struct PciBus {
    address: AtomicU32,
    devices: Vec<Option<Function>>,
    map: RwLock<Vec<BarMapping>>,
}

fn lock(f: &Function) -> std::sync::MutexGuard<'_, dyn PciFunction + 'static> {
    f.lock().unwrap_or_else(|e| e.into_inner())
}

impl Default for PciBus {
    fn default() -> Self {
        Self::new()
    }
}

impl PciBus {
    /// A bus with only the host bridge.
    pub fn new() -> Self {
        // Red Hat's ID for a generic PCI host bridge; class 06/00/00.
        let ids = PciIds {
            vendor: 0x1b36,
            device: 0x0008,
            revision: 0,
            class: [0x06, 0x00, 0x00],
            subsystem_vendor: 0x1b36,
            subsystem: 0x0008,
        };
        let bridge: Function = Arc::new(Mutex::new(HostBridge {
            config: ConfigSpace::new(&ids),
        }));
        let mut devices = vec![None; MAX_DEVICES];
        devices[0] = Some(bridge);
        Self {
            address: AtomicU32::new(0),
            devices,
            map: RwLock::new(Vec::new()),
        }
    }

    /// Plugs `function` into the first free slot; returns its device
    /// number, or `None` when the bus is full.
    pub fn add(&mut self, function: Function) -> Option<usize> {
        let slot = self.devices.iter().position(Option::is_none)?;
        self.devices[slot] = Some(function);
        self.refresh_bars(slot);
        Some(slot)
    }

    /// The function at `device`, if any: bus 0, function 0 only.
    fn function(&self, address: u32) -> Option<(&Function, usize)> {
        if address & 0x8000_0000 == 0 {
            return None;
        }
        let bus = (address >> 16) & 0xff;
        let device = usize::try_from((address >> 11) & 0x1f).ok()?;
        let func = (address >> 8) & 0x7;
        if bus != 0 || func != 0 {
            return None;
        }
        let reg = usize::try_from(address & 0xfc).ok()?;
        self.devices.get(device)?.as_ref().map(|f| (f, reg))
    }

    /// An `in` from the config ports; returns whether the port is ours.
    pub fn pio_read(&self, port: u16, data: &mut [u8]) -> bool {
        if port == CONFIG_ADDRESS && data.len() == 4 {
            data.copy_from_slice(&self.address.load(Ordering::Relaxed).to_le_bytes());
            return true;
        }
        if !(CONFIG_DATA..CONFIG_DATA + 4).contains(&port) {
            return false;
        }
        let address = self.address.load(Ordering::Relaxed);
        match self.function(address) {
            Some((f, reg)) => {
                let offset = reg + usize::from(port - CONFIG_DATA);
                lock(f).config_read(offset, data);
            }
            None => data.fill(0xff),
        }
        true
    }

    /// An `out` to the config ports; returns whether the port is ours.
    pub fn pio_write(&self, port: u16, data: &[u8]) -> bool {
        if port == CONFIG_ADDRESS && data.len() == 4 {
            let mut b = [0u8; 4];
            b.copy_from_slice(data);
            self.address.store(u32::from_le_bytes(b), Ordering::Relaxed);
            return true;
        }
        if !(CONFIG_DATA..CONFIG_DATA + 4).contains(&port) {
            return false;
        }
        let address = self.address.load(Ordering::Relaxed);
        if let Some((f, reg)) = self.function(address) {
            let offset = reg + usize::from(port - CONFIG_DATA);
            lock(f).config_write(offset, data);
            if let Ok(device) = usize::try_from((address >> 11) & 0x1f) {
                self.refresh_bars(device);
            }
        }
        true
    }

    /// Every function's configuration header by device number, host
    /// bridge included: what a snapshot keeps of the bus.
    pub fn save_config(&self) -> Vec<(usize, Vec<u8>)> {
        self.devices
            .iter()
            .enumerate()
            .filter_map(|(device, f)| {
                let bytes = lock(f.as_ref()?).config().clone_bytes();
                Some((device, bytes.to_vec()))
            })
            .collect()
    }

    /// Writes a saved header into `device`'s through its write masks (so
    /// only what a guest could write changes: command, BARs, capability
    /// controls), then maps its BARs where they now decode and tells it
    /// of each move, as the guest's own writes would have.
    pub fn restore_config(&self, device: usize, bytes: &[u8]) -> Result<(), PciStateError> {
        if bytes.len() != config::CONFIG_SIZE {
            return Err(PciStateError::Size(bytes.len()));
        }
        let f = self
            .devices
            .get(device)
            .and_then(Option::as_ref)
            .ok_or(PciStateError::NoDevice(device))?;
        {
            let mut func = lock(f);
            let mut ids = [0u8; 4];
            func.config().read(0, &mut ids);
            if ids[..] != bytes[..4] {
                return Err(PciStateError::Ids(device));
            }
            func.config_mut().write(0, bytes);
        }
        self.refresh_bars(device);
        Ok(())
    }

    /// Brings the MMIO map up to date with `device`'s BARs and tells it of
    /// every BAR that moved.
    fn refresh_bars(&self, device: usize) {
        let Some(Some(f)) = self.devices.get(device) else {
            return;
        };
        let mut func = lock(f);
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        for bar in 0..NUM_BARS {
            let now = func.config().bar_window(bar);
            let pos = map.iter().position(|m| m.device == device && m.bar == bar);
            let before = pos.map(|i| (map[i].base, map[i].size));
            if before == now {
                continue;
            }
            if let Some(i) = pos {
                map.remove(i);
            }
            if let Some((base, size)) = now {
                map.push(BarMapping {
                    base,
                    size,
                    device,
                    bar,
                });
            }
            func.bar_moved(bar, before.map(|b| b.0), now.map(|n| n.0));
        }
    }

    fn lookup(&self, addr: u64) -> Option<(Function, usize, u64)> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let m = map
            .iter()
            .find(|m| addr >= m.base && addr - m.base < m.size)?;
        let f = self.devices.get(m.device)?.as_ref()?.clone();
        Some((f, m.bar, addr - m.base))
    }

    /// A read in the MMIO hole; returns whether a BAR decoded it.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.lookup(addr) {
            Some((f, bar, offset)) => {
                lock(&f).bar_read(bar, offset, data);
                true
            }
            None => false,
        }
    }

    /// A write in the MMIO hole; returns whether a BAR decoded it.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        match self.lookup(addr) {
            Some((f, bar, offset)) => {
                lock(&f).bar_write(bar, offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::config::COMMAND;
    use super::*;

    struct Probe {
        config: ConfigSpace,
        moves: Vec<(Option<u64>, Option<u64>)>,
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl PciFunction for Probe {
        fn config(&self) -> &ConfigSpace {
            &self.config
        }
        fn config_mut(&mut self) -> &mut ConfigSpace {
            &mut self.config
        }
        fn bar_read(&mut self, _: usize, offset: u64, data: &mut [u8]) {
            data.fill(u8::try_from(offset & 0xff).unwrap_or(0));
        }
        fn bar_write(&mut self, _: usize, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
        fn bar_moved(&mut self, _: usize, old: Option<u64>, new: Option<u64>) {
            self.moves.push((old, new));
        }
    }

    fn bus_with_probe() -> (PciBus, Arc<Mutex<Probe>>) {
        let ids = PciIds {
            vendor: 0x1af4,
            device: 0x1044,
            revision: 1,
            class: [0xff, 0, 0],
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        };
        let mut config = ConfigSpace::new(&ids);
        config.add_memory_bar(0, 0x1000, 0xc000_0000);
        let probe = Arc::new(Mutex::new(Probe {
            config,
            moves: Vec::new(),
            last_write: None,
        }));
        let mut bus = PciBus::new();
        assert_eq!(bus.add(probe.clone()), Some(1));
        (bus, probe)
    }

    fn cfg_addr(device: u32, reg: u32) -> [u8; 4] {
        (0x8000_0000 | (device << 11) | reg).to_le_bytes()
    }

    fn read32(bus: &PciBus, device: u32, reg: u32) -> u32 {
        assert!(bus.pio_write(CONFIG_ADDRESS, &cfg_addr(device, reg)));
        let mut b = [0u8; 4];
        assert!(bus.pio_read(CONFIG_DATA, &mut b));
        u32::from_le_bytes(b)
    }

    fn write(bus: &PciBus, device: u32, reg: u32, data: &[u8]) {
        assert!(bus.pio_write(CONFIG_ADDRESS, &cfg_addr(device, reg)));
        assert!(bus.pio_write(CONFIG_DATA, data));
    }

    #[test]
    fn host_bridge_answers_at_device_zero() {
        let bus = PciBus::new();
        assert_eq!(read32(&bus, 0, 0), 0x0008_1b36);
        assert_eq!(read32(&bus, 0, 8) >> 8, 0x06_0000);
    }

    #[test]
    fn empty_slots_and_other_functions_read_all_ones() {
        let (bus, _) = bus_with_probe();
        assert_eq!(read32(&bus, 5, 0), u32::MAX);
        assert!(bus.pio_write(
            CONFIG_ADDRESS,
            &(0x8000_0000u32 | (1 << 11) | (1 << 8)).to_le_bytes()
        ));
        let mut b = [0u8; 4];
        bus.pio_read(CONFIG_DATA, &mut b);
        assert_eq!(u32::from_le_bytes(b), u32::MAX);
    }

    #[test]
    fn byte_reads_use_the_data_port_offset() {
        let (bus, _) = bus_with_probe();
        assert!(bus.pio_write(CONFIG_ADDRESS, &cfg_addr(1, 0)));
        let mut b = [0u8; 1];
        bus.pio_read(CONFIG_DATA + 2, &mut b);
        assert_eq!(b[0], 0x44);
    }

    #[test]
    fn bar_decodes_after_memory_enable_and_follows_moves() {
        let (bus, probe) = bus_with_probe();
        let mut d = [0u8; 4];
        assert!(!bus.mmio_read(0xc000_0010, &mut d));
        write(&bus, 1, u32::try_from(COMMAND).unwrap(), &[0x06, 0]);
        assert!(bus.mmio_read(0xc000_0010, &mut d));
        assert_eq!(d, [0x10; 4]);
        write(&bus, 1, 0x10, &0xc010_0000u32.to_le_bytes());
        assert!(!bus.mmio_read(0xc000_0010, &mut d));
        assert!(bus.mmio_write(0xc010_0ff0, &[1, 2]));
        let p = probe.lock().unwrap();
        assert_eq!(p.last_write, Some((0xff0, vec![1, 2])));
        assert_eq!(
            p.moves,
            vec![
                (None, Some(0xc000_0000)),
                (Some(0xc000_0000), Some(0xc010_0000))
            ]
        );
    }

    #[test]
    fn ports_outside_the_config_range_are_not_ours() {
        let bus = PciBus::new();
        let mut b = [0u8; 1];
        assert!(!bus.pio_read(0xcf9, &mut b));
        assert!(!bus.pio_write(0xcf9, &[6]));
        assert!(!bus.pio_write(CONFIG_ADDRESS, &[1]));
    }

    #[test]
    fn a_saved_header_restores_the_bars_and_decoding_on_a_fresh_bus() {
        let (bus, _) = bus_with_probe();
        write(&bus, 1, 0x10, &0xd000_0000u32.to_le_bytes());
        write(&bus, 1, u32::try_from(COMMAND).unwrap(), &[0x06, 0]);
        let saved = bus.save_config();
        assert_eq!(saved.iter().map(|(d, _)| *d).collect::<Vec<_>>(), [0, 1]);

        let (fresh, probe) = bus_with_probe();
        for (device, bytes) in &saved {
            fresh.restore_config(*device, bytes).unwrap();
        }
        assert_eq!(fresh.save_config(), saved);
        // The BAR decodes where the guest had put it, and the function
        // heard of it (a fresh bus decodes nothing before the command
        // register enables memory).
        let mut b = [0u8; 4];
        assert!(fresh.mmio_read(0xd000_0010, &mut b));
        assert!(!fresh.mmio_read(0xc000_0010, &mut b));
        assert_eq!(
            probe.lock().unwrap().moves.last(),
            Some(&(None, Some(0xd000_0000)))
        );
    }

    #[test]
    fn a_saved_header_changes_only_what_a_guest_could_write() {
        let (bus, _) = bus_with_probe();
        let mut bytes = bus.save_config().remove(1).1;
        // A class code and a subsystem the guest cannot write.
        bytes[0x0b] = 0x01;
        bytes[0x2e] = 0x99;
        bus.restore_config(1, &bytes).unwrap();
        assert_eq!(read32(&bus, 1, 0x08) >> 24, 0xff);
        assert_eq!(read32(&bus, 1, 0x2c) >> 16, 0x40);
        // Another device's IDs, a short header, an empty slot.
        bytes[0] = 0x86;
        assert_eq!(bus.restore_config(1, &bytes), Err(PciStateError::Ids(1)));
        assert_eq!(
            bus.restore_config(1, &bytes[..64]),
            Err(PciStateError::Size(64))
        );
        assert_eq!(
            bus.restore_config(5, &vec![0; 256]),
            Err(PciStateError::NoDevice(5))
        );
    }
}
