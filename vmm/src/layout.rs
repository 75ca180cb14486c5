//! The guest-physical address map: every address skvm puts something at,
//! in one place (docs/ARCHITECTURE.md, "Memory and boot layout", is the
//! same table in words).
//!
//! | guest physical | what |
//! |---|---|
//! | 0x500 | GDT |
//! | 0x520 | empty IDT |
//! | 0x7000 | zero page (`struct boot_params`) |
//! | 0x8ff0 | boot stack (grows down) |
//! | 0x9000-0xBFFF | boot page tables (PML4, PDPT, PD) |
//! | 0x20000 | kernel command line |
//! | 0x9FC00-0xFFFFF | reserved: EBDA and BIOS area; ACPI tables from 0xE0000 |
//! | 0x100000 | the kernel (bzImage protected-mode code) |
//! | 0xC0000000-0xFFFFFFFF | the 32-bit MMIO hole: PCI BARs, IO-APIC, LAPIC, KVM's TSS |
//! | 0x100000000- | RAM above 3 GiB, then the memory-hotplug region |

/// GDT (null, null, `__BOOT_CS`, `__BOOT_DS`, TSS).
pub const GDT_ADDR: u64 = 0x500;
/// An empty IDT: the kernel installs its own.
pub const IDT_ADDR: u64 = 0x520;
/// The zero page (`struct boot_params`) the kernel gets in RSI.
pub const ZERO_PAGE: u64 = 0x7000;
/// The boot vCPU's initial stack pointer, below the page tables.
pub const BOOT_STACK: u64 = 0x8ff0;
/// Boot page tables: the PML4...
pub const PML4_ADDR: u64 = 0x9000;
/// ... one PDPT ...
pub const PDPT_ADDR: u64 = 0xA000;
/// ... and one PD identity-mapping the first 1 GiB with 2 MiB pages.
pub const PD_ADDR: u64 = 0xB000;
/// The end of what the boot page tables map: a kernel skvm places itself
/// must start below it.
pub const IDENTITY_MAP_END: u64 = 1 << 30;
/// The kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Start of the legacy EBDA and BIOS area, reserved in the e820 map.
pub const EBDA_START: u64 = 0x9_FC00;
/// The ACPI RSDP; the other tables follow it up to [`VMGENID_ADDR`].
pub const RSDP_ADDR: u64 = 0x000E_0000;
/// The guest's VM generation ID: 16 bytes in the BIOS area's last page,
/// which the ACPI tables stop short of (`boot::acpi`, `legacy::vmgenid`).
pub const VMGENID_ADDR: u64 = 0x000F_F000;
/// First byte past the BIOS area.
pub const BIOS_AREA_END: u64 = 0x10_0000;
/// Where the kernel image may start (1 MiB).
pub const HIMEM_START: u64 = 0x10_0000;

/// Start of the 32-bit MMIO hole: RAM below it ends here (3 GiB).
pub const MMIO_HOLE_START: u64 = 0xC000_0000;
/// End of the 32-bit MMIO hole; RAM above 3 GiB continues here (4 GiB).
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// The window device BARs are placed in (described to the guest in the
/// DSDT's PCI0 resources): the start of the MMIO hole.
pub const BAR_WINDOW_BASE: u32 = 0xC000_0000;
/// Size of that window (256 MiB).
pub const BAR_WINDOW_SIZE: u32 = 0x1000_0000;
/// Each device's slot in the window.
pub const BAR_STRIDE: u32 = 0x1_0000;
/// KVM's three TSS pages (KVM_SET_TSS_ADDR), in the hole above the local
/// APICs (where PCs keep their BIOS ROM's neighbourhood free).
pub const KVM_TSS_ADDR: u64 = 0xFFFB_D000;
/// KVM's identity-map page (KVM_SET_IDENTITY_MAP_ADDR), just below the TSS.
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xFFFB_C000;
/// The IO-APIC.
pub const IOAPIC_ADDR: u32 = 0xFEC0_0000;
/// The local APICs.
pub const LAPIC_ADDR: u32 = 0xFEE0_0000;

/// Alignment and lowest address of the memory-hotplug region.
const HOTPLUG_ALIGN: u64 = 1 << 30;

/// Guest address of BAR slot `index`, or `None` past the window.
pub fn bar_slot(index: u32) -> Option<u32> {
    index
        .checked_mul(BAR_STRIDE)
        .filter(|off| *off < BAR_WINDOW_SIZE)
        .map(|off| BAR_WINDOW_BASE + off)
}

/// Where the memory-hotplug region goes: above `ram_top` and 4 GiB,
/// 1 GiB aligned, not in the e820 map.
pub fn hotplug_region(ram_top: u64) -> u64 {
    ram_top.max(MMIO_HOLE_END).div_ceil(HOTPLUG_ALIGN) * HOTPLUG_ALIGN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_slots_stay_in_the_window() {
        assert_eq!(bar_slot(0), Some(BAR_WINDOW_BASE));
        assert_eq!(bar_slot(1), Some(BAR_WINDOW_BASE + BAR_STRIDE));
        assert_eq!(bar_slot(BAR_WINDOW_SIZE / BAR_STRIDE), None);
        assert_eq!(bar_slot(u32::MAX), None);
    }

    #[test]
    fn the_hotplug_region_sits_above_ram_and_4_gib() {
        assert_eq!(hotplug_region(256 << 20), 4 << 30);
        assert_eq!(hotplug_region((5 << 30) + 1), 6 << 30);
    }

    #[test]
    fn boot_structures_do_not_overlap() {
        let pages = [
            GDT_ADDR,
            ZERO_PAGE,
            PML4_ADDR,
            PDPT_ADDR,
            PD_ADDR,
            CMDLINE_ADDR,
        ];
        for (i, a) in pages.iter().enumerate() {
            for b in pages.iter().skip(i + 1) {
                assert_ne!(a >> 12, b >> 12, "{a:#x} and {b:#x} share a page");
            }
        }
    }

    // The fixed structures around them, checked when compiling.
    const _: () = assert!(BOOT_STACK < PML4_ADDR && BOOT_STACK > ZERO_PAGE + 0x1000);
    const _: () = assert!(KVM_IDENTITY_MAP_ADDR + 0x1000 == KVM_TSS_ADDR);
    const _: () = assert!(KVM_IDENTITY_MAP_ADDR > LAPIC_ADDR as u64 + 0x1000);
    const _: () = assert!(KVM_TSS_ADDR + 0x3000 <= MMIO_HOLE_END);
    const _: () = assert!(BAR_WINDOW_BASE as u64 + BAR_WINDOW_SIZE as u64 <= IOAPIC_ADDR as u64);
}
