//! XSAVE and XRSTOR for guest kernels on emulating hosts.
//!
//! kvm_pvm runs guest user code natively with the host's XCR0 (on an AMD
//! EPYC host: x87, SSE, AVX and AVX-512 state) and shows it the host's
//! CPUID, so the C library picks AVX2 or AVX-512 string functions. A guest
//! kernel that context-switches only the legacy x87/SSE state (`noxsave`,
//! which skvm used to add because the host's emulator does not run XSAVE)
//! leaks the upper halves of the vector registers, and the opmask
//! registers, from one guest process to the next: a memcpy preempted
//! between its loads and its stores wrote zeros where another process had
//! run `vzeroupper` (docs/ARCHITECTURE.md, "Vector state of guest
//! processes"). So the guest kernel keeps XSAVE, and skvm completes the
//! standard-form XSAVE and XRSTOR it executes, on the vCPU's state as
//! KVM_GET_XSAVE and KVM_SET_XSAVE hold it (the standard, non-compacted
//! layout, whose component offsets are the host's CPUID leaf 0xD).
//!
//! This module is the pure part: which bytes of an XSAVE area each state
//! component occupies, what XSAVE writes and what XRSTOR loads. The guest
//! memory accesses and the faults are in `emulation.rs`.

/// The legacy region (x87 and SSE) and the XSAVE header.
pub const LEGACY_AND_HEADER: usize = 576;
/// Offset of XSTATE_BV in the area.
const XSTATE_BV: usize = 512;
/// Offset of XCOMP_BV.
const XCOMP_BV: usize = 520;
/// Offset of MXCSR and of MXCSR_MASK in the legacy region.
const MXCSR: usize = 24;
const MXCSR_MASK: usize = 28;
/// The x87 part of the legacy region: control words to FDP, then ST0-ST7.
const X87: [(usize, usize); 2] = [(0, 24), (32, 128)];
/// XMM0-XMM15.
const XMM: (usize, usize) = (160, 256);
/// State components 1 (SSE) and 2 (AVX) both need MXCSR.
const MXCSR_USERS: u64 = 0b110;
/// The x87 control word's initial value.
const FCW_INIT: u16 = 0x037f;
/// MXCSR bits the guest may set when the host reports no mask.
const MXCSR_DEFAULT_MASK: u32 = 0xffbf;
/// What KVM_GET_XSAVE and KVM_SET_XSAVE carry.
pub const KVM_XSAVE_BYTES: usize = 4096;

/// Where each state component lives in a standard-form XSAVE area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// (offset, size) of components 2..63; (0, 0) where absent.
    comps: [(usize, usize); 64],
    /// The components the host can enable in XCR0.
    supported: u64,
}

impl Layout {
    /// The host CPU's layout (CPUID leaf 0xD), which is the layout of
    /// KVM_GET_XSAVE's buffer. None when a component would not fit in it.
    #[cfg(target_arch = "x86_64")]
    pub fn host() -> Option<Layout> {
        let cpuid = std::arch::x86_64::__cpuid_count;
        if cpuid(0, 0).eax < 0xd {
            return None;
        }
        let top = cpuid(0xd, 0);
        let supported = u64::from(top.eax) | (u64::from(top.edx) << 32);
        let mut supported = supported;
        let mut comps = [(0, 0); 64];
        for (i, c) in comps.iter_mut().enumerate().skip(2) {
            if supported & (1 << i) != 0 {
                let sub = cpuid(0xd, u32::try_from(i).ok()?);
                let (off, size) = (
                    usize::try_from(sub.ebx).ok()?,
                    usize::try_from(sub.eax).ok()?,
                );
                // Components past KVM_GET_XSAVE's 4 KiB (AMX tiles) are
                // ones KVM gives a guest only on request, which skvm never
                // makes.
                if off + size > KVM_XSAVE_BYTES {
                    supported &= !(1 << i);
                } else {
                    *c = (off, size);
                }
            }
        }
        Layout::new(supported, comps)
    }

    /// A layout from CPUID's figures; None if one is outside a KVM buffer.
    pub fn new(supported: u64, comps: [(usize, usize); 64]) -> Option<Layout> {
        for (i, &(off, size)) in comps.iter().enumerate().skip(2) {
            if supported & (1 << i) != 0
                && (off < LEGACY_AND_HEADER || off + size > KVM_XSAVE_BYTES)
            {
                return None;
            }
        }
        Some(Layout { comps, supported })
    }

    /// The byte ranges of component `i` in the area.
    fn ranges(&self, i: usize) -> Vec<(usize, usize)> {
        match i {
            0 => X87.to_vec(),
            1 => vec![XMM],
            _ => match self.comps.get(i) {
                Some(&(off, size)) if size > 0 => vec![(off, size)],
                _ => Vec::new(),
            },
        }
    }

    /// How many bytes of the area the components in `rfbm` reach.
    pub fn area_len(&self, rfbm: u64) -> usize {
        (2..64)
            .filter(|i| rfbm & (1 << i) != 0)
            .filter_map(|i| self.comps.get(i).map(|&(off, size)| off + size))
            .fold(LEGACY_AND_HEADER, usize::max)
    }

    /// The components this layout knows.
    pub fn supported(&self) -> u64 {
        self.supported
    }
}

/// Whether a vCPU state of `size` bytes (KVM_CAP_XSAVE2) fits the 4 KiB
/// kvm_xsave that KVM_GET_XSAVE and KVM_SET_XSAVE carry: only then do they
/// move the whole state (and KVM reads no further than the struct).
pub fn fits_kvm_xsave<T: TryInto<usize>>(size: T) -> bool {
    size.try_into().is_ok_and(|s| s <= KVM_XSAVE_BYTES)
}

/// The XSAVE area KVM_GET_XSAVE gave, as bytes.
pub fn area_bytes(x: &kvm_bindings::kvm_xsave) -> Vec<u8> {
    x.region.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// Puts `bytes` (at most 4 KiB; whole 32-bit words) into `x` for
/// KVM_SET_XSAVE.
pub fn set_area_bytes(x: &mut kvm_bindings::kvm_xsave, bytes: &[u8]) {
    for (w, c) in x.region.iter_mut().zip(bytes.chunks_exact(4)) {
        *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(s) = buf.get(at..at + 8) {
        b.copy_from_slice(s);
    }
    u64::from_le_bytes(b)
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    if let Some(s) = buf.get(at..at + 4) {
        b.copy_from_slice(s);
    }
    u32::from_le_bytes(b)
}

/// The writes XSAVE makes to an area whose XSTATE_BV is `old_bv`, given the
/// vCPU's state `cur` (KVM_GET_XSAVE): (offset, bytes) pieces, so that the
/// bytes XSAVE leaves alone (the legacy region's software-available bytes,
/// the rest of the header, components outside `rfbm`) stay as they are.
pub fn save(layout: &Layout, cur: &[u8], rfbm: u64, old_bv: u64) -> Vec<(usize, Vec<u8>)> {
    let mut out = Vec::new();
    let mut piece = |off: usize, len: usize| {
        if let Some(b) = cur.get(off..off + len) {
            out.push((off, b.to_vec()));
        }
    };
    for i in 0..64 {
        if rfbm & (1 << i) != 0 {
            for (off, len) in layout.ranges(i) {
                piece(off, len);
            }
        }
    }
    if rfbm & MXCSR_USERS != 0 {
        piece(MXCSR, 8);
    }
    let bv = (old_bv & !rfbm) | (u64_at(cur, XSTATE_BV) & rfbm);
    out.push((XSTATE_BV, bv.to_le_bytes().to_vec()));
    out
}

/// Why XRSTOR raises #GP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// XCOMP_BV is not zero: the compacted form, which the guest is not
    /// offered.
    Compacted,
    /// XSTATE_BV names a component XCR0 does not enable.
    NotEnabled,
    /// MXCSR sets a reserved bit.
    Mxcsr,
}

/// Loads the components in `rfbm` from `area` (at least `area_len(rfbm)`
/// bytes) into the vCPU's state `cur` as XRSTOR does: a component whose
/// XSTATE_BV bit is clear goes to its initial state.
pub fn restore(
    layout: &Layout,
    cur: &mut [u8],
    area: &[u8],
    rfbm: u64,
    xcr0: u64,
) -> Result<(), Invalid> {
    let bv = u64_at(area, XSTATE_BV);
    if u64_at(area, XCOMP_BV) != 0 {
        return Err(Invalid::Compacted);
    }
    if bv & !xcr0 != 0 {
        return Err(Invalid::NotEnabled);
    }
    if rfbm & MXCSR_USERS != 0 {
        let mask = match u32_at(cur, MXCSR_MASK) {
            0 => MXCSR_DEFAULT_MASK,
            m => m,
        };
        if u32_at(area, MXCSR) & !mask != 0 {
            return Err(Invalid::Mxcsr);
        }
        if let (Some(d), Some(s)) = (cur.get_mut(MXCSR..MXCSR + 4), area.get(MXCSR..MXCSR + 4)) {
            d.copy_from_slice(s);
        }
    }
    for i in 0..64 {
        if rfbm & (1 << i) == 0 {
            continue;
        }
        for (off, len) in layout.ranges(i) {
            let Some(d) = cur.get_mut(off..off + len) else {
                continue;
            };
            match area.get(off..off + len) {
                Some(s) if bv & (1 << i) != 0 => d.copy_from_slice(s),
                _ => d.fill(0),
            }
        }
        if i == 0 && bv & 1 == 0 {
            if let Some(fcw) = cur.get_mut(0..2) {
                fcw.copy_from_slice(&FCW_INIT.to_le_bytes());
            }
        }
    }
    let new_bv = (u64_at(cur, XSTATE_BV) & !rfbm) | (bv & rfbm);
    if let Some(d) = cur.get_mut(XSTATE_BV..XSTATE_BV + 8) {
        d.copy_from_slice(&new_bv.to_le_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout of x87, SSE, AVX and AVX-512 on x86 CPUs (fixed offsets).
    fn avx512() -> Layout {
        let mut comps = [(0, 0); 64];
        comps[2] = (576, 256);
        comps[5] = (1088, 64);
        comps[6] = (1152, 512);
        comps[7] = (1664, 1024);
        Layout::new(0xe7, comps).unwrap()
    }

    fn state(seed: u8) -> Vec<u8> {
        let mut s: Vec<u8> = (0..KVM_XSAVE_BYTES)
            .map(|i| (i.to_le_bytes()[0]).wrapping_mul(31).wrapping_add(seed))
            .collect();
        s[MXCSR..MXCSR + 4].copy_from_slice(&0x1f80u32.to_le_bytes());
        s[MXCSR_MASK..MXCSR_MASK + 4].copy_from_slice(&0xffffu32.to_le_bytes());
        s[XSTATE_BV..XSTATE_BV + 8].copy_from_slice(&0xe7u64.to_le_bytes());
        s[XCOMP_BV..LEGACY_AND_HEADER].fill(0);
        s
    }

    fn apply(area: &mut [u8], pieces: &[(usize, Vec<u8>)]) {
        for (off, b) in pieces {
            area[*off..*off + b.len()].copy_from_slice(b);
        }
    }

    #[test]
    fn a_layout_outside_the_kvm_buffer_is_refused() {
        let mut comps = [(0, 0); 64];
        comps[2] = (4000, 256);
        assert!(Layout::new(0x7, comps).is_none());
        comps[2] = (100, 256);
        assert!(Layout::new(0x7, comps).is_none());
        // An absent component's figures do not matter.
        assert!(Layout::new(0x3, comps).is_some());
    }

    #[test]
    fn save_then_restore_round_trips_every_enabled_component() {
        let l = avx512();
        let cur = state(1);
        let mut area = vec![0xaau8; l.area_len(0xe7)];
        area[XSTATE_BV..LEGACY_AND_HEADER].fill(0);
        apply(&mut area, &save(&l, &cur, 0xe7, 0));
        let mut other = state(7);
        restore(&l, &mut other, &area, 0xe7, 0xe7).unwrap();
        for i in [0usize, 1, 2, 5, 6, 7] {
            for (off, len) in l.ranges(i) {
                assert_eq!(other[off..off + len], cur[off..off + len], "component {i}");
            }
        }
        assert_eq!(other[MXCSR..MXCSR + 4], cur[MXCSR..MXCSR + 4]);
    }

    #[test]
    fn save_leaves_software_bytes_and_unrequested_components_alone() {
        let l = avx512();
        let cur = state(3);
        let mut area = vec![0x55u8; l.area_len(0xe7)];
        area[XSTATE_BV..LEGACY_AND_HEADER].fill(0);
        area[XSTATE_BV] = 0x80; // ZMM_Hi256 saved earlier
        apply(&mut area, &save(&l, &cur, 0x7, 0x80));
        // Bytes 416..512 are not XSAVE's to write (Linux keeps its signal
        // frame's software bytes at 464).
        assert!(area[416..512].iter().all(|&b| b == 0x55));
        // Component 7 was not requested: untouched, and its bit kept.
        assert!(area[1664..2688].iter().all(|&b| b == 0x55));
        assert_eq!(u64_at(&area, XSTATE_BV), 0x87);
        assert_eq!(area[576..832], cur[576..832]);
    }

    #[test]
    fn restore_initialises_components_whose_bit_is_clear() {
        let l = avx512();
        let mut cur = state(9);
        let mut area = state(4);
        area[XSTATE_BV..XSTATE_BV + 8].copy_from_slice(&0x2u64.to_le_bytes());
        restore(&l, &mut cur, &area, 0x7, 0xe7).unwrap();
        assert_eq!(u16::from_le_bytes([cur[0], cur[1]]), FCW_INIT);
        assert!(cur[2..24].iter().all(|&b| b == 0));
        assert!(cur[576..832].iter().all(|&b| b == 0), "AVX upper halves");
        assert_eq!(cur[160..416], area[160..416]);
        // Outside rfbm the vCPU keeps its state and its XSTATE_BV bits.
        assert_eq!(cur[1664..2688], state(9)[1664..2688]);
        assert_eq!(u64_at(&cur, XSTATE_BV), 0xe0 | 0x2);
    }

    #[test]
    fn restore_refuses_what_xrstor_faults_on() {
        let l = avx512();
        let mut cur = state(2);
        let mut area = state(5);
        area[XCOMP_BV + 7] = 0x80;
        assert_eq!(
            restore(&l, &mut cur, &area, 0x3, 0x3),
            Err(Invalid::Compacted)
        );
        let mut area = state(5);
        assert_eq!(
            restore(&l, &mut cur, &area, 0x3, 0x3),
            Err(Invalid::NotEnabled)
        );
        area[XSTATE_BV..XSTATE_BV + 8].copy_from_slice(&0x3u64.to_le_bytes());
        area[MXCSR + 2] = 0x01; // bit 16: reserved
        assert_eq!(restore(&l, &mut cur, &area, 0x3, 0x3), Err(Invalid::Mxcsr));
        // Nothing was loaded by a refused XRSTOR.
        assert_eq!(cur, state(2));
    }

    #[test]
    fn area_len_reaches_the_last_requested_component() {
        let l = avx512();
        assert_eq!(l.area_len(0x3), LEGACY_AND_HEADER);
        assert_eq!(l.area_len(0x7), 832);
        assert_eq!(l.area_len(0xe7), 2688);
        assert_eq!(l.supported(), 0xe7);
    }
}
