//! The MSI-X table of a function (PCI Local Bus 3.0, 6.8.2): what the guest
//! programs, and the message each vector resolves to given the masks.

use crate::irq::MsiMessage;

/// Bytes per table entry.
pub const ENTRY_SIZE: u64 = 16;
/// Message control: MSI-X enable.
pub const CONTROL_ENABLE: u16 = 1 << 15;
/// Message control: all vectors masked.
pub const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
const VECTOR_CONTROL_MASKED: u32 = 1;

#[derive(Clone, Copy)]
struct Entry {
    address_lo: u32,
    address_hi: u32,
    data: u32,
    control: u32,
}

/// A saved table with another number of vectors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{saved} MSI-X entries saved, the device has {vectors} vectors")]
pub struct MsixStateError {
    /// In the state.
    pub saved: usize,
    /// The device's.
    pub vectors: usize,
}

/// The table; the capability's control word lives in config space.
pub struct MsixTable {
    entries: Vec<Entry>,
}

impl MsixTable {
    /// `vectors` entries, all masked, as after reset.
    pub fn new(vectors: u16) -> Self {
        let masked = Entry {
            address_lo: 0,
            address_hi: 0,
            data: 0,
            control: VECTOR_CONTROL_MASKED,
        };
        Self {
            entries: vec![masked; usize::from(vectors)],
        }
    }

    /// Number of vectors.
    pub fn vectors(&self) -> u16 {
        u16::try_from(self.entries.len()).unwrap_or(u16::MAX)
    }

    /// Table size in bytes.
    pub fn size(&self) -> u64 {
        u64::from(self.vectors()) * ENTRY_SIZE
    }

    fn dword(&self, index: usize, field: usize) -> u32 {
        self.entries.get(index).map_or(0, |e| match field {
            0 => e.address_lo,
            1 => e.address_hi,
            2 => e.data,
            _ => e.control,
        })
    }

    /// A read of the table at `offset`: dword or qword accesses, as the
    /// spec allows; anything else reads as zeros.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Ok(index) = usize::try_from(offset / ENTRY_SIZE) else {
            return;
        };
        let Ok(field) = usize::try_from((offset % ENTRY_SIZE) / 4) else {
            return;
        };
        match data.len() {
            4 => data.copy_from_slice(&self.dword(index, field).to_le_bytes()),
            8 => {
                data[..4].copy_from_slice(&self.dword(index, field).to_le_bytes());
                data[4..].copy_from_slice(&self.dword(index, field + 1).to_le_bytes());
            }
            _ => {}
        }
    }

    /// A write to the table; returns the vector it touched.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Option<u16> {
        let index = usize::try_from(offset / ENTRY_SIZE).ok()?;
        let field = usize::try_from((offset % ENTRY_SIZE) / 4).ok()?;
        let entry = self.entries.get_mut(index)?;
        let mut dwords = [0u32; 2];
        let n = match data.len() {
            4 => 1,
            8 => 2,
            _ => return None,
        };
        for (i, d) in dwords.iter_mut().enumerate().take(n) {
            let mut b = [0u8; 4];
            b.copy_from_slice(data.get(i * 4..i * 4 + 4)?);
            *d = u32::from_le_bytes(b);
        }
        for (i, d) in dwords.iter().enumerate().take(n) {
            match field + i {
                0 => entry.address_lo = *d,
                1 => entry.address_hi = *d,
                2 => entry.data = *d,
                3 => entry.control = *d & VECTOR_CONTROL_MASKED,
                _ => {}
            }
        }
        u16::try_from(index).ok()
    }

    /// Every entry as plain data: address low and high, data, vector
    /// control.
    pub fn save(&self) -> Vec<[u32; 4]> {
        self.entries
            .iter()
            .map(|e| [e.address_lo, e.address_hi, e.data, e.control])
            .collect()
    }

    /// Takes `entries` as the table; refused (nothing changed) unless
    /// there is one per vector. Reserved control bits are dropped, as a
    /// guest's write would drop them.
    pub fn restore(&mut self, entries: &[[u32; 4]]) -> Result<(), MsixStateError> {
        if entries.len() != self.entries.len() {
            return Err(MsixStateError {
                saved: entries.len(),
                vectors: self.entries.len(),
            });
        }
        for (e, s) in self.entries.iter_mut().zip(entries) {
            *e = Entry {
                address_lo: s[0],
                address_hi: s[1],
                data: s[2],
                control: s[3] & VECTOR_CONTROL_MASKED,
            };
        }
        Ok(())
    }

    /// The message `vector` sends now, or `None` when MSI-X is off, the
    /// function or the vector is masked, or there is no such vector.
    pub fn message(&self, control: u16, vector: u16) -> Option<MsiMessage> {
        if control & CONTROL_ENABLE == 0 || control & CONTROL_FUNCTION_MASK != 0 {
            return None;
        }
        let e = self.entries.get(usize::from(vector))?;
        if e.control & VECTOR_CONTROL_MASKED != 0 {
            return None;
        }
        Some(MsiMessage {
            address: (u64::from(e.address_hi) << 32) | u64::from(e.address_lo),
            data: e.data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(t: &mut MsixTable, v: u64, addr: u32, data: u32) {
        t.write(v * ENTRY_SIZE, &addr.to_le_bytes());
        t.write(v * ENTRY_SIZE + 4, &0u32.to_le_bytes());
        t.write(v * ENTRY_SIZE + 8, &data.to_le_bytes());
        t.write(v * ENTRY_SIZE + 12, &0u32.to_le_bytes());
    }

    #[test]
    fn vectors_start_masked() {
        let t = MsixTable::new(2);
        assert_eq!(t.message(CONTROL_ENABLE, 0), None);
        let mut d = [0u8; 4];
        t.read(12, &mut d);
        assert_eq!(u32::from_le_bytes(d), 1);
    }

    #[test]
    fn programmed_vector_resolves_when_enabled() {
        let mut t = MsixTable::new(2);
        program(&mut t, 1, 0xfee0_0000, 0x41);
        assert_eq!(t.message(0, 1), None);
        assert_eq!(
            t.message(CONTROL_ENABLE, 1),
            Some(MsiMessage {
                address: 0xfee0_0000,
                data: 0x41
            })
        );
        assert_eq!(t.message(CONTROL_ENABLE | CONTROL_FUNCTION_MASK, 1), None);
    }

    #[test]
    fn vector_mask_bit_hides_the_message() {
        let mut t = MsixTable::new(1);
        program(&mut t, 0, 0xfee0_0000, 0x41);
        t.write(12, &1u32.to_le_bytes());
        assert_eq!(t.message(CONTROL_ENABLE, 0), None);
    }

    #[test]
    fn qword_access_covers_two_fields() {
        let mut t = MsixTable::new(1);
        t.write(0, &0x1_fee0_0000u64.to_le_bytes());
        let mut d = [0u8; 8];
        t.read(0, &mut d);
        assert_eq!(u64::from_le_bytes(d), 0x1_fee0_0000);
    }

    #[test]
    fn a_saved_table_restores_with_its_masks_and_a_wrong_size_is_refused() {
        let mut t = MsixTable::new(2);
        program(&mut t, 1, 0xfee0_0000, 0x41);
        let mut saved = t.save();
        assert_eq!(saved[0][3], VECTOR_CONTROL_MASKED);
        saved[1][3] |= 0xfffe;
        let mut fresh = MsixTable::new(2);
        fresh.restore(&saved).unwrap();
        assert_eq!(fresh.save(), t.save());
        assert_eq!(
            fresh.message(CONTROL_ENABLE, 1),
            t.message(CONTROL_ENABLE, 1)
        );
        assert_eq!(
            MsixTable::new(3).restore(&saved),
            Err(MsixStateError {
                saved: 2,
                vectors: 3
            })
        );
    }

    #[test]
    fn out_of_range_and_odd_sized_accesses_are_ignored() {
        let mut t = MsixTable::new(1);
        assert_eq!(t.write(16, &[0; 4]), None);
        assert_eq!(t.write(0, &[0; 2]), None);
        let mut d = [0xaa; 4];
        t.read(64, &mut d);
        assert_eq!(d, [0; 4]);
        assert_eq!(t.message(CONTROL_ENABLE, 7), None);
    }
}
