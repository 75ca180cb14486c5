//! The guest's ACPI tables, written into the BIOS area below 1 MiB.
//!
//! skvm describes a hardware-reduced ACPI platform (ACPI 6.5, 4.1): no PM1
//! blocks, no SCI, no GPEs. The tables are those of ACPI 6.5 chapter 5.2:
//!
//! - RSDP (5.2.5), revision 2, at [`RSDP_ADDR`], pointing at the XSDT.
//! - XSDT (5.2.8), listing the FADT and the MADT.
//! - FADT (5.2.9): the HW_REDUCED_ACPI flag, the sleep control and status
//!   registers that power the guest off, and the reset register that reboots
//!   it, all in port I/O served by `legacy::acpi_pm`; X_DSDT points at the DSDT.
//! - MADT (5.2.12): one local APIC per vCPU, the IO-APIC, ISA IRQ 0 routed
//!   to GSI 2, and NMI on LINT1. A kernel without MP-table support (Debian's
//!   cloud kernel) finds its CPUs and IO-APIC only here.
//! - DSDT (5.2.11.1): the `\_S5_` object (7.4.2) without which Linux will
//!   not power off through ACPI; COM1; the power button `\_SB_.PWRB`
//!   (PNP0C0C, 4.8.2.2.1.2) and the Generic Event Device `\_SB_.GED_`
//!   (ACPI0013, 5.6.9) that notifies it when [`POWER_BUTTON_GSI`] fires,
//!   the hardware-reduced way to press a button; the VM generation ID
//!   `\_SB_.VGEN` and a second Generic Event Device `\_SB_.GED1` that
//!   notifies it when [`VMGENID_GSI`] fires (`legacy::vmgenid`); and, once
//!   skvm has a PCI bus, the PCI host bridge `\_SB_.PCI0` with its resources
//!   (6.2.2, 6.4).
//!
//! The DSDT's AML is built in the `dsdt` module, the rest here.
//!
//! Linux takes the RSDP address from the zero page (`acpi_rsdp_addr`) and
//! otherwise finds it by scanning 0xE0000..0xFFFFF.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

pub use crate::layout::{IOAPIC_ADDR, LAPIC_ADDR, RSDP_ADDR, VMGENID_ADDR};

mod dsdt;
use dsdt::dsdt;

/// The FADT's sleep control register (8-bit port; `legacy::acpi_pm`).
pub const SLEEP_CONTROL_PORT: u16 = 0x600;
/// The FADT's sleep status register (8-bit port; `legacy::acpi_pm`).
pub const SLEEP_STATUS_PORT: u16 = 0x601;
/// The FADT's reset register: the classic reset control port.
pub const RESET_PORT: u16 = 0xCF9;
/// The value the guest writes to [`RESET_PORT`] to reboot.
pub const RESET_VALUE: u8 = 0x06;
/// The SLP_TYP value of S5 (soft off) that `\_S5_` gives the guest, and so
/// the one it writes to [`SLEEP_CONTROL_PORT`] to power off.
pub const S5_SLEEP_TYPE: u8 = 5;
/// The IO-APIC pin of the Generic Event Device's interrupt (edge-triggered,
/// active high): an edge on it is a press of the power button. Pin 9 is
/// where PC firmware puts the SCI, which a hardware-reduced platform has not.
pub const POWER_BUTTON_GSI: u32 = 9;
/// The IO-APIC pin of the second Generic Event Device (edge-triggered,
/// active high): an edge on it tells the guest that its VM generation ID
/// changed.
pub const VMGENID_GSI: u32 = 10;
/// Most vCPUs the MADT can describe: xAPIC ids are 8 bits and 0xFF is the
/// broadcast id.
pub const MAX_CPUS: u8 = 254;

/// Alignment of each table (the RSDP must be on a 16-byte boundary).
const TABLE_ALIGN: u64 = 16;
/// Length of the header every table but the RSDP starts with (5.2.6).
const HEADER_LEN: u32 = 36;

const OEM_ID: [u8; 6] = *b"SKVM  ";
const OEM_REVISION: u32 = 1;
/// FADT Hypervisor Vendor Identity (5.2.9).
const HYPERVISOR_VENDOR: [u8; 8] = *b"SKVM    ";

/// MADT revision of ACPI 6.3 and later (5.2.12).
const MADT_REVISION: u8 = 5;
/// MADT header: the table header, the local APIC address and the flags.
const MADT_HEADER_LEN: u32 = 44;
const MADT_LAPIC_ADDR_OFFSET: usize = 36;
const MADT_FLAGS_OFFSET: usize = 40;
/// MADT flags: the platform also has dual 8259 PICs (5.2.12, table 5.20).
const MADT_PCAT_COMPAT: u32 = 1;
/// MADT Interrupt Source Override structure (5.2.12.5).
const MADT_TYPE_INT_SRC_OVERRIDE: u8 = 2;
const MADT_INT_SRC_OVERRIDE_LEN: u8 = 10;
/// MADT Local APIC NMI structure (5.2.12.7).
const MADT_TYPE_LAPIC_NMI: u8 = 4;
const MADT_LAPIC_NMI_LEN: u8 = 6;
/// Bus 0 in an interrupt source override is ISA.
const ISA_BUS: u8 = 0;
/// MPS INTI flags 0: polarity and trigger mode conform to the bus.
const MPS_INTI_CONFORMS: u16 = 0;
/// Processor UID that means "all processors" in a Local APIC NMI structure.
const ALL_PROCESSORS: u8 = 0xFF;
/// The LAPIC input NMI is wired to.
const NMI_LINT: u8 = 1;
/// The IO-APIC's id: 0, which is what KVM's IO-APIC id register reads at
/// reset. Linux on x86-64 only needs it to differ from other IO-APICs' ids.
const IOAPIC_ID: u8 = 0;
/// The PIT's ISA IRQ and the IO-APIC pin it is wired to.
const PIT_IRQ: u8 = 0;
const PIT_GSI: u32 = 2;

/// FADT IAPC_BOOT_ARCH: VGA Not Present (5.2.9.3, table 5.11).
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;

/// What the tables describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcpiLayout {
    /// Number of vCPUs, 1..=[`MAX_CPUS`]; vCPU `i` has APIC id and ACPI
    /// processor UID `i`.
    pub num_cpus: u8,
    /// `(base, size)` of the 32-bit PCI MMIO window. `Some` adds the PCI host
    /// bridge `\_SB_.PCI0` to the DSDT; the window must end below
    /// [`IOAPIC_ADDR`].
    pub pci_mmio32: Option<(u64, u64)>,
}

/// Errors while building or writing the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The vCPU count is 0 or above [`MAX_CPUS`].
    #[error("cannot describe {0} vcpus, the range is 1..=254")]
    CpuCount(u8),
    /// The PCI MMIO window is empty or does not end below the IO-APIC.
    #[error("pci mmio window {base:#x}+{size:#x} is empty or not below the io-apic")]
    PciWindow {
        /// The window's base.
        base: u64,
        /// The window's size.
        size: u64,
    },
    /// The tables do not fit between [`RSDP_ADDR`] and [`VMGENID_ADDR`].
    #[error("acpi tables need {need:#x} bytes, the bios area has {room:#x}")]
    TooLarge {
        /// Bytes the tables need from [`RSDP_ADDR`] on.
        need: u64,
        /// Bytes available.
        room: u64,
    },
    /// Guest memory refused a write.
    #[error("cannot write the {table} table into guest memory")]
    GuestWrite {
        /// The table's signature.
        table: &'static str,
        /// Cause.
        #[source]
        source: GuestMemoryError,
    },
}

/// Builds the ACPI tables for `layout` and writes them into `mem` from
/// [`RSDP_ADDR`] up. Returns the RSDP's address, for the zero page.
///
/// Nothing is written unless every table fits below [`VMGENID_ADDR`].
pub fn setup_acpi<M: GuestMemory>(mem: &M, layout: &AcpiLayout) -> Result<GuestAddress, AcpiError> {
    if layout.num_cpus == 0 || layout.num_cpus > MAX_CPUS {
        return Err(AcpiError::CpuCount(layout.num_cpus));
    }
    let pci = pci_window(layout.pci_mmio32)?;

    let mut area = Area::new();
    let dsdt = area.place("DSDT", dsdt(pci))?;
    let madt = area.place("APIC", madt(layout.num_cpus))?;
    let fadt = area.place("FACP", fadt(dsdt))?;
    let xsdt = area.place("XSDT", xsdt(&[fadt, madt]))?;
    area.write(mem)?;

    let rsdp = to_bytes(&Rsdp::new(OEM_ID, xsdt));
    write_table(mem, "RSDP", RSDP_ADDR, &rsdp)?;
    Ok(GuestAddress(RSDP_ADDR))
}

/// Checks the PCI window and returns its first and last address.
fn pci_window(window: Option<(u64, u64)>) -> Result<Option<(u32, u32)>, AcpiError> {
    let Some((base, size)) = window else {
        return Ok(None);
    };
    let bad = || AcpiError::PciWindow { base, size };
    let last = size
        .checked_sub(1)
        .and_then(|span| base.checked_add(span))
        .ok_or_else(bad)?;
    if last >= u64::from(IOAPIC_ADDR) {
        return Err(bad());
    }
    let first = u32::try_from(base).map_err(|_| bad())?;
    let last = u32::try_from(last).map_err(|_| bad())?;
    Ok(Some((first, last)))
}

/// Tables laid out one after another behind the RSDP, kept in memory until
/// all have fit.
struct Area {
    next: u64,
    tables: Vec<(&'static str, u64, Vec<u8>)>,
}

impl Area {
    fn new() -> Self {
        Self {
            next: align_up(RSDP_ADDR.saturating_add(Rsdp::len() as u64)),
            tables: Vec::new(),
        }
    }

    /// Gives `table` the next free address, if it fits below the VM
    /// generation ID.
    fn place(&mut self, name: &'static str, table: Vec<u8>) -> Result<u64, AcpiError> {
        let addr = self.next;
        let end = addr.saturating_add(table.len() as u64);
        if end > VMGENID_ADDR {
            return Err(AcpiError::TooLarge {
                need: end - RSDP_ADDR,
                room: VMGENID_ADDR - RSDP_ADDR,
            });
        }
        self.next = align_up(end);
        self.tables.push((name, addr, table));
        Ok(addr)
    }

    fn write<M: GuestMemory>(&self, mem: &M) -> Result<(), AcpiError> {
        for (name, addr, table) in &self.tables {
            write_table(mem, name, *addr, table)?;
        }
        Ok(())
    }
}

fn align_up(addr: u64) -> u64 {
    addr.saturating_add(TABLE_ALIGN - 1) & !(TABLE_ALIGN - 1)
}

fn write_table<M: GuestMemory>(
    mem: &M,
    table: &'static str,
    addr: u64,
    bytes: &[u8],
) -> Result<(), AcpiError> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| AcpiError::GuestWrite { table, source })
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// XSDT (5.2.8): the 64-bit addresses of the other tables (the DSDT is
/// reached through the FADT).
fn xsdt(entries: &[u64]) -> Vec<u8> {
    let mut xsdt = XSDT::new(OEM_ID, *b"SKVMXSDT", OEM_REVISION);
    for entry in entries {
        xsdt.add_entry(*entry);
    }
    to_bytes(&xsdt)
}

/// FADT (5.2.9), revision 6.5.
fn fadt(dsdt: u64) -> Vec<u8> {
    // With HW_REDUCED_ACPI the PM1/GPE blocks, SCI and FACS are absent
    // (4.1). PWR_BUTTON and SLP_BUTTON set mean "no fixed-feature button":
    // the power button is the DSDT's control-method device, and there is no
    // sleep button.
    let mut fadt = FADTBuilder::new(OEM_ID, *b"SKVMFACP", OEM_REVISION)
        .dsdt_64(dsdt)
        .flag(Flags::Wbinvd)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup)
        .flag(Flags::HwReducedAcpi);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH_VGA_NOT_PRESENT.into();
    fadt.reset_reg = io_register(RESET_PORT);
    fadt.reset_value = RESET_VALUE;
    fadt.sleep_control_reg = io_register(SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_register(SLEEP_STATUS_PORT);
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_VENDOR).into();
    to_bytes(&fadt.finalize())
}

/// An 8-bit register in system I/O space, as a Generic Address Structure
/// (5.2.3.2).
fn io_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

/// MADT (5.2.12).
fn madt(num_cpus: u8) -> Vec<u8> {
    let mut entries = Vec::new();
    for id in 0..num_cpus {
        ProcessorLocalApic::new(id, id, EnabledStatus::Enabled).to_aml_bytes(&mut entries);
    }
    IoApic::new(IOAPIC_ID, IOAPIC_ADDR, 0).to_aml_bytes(&mut entries);
    push_interrupt_source_override(&mut entries, PIT_IRQ, PIT_GSI);
    push_lapic_nmi(&mut entries);

    let mut madt = Sdt::new(
        *b"APIC",
        MADT_HEADER_LEN,
        MADT_REVISION,
        OEM_ID,
        *b"SKVMAPIC",
        OEM_REVISION,
    );
    madt.write_u32(MADT_LAPIC_ADDR_OFFSET, LAPIC_ADDR);
    madt.write_u32(MADT_FLAGS_OFFSET, MADT_PCAT_COMPAT);
    madt.append_slice(&entries);
    madt.as_slice().to_vec()
}

/// Interrupt Source Override (5.2.12.5): ISA IRQ `irq` arrives on `gsi`.
fn push_interrupt_source_override(out: &mut Vec<u8>, irq: u8, gsi: u32) {
    out.extend_from_slice(&[
        MADT_TYPE_INT_SRC_OVERRIDE,
        MADT_INT_SRC_OVERRIDE_LEN,
        ISA_BUS,
        irq,
    ]);
    out.extend_from_slice(&gsi.to_le_bytes());
    out.extend_from_slice(&MPS_INTI_CONFORMS.to_le_bytes());
}

/// Local APIC NMI (5.2.12.7): NMI on LINT1 of every processor.
fn push_lapic_nmi(out: &mut Vec<u8>) {
    out.extend_from_slice(&[MADT_TYPE_LAPIC_NMI, MADT_LAPIC_NMI_LEN, ALL_PROCESSORS]);
    out.extend_from_slice(&MPS_INTI_CONFORMS.to_le_bytes());
    out.push(NMI_LINT);
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    const NO_PCI: Option<(u64, u64)> = None;
    const PCI_WINDOW: Option<(u64, u64)> = Some((0xC000_0000, 0x2000_0000));

    fn build(num_cpus: u8, pci_mmio32: Option<(u64, u64)>) -> (GuestMemoryMmap, GuestAddress) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let layout = AcpiLayout {
            num_cpus,
            pci_mmio32,
        };
        let rsdp = setup_acpi(&mem, &layout).unwrap();
        (mem, rsdp)
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
        bytes
    }

    fn u32_at(bytes: &[u8], offset: usize) -> u32 {
        u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
    }

    fn u64_at(bytes: &[u8], offset: usize) -> u64 {
        u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0, |acc, b| acc.wrapping_add(*b))
    }

    /// A whole table, sized by the length in its header.
    fn table_at(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
        let header = read(mem, addr, 36);
        read(mem, addr, u32_at(&header, 4) as usize)
    }

    fn xsdt_addr(mem: &GuestMemoryMmap, rsdp: GuestAddress) -> u64 {
        u64_at(&read(mem, rsdp.0, 36), 24)
    }

    fn xsdt_entries(mem: &GuestMemoryMmap, rsdp: GuestAddress) -> Vec<u64> {
        let xsdt = table_at(mem, xsdt_addr(mem, rsdp));
        xsdt[36..].chunks(8).map(|e| u64_at(e, 0)).collect()
    }

    /// The table the XSDT lists under `signature`, with its address.
    fn find(mem: &GuestMemoryMmap, rsdp: GuestAddress, signature: &[u8; 4]) -> (u64, Vec<u8>) {
        xsdt_entries(mem, rsdp)
            .into_iter()
            .map(|addr| (addr, table_at(mem, addr)))
            .find(|(_, table)| &table[..4] == signature)
            .unwrap()
    }

    fn dsdt(mem: &GuestMemoryMmap, rsdp: GuestAddress) -> Vec<u8> {
        let (_, fadt) = find(mem, rsdp, b"FACP");
        table_at(mem, u64_at(&fadt, 140))
    }

    /// The MADT's interrupt controller structures, as (type, bytes).
    fn madt_entries(madt: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut entries = Vec::new();
        let mut rest = &madt[44..];
        while !rest.is_empty() {
            let len = rest[1] as usize;
            entries.push((rest[0], rest[..len].to_vec()));
            rest = &rest[len..];
        }
        entries
    }

    /// The MADT's entries of one kind (0 local APIC, 1 IO-APIC, 2 interrupt
    /// source override, 4 local APIC NMI), whole.
    fn madt_entries_of(madt: &[u8], kind: u8) -> Vec<Vec<u8>> {
        madt_entries(madt)
            .into_iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, bytes)| bytes)
            .collect()
    }

    pub(super) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn returns_the_rsdp_address() {
        let (_, rsdp) = build(1, NO_PCI);

        assert_eq!(rsdp, GuestAddress(RSDP_ADDR));
    }

    #[test]
    fn rsdp_is_revision_2_with_both_checksums_valid() {
        let (mem, rsdp) = build(2, NO_PCI);

        let bytes = read(&mem, rsdp.0, 36);

        assert_eq!(&bytes[..8], b"RSD PTR ");
        assert_eq!(bytes[15], 2, "revision");
        assert_eq!(u32_at(&bytes, 20), 36, "length");
        assert_eq!(sum(&bytes[..20]), 0, "v1 checksum");
        assert_eq!(sum(&bytes), 0, "extended checksum");
    }

    #[test]
    fn every_table_has_a_valid_checksum() {
        let (mem, rsdp) = build(64, PCI_WINDOW);
        let mut addrs = vec![xsdt_addr(&mem, rsdp)];
        addrs.extend(xsdt_entries(&mem, rsdp));

        for addr in addrs {
            let table = table_at(&mem, addr);
            assert_eq!(sum(&table), 0, "{}", String::from_utf8_lossy(&table[..4]));
        }
        assert_eq!(sum(&dsdt(&mem, rsdp)), 0, "DSDT");
    }

    #[test]
    fn xsdt_points_at_fadt_and_madt() {
        let (mem, rsdp) = build(2, NO_PCI);

        let signatures: Vec<Vec<u8>> = xsdt_entries(&mem, rsdp)
            .into_iter()
            .map(|addr| read(&mem, addr, 4))
            .collect();

        assert_eq!(signatures, vec![b"FACP".to_vec(), b"APIC".to_vec()]);
    }

    #[test]
    fn fadt_x_dsdt_points_at_the_dsdt() {
        let (mem, rsdp) = build(2, NO_PCI);

        let dsdt = dsdt(&mem, rsdp);

        assert_eq!(&dsdt[..4], b"DSDT");
    }

    #[test]
    fn fadt_is_revision_6_and_hardware_reduced_with_reset_support() {
        let (mem, rsdp) = build(1, NO_PCI);

        let (_, fadt) = find(&mem, rsdp, b"FACP");

        assert_eq!(fadt.len(), 276);
        assert_eq!(fadt[8], 6, "revision");
        let flags = u32_at(&fadt, 112);
        assert_ne!(flags & Flags::HwReducedAcpi as u32, 0);
        assert_ne!(flags & Flags::ResetRegSup as u32, 0);
        assert_ne!(flags & Flags::PwrButton as u32, 0, "no fixed power button");
        assert_ne!(flags & Flags::SlpButton as u32, 0, "no fixed sleep button");
        assert_eq!(
            u16::from_le_bytes([fadt[109], fadt[110]]),
            1 << 2,
            "vga not present"
        );
    }

    #[test]
    fn fadt_reset_register_is_port_cf9_value_6() {
        let (mem, rsdp) = build(1, NO_PCI);

        let (_, fadt) = find(&mem, rsdp, b"FACP");

        // Space 1 (system I/O), 8 bits wide at bit 0, byte access.
        assert_eq!(fadt[116..120], [1, 8, 0, 1]);
        assert_eq!(u64_at(&fadt, 120), u64::from(RESET_PORT));
        assert_eq!(fadt[128], RESET_VALUE);
    }

    #[test]
    fn fadt_sleep_registers_are_8_bit_io_ports() {
        let (mem, rsdp) = build(1, NO_PCI);

        let (_, fadt) = find(&mem, rsdp, b"FACP");

        assert_eq!(fadt[244..248], [1, 8, 0, 1], "sleep control");
        assert_eq!(u64_at(&fadt, 248), u64::from(SLEEP_CONTROL_PORT));
        assert_eq!(fadt[256..260], [1, 8, 0, 1], "sleep status");
        assert_eq!(u64_at(&fadt, 260), u64::from(SLEEP_STATUS_PORT));
    }

    #[test]
    fn madt_has_one_enabled_local_apic_per_vcpu() {
        for num_cpus in [1u8, 2, 64] {
            let (mem, rsdp) = build(num_cpus, NO_PCI);
            let (_, madt) = find(&mem, rsdp, b"APIC");

            let lapics: Vec<Vec<u8>> = madt_entries_of(&madt, 0);

            assert_eq!(lapics.len(), usize::from(num_cpus));
            for (index, lapic) in lapics.iter().enumerate() {
                assert_eq!(usize::from(lapic[2]), index, "processor uid");
                assert_eq!(usize::from(lapic[3]), index, "apic id");
                assert_eq!(u32_at(lapic, 4), 1, "enabled");
            }
        }
    }

    #[test]
    fn madt_header_has_lapic_address_and_pcat_compat() {
        let (mem, rsdp) = build(2, NO_PCI);

        let (_, madt) = find(&mem, rsdp, b"APIC");

        assert_eq!(u32_at(&madt, 36), LAPIC_ADDR);
        assert_eq!(u32_at(&madt, 40), MADT_PCAT_COMPAT);
    }

    #[test]
    fn madt_has_the_ioapic_at_gsi_0() {
        let (mem, rsdp) = build(2, NO_PCI);
        let (_, madt) = find(&mem, rsdp, b"APIC");

        let ioapics: Vec<Vec<u8>> = madt_entries_of(&madt, 1);

        assert_eq!(ioapics.len(), 1);
        assert_eq!(ioapics[0][2], IOAPIC_ID);
        assert_eq!(u32_at(&ioapics[0], 4), IOAPIC_ADDR);
        assert_eq!(u32_at(&ioapics[0], 8), 0, "gsi base");
    }

    #[test]
    fn madt_routes_isa_irq0_to_gsi2() {
        let (mem, rsdp) = build(2, NO_PCI);
        let (_, madt) = find(&mem, rsdp, b"APIC");

        let overrides: Vec<Vec<u8>> = madt_entries_of(&madt, 2);

        assert_eq!(overrides, vec![vec![2, 10, 0, 0, 2, 0, 0, 0, 0, 0]]);
    }

    #[test]
    fn madt_wires_nmi_to_lint1_of_all_processors() {
        let (mem, rsdp) = build(2, NO_PCI);
        let (_, madt) = find(&mem, rsdp, b"APIC");

        let nmis: Vec<Vec<u8>> = madt_entries_of(&madt, 4);

        assert_eq!(nmis, vec![vec![4, 6, 0xFF, 0, 0, 1]]);
    }

    #[test]
    fn dsdt_declares_s5() {
        let (mem, rsdp) = build(1, NO_PCI);

        let dsdt = dsdt(&mem, rsdp);

        // Name(_S5_, Package(4) {5, 5, 0, 0}).
        let s5 = [
            0x08, b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0A, 5, 0x0A, 5, 0, 0,
        ];
        assert!(contains(&dsdt, &s5));
    }

    #[test]
    fn dsdt_has_no_pci_host_bridge_without_a_window() {
        let (mem, rsdp) = build(1, NO_PCI);

        let dsdt = dsdt(&mem, rsdp);

        assert!(!contains(&dsdt, b"PCI0"));
    }

    #[test]
    fn dsdt_has_pci_host_bridge_with_the_window() {
        let (mem, rsdp) = build(1, PCI_WINDOW);

        let dsdt = dsdt(&mem, rsdp);

        for name in [
            &b"\\_SB_"[..],
            b"PCI0",
            b"_HID",
            b"_SEG",
            b"_BBN",
            b"_UID",
            b"_CRS",
        ] {
            assert!(contains(&dsdt, name), "{}", String::from_utf8_lossy(name));
        }
        // EISAID("PNP0A03") as a DWord constant.
        assert!(contains(&dsdt, &[0x0C, 0x41, 0xD0, 0x0A, 0x03]));
        // The DWord memory descriptor's min, max, translation and length.
        let mut window = Vec::new();
        for value in [0xC000_0000u32, 0xDFFF_FFFF, 0, 0x2000_0000] {
            window.extend_from_slice(&value.to_le_bytes());
        }
        assert!(contains(&dsdt, &window));
    }

    #[test]
    fn tables_for_254_vcpus_fit_below_the_vm_generation_id() {
        let (mem, rsdp) = build(MAX_CPUS, PCI_WINDOW);

        let mut addrs = vec![xsdt_addr(&mem, rsdp)];
        addrs.extend(xsdt_entries(&mem, rsdp));
        let (_, fadt) = find(&mem, rsdp, b"FACP");
        addrs.push(u64_at(&fadt, 140));

        for addr in addrs {
            let len = table_at(&mem, addr).len() as u64;
            assert!(
                addr >= RSDP_ADDR && addr + len <= VMGENID_ADDR,
                "{addr:#x}+{len:#x}"
            );
        }
    }

    #[test]
    fn rejects_zero_and_too_many_vcpus() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();

        for num_cpus in [0, MAX_CPUS + 1] {
            let layout = AcpiLayout {
                num_cpus,
                pci_mmio32: None,
            };
            let result = setup_acpi(&mem, &layout);
            assert!(matches!(result, Err(AcpiError::CpuCount(n)) if n == num_cpus));
        }
    }

    #[test]
    fn rejects_empty_or_misplaced_pci_windows() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();

        for window in [
            (0xC000_0000, 0),
            (0xC000_0000, 0x4000_0000),
            (0x1_0000_0000, 0x1000),
            (u64::MAX, 2),
        ] {
            let layout = AcpiLayout {
                num_cpus: 1,
                pci_mmio32: Some(window),
            };
            let result = setup_acpi(&mem, &layout);
            assert!(
                matches!(result, Err(AcpiError::PciWindow { .. })),
                "{window:x?}"
            );
        }
    }

    #[test]
    fn reports_guest_memory_too_small_for_the_tables() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let layout = AcpiLayout {
            num_cpus: 1,
            pci_mmio32: None,
        };

        let result = setup_acpi(&mem, &layout);

        assert!(matches!(result, Err(AcpiError::GuestWrite { .. })));
    }
}
