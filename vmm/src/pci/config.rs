//! A type-0 PCI configuration header (PCI Local Bus 3.0, 6.1) with write
//! masks, 32-bit memory BARs and a capability list.
//!
//! The guest owns every writable bit; everything else is read-only. A BAR's
//! writable bits are those above its size, so the guest sizes a BAR the usual
//! way (write all ones, read back the mask).

/// Size of the conventional configuration space.
pub const CONFIG_SIZE: usize = 256;
/// Offset of the command register.
pub const COMMAND: usize = 0x04;
/// Command register: the function decodes its memory BARs.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command register: the function may master the bus (DMA, MSI).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command register: legacy INTx disabled.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
const STATUS: usize = 0x06;
const STATUS_CAP_LIST: u16 = 1 << 4;
const BAR0: usize = 0x10;
/// Number of BARs in a type-0 header.
pub const NUM_BARS: usize = 6;
const CAP_POINTER: usize = 0x34;
const INTERRUPT_LINE: usize = 0x3c;
/// Capabilities start here, after the standard header.
const FIRST_CAP: usize = 0x40;

/// The identity of a function: what the guest's drivers match on.
#[derive(Debug, Clone, Copy)]
pub struct PciIds {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Revision ID.
    pub revision: u8,
    /// Class code: base class, sub-class, programming interface.
    pub class: [u8; 3],
    /// Subsystem vendor ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
}

/// A configuration header and its write masks.
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SIZE],
    writable: [u8; CONFIG_SIZE],
    bar_sizes: [u32; NUM_BARS],
    next_cap: usize,
    last_cap: Option<usize>,
}

impl ConfigSpace {
    /// A header with `ids`, memory decoding and bus mastering writable, and
    /// no BARs or capabilities yet.
    pub fn new(ids: &PciIds) -> Self {
        let mut c = Self {
            bytes: [0; CONFIG_SIZE],
            writable: [0; CONFIG_SIZE],
            bar_sizes: [0; NUM_BARS],
            next_cap: FIRST_CAP,
            last_cap: None,
        };
        c.put(0x00, &ids.vendor.to_le_bytes());
        c.put(0x02, &ids.device.to_le_bytes());
        c.put(
            0x08,
            &[ids.revision, ids.class[2], ids.class[1], ids.class[0]],
        );
        c.put(0x2c, &ids.subsystem_vendor.to_le_bytes());
        c.put(0x2e, &ids.subsystem.to_le_bytes());
        let cmd_mask = COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE;
        c.writable[COMMAND..COMMAND + 2].copy_from_slice(&cmd_mask.to_le_bytes());
        // Interrupt line: scratch for the OS.
        c.writable[INTERRUPT_LINE] = 0xff;
        c
    }

    fn put(&mut self, offset: usize, data: &[u8]) {
        if let Some(dst) = self.bytes.get_mut(offset..offset + data.len()) {
            dst.copy_from_slice(data);
        }
    }

    /// Declares BAR `index` as a 32-bit non-prefetchable memory BAR of
    /// `size` bytes (a power of two, at least 16) at `addr`.
    pub fn add_memory_bar(&mut self, index: usize, size: u32, addr: u32) {
        debug_assert!(size.is_power_of_two() && size >= 16 && index < NUM_BARS);
        let Some(slot) = self.bar_sizes.get_mut(index) else {
            return;
        };
        *slot = size;
        let off = BAR0 + index * 4;
        self.put(off, &(addr & !(size - 1)).to_le_bytes());
        self.writable[off..off + 4].copy_from_slice(&(!(size - 1)).to_le_bytes());
    }

    /// Appends a capability with `id` and `body` (the bytes after the ID and
    /// next pointer); `writable` masks `body`. Returns its offset.
    pub fn add_capability(&mut self, id: u8, body: &[u8], writable: &[u8]) -> usize {
        let off = self.next_cap;
        let len = 2 + body.len();
        debug_assert!(off + len <= CONFIG_SIZE && writable.len() <= body.len());
        self.put(off, &[id, 0]);
        self.put(off + 2, body);
        for (i, m) in writable.iter().enumerate() {
            if let Some(w) = self.writable.get_mut(off + 2 + i) {
                *w = *m;
            }
        }
        match self.last_cap {
            Some(prev) => self.bytes[prev + 1] = u8::try_from(off).unwrap_or(0),
            None => {
                self.bytes[CAP_POINTER] = u8::try_from(off).unwrap_or(0);
                let status = u16::from_le_bytes([self.bytes[STATUS], self.bytes[STATUS + 1]]);
                self.put(STATUS, &(status | STATUS_CAP_LIST).to_le_bytes());
            }
        }
        self.last_cap = Some(off);
        // Capabilities are dword aligned.
        self.next_cap = (off + len + 3) & !3;
        off
    }

    /// Reads `data.len()` bytes at `offset`; bytes past the end read as ones.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.bytes.get(offset + i).copied().unwrap_or(0xff);
        }
    }

    /// Writes through the write mask.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let at = offset + i;
            if let (Some(cur), Some(mask)) = (self.bytes.get(at).copied(), self.writable.get(at)) {
                self.bytes[at] = (cur & !mask) | (b & mask);
            }
        }
    }

    /// The whole header.
    pub fn clone_bytes(&self) -> [u8; CONFIG_SIZE] {
        self.bytes
    }

    /// A little-endian u16 at `offset` (0 past the end).
    pub fn read_u16(&self, offset: usize) -> u16 {
        let mut b = [0u8; 2];
        self.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    /// A little-endian u32 at `offset`.
    pub fn read_u32(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Where BAR `index` decodes now, as `(base, size)`: `None` when it has
    /// no size or memory decoding is off.
    pub fn bar_window(&self, index: usize) -> Option<(u64, u64)> {
        let size = *self.bar_sizes.get(index)?;
        if size == 0 || self.read_u16(COMMAND) & COMMAND_MEMORY == 0 {
            return None;
        }
        let base = self.read_u32(BAR0 + index * 4) & !(size - 1);
        // A BAR that is being sized (all ones, read back as the size mask)
        // or unassigned decodes nothing.
        if base == 0 || base == !(size - 1) || u64::from(base) + u64::from(size) > 1 << 32 {
            return None;
        }
        Some((u64::from(base), u64::from(size)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> PciIds {
        PciIds {
            vendor: 0x1af4,
            device: 0x1044,
            revision: 1,
            class: [0xff, 0, 0],
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        }
    }

    #[test]
    fn ids_read_back_and_are_read_only() {
        let mut c = ConfigSpace::new(&ids());
        c.write(0, &[0, 0, 0, 0]);
        assert_eq!(c.read_u32(0), 0x1044_1af4);
        assert_eq!(c.read_u32(8), 0xff00_0001);
    }

    #[test]
    fn bar_sizing_returns_the_size_mask() {
        let mut c = ConfigSpace::new(&ids());
        c.add_memory_bar(0, 0x8000, 0xc000_0000);
        c.write(BAR0, &u32::MAX.to_le_bytes());
        assert_eq!(c.read_u32(BAR0), 0xffff_8000);
        c.write(BAR0, &0xc001_0000u32.to_le_bytes());
        assert_eq!(c.read_u32(BAR0), 0xc001_0000);
    }

    #[test]
    fn bar_decodes_only_with_memory_enabled() {
        let mut c = ConfigSpace::new(&ids());
        c.add_memory_bar(0, 0x8000, 0xc000_0000);
        assert_eq!(c.bar_window(0), None);
        c.write(COMMAND, &COMMAND_MEMORY.to_le_bytes());
        assert_eq!(c.bar_window(0), Some((0xc000_0000, 0x8000)));
        c.write(BAR0, &u32::MAX.to_le_bytes());
        assert_eq!(c.bar_window(0), None);
    }

    #[test]
    fn capabilities_are_chained() {
        let mut c = ConfigSpace::new(&ids());
        let a = c.add_capability(0x09, &[1, 2, 3], &[]);
        let b = c.add_capability(0x11, &[0; 10], &[0, 0xc0]);
        assert_eq!(c.read_u16(STATUS) & STATUS_CAP_LIST, STATUS_CAP_LIST);
        assert_eq!(usize::from(c.bytes[CAP_POINTER]), a);
        assert_eq!(usize::from(c.bytes[a + 1]), b);
        assert_eq!(c.bytes[b + 1], 0);
        c.write(b + 2, &[0xff, 0xff]);
        assert_eq!(c.read_u16(b + 2), 0xc000);
    }

    #[test]
    fn reads_past_the_end_are_all_ones() {
        let c = ConfigSpace::new(&ids());
        let mut b = [0u8; 4];
        c.read(254, &mut b);
        assert_eq!(b, [0, 0, 0xff, 0xff]);
    }
}
