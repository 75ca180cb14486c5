//! The DSDT (ACPI 6.5, 5.2.11.1): the guest's ACPI namespace, in AML.
//!
//! `\_S5_`, COM1, the power button and its Generic Event Device, the VM
//! generation ID and its Generic Event Device, and, given a PCI window, the
//! PCI host bridge; see the parent module for what each is for.

use acpi_tables::aml;
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;

use super::{
    HEADER_LEN, OEM_ID, OEM_REVISION, POWER_BUTTON_GSI, S5_SLEEP_TYPE, VMGENID_ADDR, VMGENID_GSI,
};

/// DSDT revision 2: AML integers are 64 bits wide (5.2.11.1).
const DSDT_REVISION: u8 = 2;
/// COM1's I/O ports and interrupt, as the legacy UART model decodes them.
const COM1_PORT: u16 = 0x3F8;
const COM1_PORT_LEN: u8 = 8;
const COM1_GSI: u32 = 4;
/// PCI configuration mechanism #1 ports: 0xCF8..=0xCFF.
const PCI_CONFIG_PORT: u16 = 0xCF8;
const PCI_CONFIG_PORT_LEN: u8 = 8;
/// I/O ports the PCI host bridge forwards to its bus.
const PCI_IO_MIN: u16 = 0x0D00;
const PCI_IO_MAX: u16 = 0xFFFF;

/// DSDT (5.2.11.1): `\_S5_`, COM1, the power button, the VM generation
/// ID and, given a PCI window, the PCI host bridge.
pub(super) fn dsdt(pci: Option<(u32, u32)>) -> Vec<u8> {
    let mut body = Vec::new();
    // \_S5_ (7.4.2): SLP_TYPa, SLP_TYPb, two reserved. On a hardware-reduced
    // platform Linux writes SLP_TYPa into the sleep control register.
    let zero: u8 = 0;
    aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&S5_SLEEP_TYPE, &S5_SLEEP_TYPE, &zero, &zero]),
    )
    .to_aml_bytes(&mut body);
    push_com1(&mut body);
    push_power_button(&mut body);
    push_vm_generation_id(&mut body);
    if let Some((first, last)) = pci {
        push_pci_host_bridge(&mut body, first, last);
    }

    let mut dsdt = Sdt::new(
        *b"DSDT",
        HEADER_LEN,
        DSDT_REVISION,
        OEM_ID,
        *b"SKVMDSDT",
        OEM_REVISION,
    );
    dsdt.append_slice(&body);
    dsdt.as_slice().to_vec()
}

/// `\_SB_.COM1`: the 16550 UART (PNP0501) at 0x3F8 with ISA IRQ 4. On a
/// hardware-reduced platform Linux maps no legacy ISA IRQ by itself; without
/// this device ttyS0 cannot get its interrupt and user-space console output
/// (which is interrupt driven, unlike printk) fails.
fn push_com1(out: &mut Vec<u8>) {
    let io = aml::IO::new(COM1_PORT, COM1_PORT, 1, COM1_PORT_LEN);
    let irq = aml::Interrupt::new(true, true, false, false, COM1_GSI);
    let crs = aml::ResourceTemplate::new(vec![&io, &irq]);
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501"));
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let crs = aml::Name::new("_CRS".into(), &crs);
    let com1 = aml::Device::new("COM1".into(), vec![&hid, &uid, &crs]);
    aml::Scope::new("\\_SB_".into(), vec![&com1]).to_aml_bytes(out);
}

/// `\_SB_.PWRB`, a control-method power button (PNP0C0C), and `\_SB_.GED_`,
/// a Generic Event Device (ACPI0013) with one interrupt whose `_EVT`
/// notifies the button (0x80: "button pressed", 4.8.2.2.1.2). Linux's
/// evged driver evaluates `_EVT` on each edge of [`POWER_BUTTON_GSI`] and its
/// button driver reports KEY_POWER, which systemd-logind (or acpid) turns
/// into a clean power-off.
fn push_power_button(out: &mut Vec<u8>) {
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C0C"));
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let pwrb = aml::Device::new("PWRB".into(), vec![&hid, &uid]);
    aml::Scope::new("\\_SB_".into(), vec![&pwrb]).to_aml_bytes(out);
    push_ged(out, "GED_", 0, POWER_BUTTON_GSI, "\\_SB_.PWRB");
}

/// `\_SB_.NAME`, a Generic Event Device (ACPI0013, `_UID` `uid`) with one
/// interrupt, `gsi` (edge-triggered, active high), whose `_EVT` notifies
/// `target` with 0x80 on each edge.
fn push_ged(out: &mut Vec<u8>, name: &str, uid: u8, gsi: u32, target: &str) {
    let hid: aml::AmlStr = "ACPI0013";
    let hid = aml::Name::new("_HID".into(), &hid);
    let uid = aml::Name::new("_UID".into(), &uid);
    let irq = aml::Interrupt::new(true, true, false, false, gsi);
    let crs = aml::ResourceTemplate::new(vec![&irq]);
    let crs = aml::Name::new("_CRS".into(), &crs);
    let target: aml::Path = target.into();
    let event: u8 = 0x80;
    let notify = aml::Notify::new(&target, &event);
    // One interrupt, one event: _EVT's argument (the GSI) needs no test.
    let evt = aml::Method::new("_EVT".into(), 1, true, vec![&notify]);
    let ged = aml::Device::new(name.into(), vec![&hid, &uid, &crs, &evt]);
    aml::Scope::new("\\_SB_".into(), vec![&ged]).to_aml_bytes(out);
}

/// `\_SB_.VGEN`, the VM generation ID device as Linux's vmgenid driver
/// finds it (HID `VMGENCTR`, CID `VM_Gen_Counter`): its `ADDR` is a package
/// of the low and high 32 bits of [`VMGENID_ADDR`], where the 16-byte ID
/// lives. And `\_SB_.GED1`, a Generic Event Device whose `_EVT` notifies
/// it (0x80) on each edge of [`VMGENID_GSI`]: the driver then reads the new
/// ID and reseeds the guest's random number generator at once.
fn push_vm_generation_id(out: &mut Vec<u8>) {
    let hid: aml::AmlStr = "VMGENCTR";
    let hid = aml::Name::new("_HID".into(), &hid);
    let counter: aml::AmlStr = "VM_Gen_Counter";
    let cid = aml::Name::new("_CID".into(), &counter);
    let ddn = aml::Name::new("_DDN".into(), &counter);
    let low = (VMGENID_ADDR & 0xFFFF_FFFF) as u32;
    let high = (VMGENID_ADDR >> 32) as u32;
    let addr = aml::Name::new("ADDR".into(), &aml::Package::new(vec![&low, &high]));
    let vgen = aml::Device::new("VGEN".into(), vec![&hid, &cid, &ddn, &addr]);
    aml::Scope::new("\\_SB_".into(), vec![&vgen]).to_aml_bytes(out);
    push_ged(out, "GED1", 1, VMGENID_GSI, "\\_SB_.VGEN");
}

/// `\_SB_.PCI0`: a PCI host bridge (PNP0A03) for segment 0, bus 0, decoding
/// the config ports, I/O 0x0D00..=0xFFFF and the 32-bit MMIO window
/// `first..=last`.
fn push_pci_host_bridge(out: &mut Vec<u8>, first: u32, last: u32) {
    let buses = aml::AddressSpace::<u16>::new_bus_number(0, 0);
    let config_ports = aml::IO::new(PCI_CONFIG_PORT, PCI_CONFIG_PORT, 1, PCI_CONFIG_PORT_LEN);
    let io = aml::AddressSpace::<u16>::new_io(PCI_IO_MIN, PCI_IO_MAX, None);
    let mmio = aml::AddressSpace::<u32>::new_memory(
        aml::AddressSpaceCacheable::NotCacheable,
        true,
        first,
        last,
        None,
    );
    let crs = aml::ResourceTemplate::new(vec![&buses, &config_ports, &io, &mmio]);

    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A03"));
    let seg = aml::Name::new("_SEG".into(), &aml::ZERO);
    let bbn = aml::Name::new("_BBN".into(), &aml::ZERO);
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let crs = aml::Name::new("_CRS".into(), &crs);
    let pci0 = aml::Device::new("PCI0".into(), vec![&hid, &seg, &bbn, &uid, &crs]);
    aml::Scope::new("\\_SB_".into(), vec![&pci0]).to_aml_bytes(out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::acpi::tests::contains;

    #[test]
    fn dsdt_describes_com1_with_its_irq() {
        let d = dsdt(None);
        assert!(d.windows(4).any(|w| w == b"COM1"));
        // EISA id PNP0501 compresses to 41 D0 05 01.
        assert!(d.windows(4).any(|w| w == [0x41, 0xd0, 0x05, 0x01]));
        // Extended interrupt descriptor (0x89) for GSI 4.
        let pos = d.windows(1).position(|w| w == [0x89]).unwrap();
        assert_eq!(&d[pos + 5..pos + 9], &4u32.to_le_bytes());
    }

    #[test]
    fn dsdt_has_a_power_button_that_the_ged_interrupt_presses() {
        let d = dsdt(None);
        for name in [&b"PWRB"[..], b"GED_", b"_EVT", b"ACPI0013\0"] {
            assert!(contains(&d, name), "{}", String::from_utf8_lossy(name));
        }
        // EISAID("PNP0C0C").
        assert!(contains(&d, &[0x0C, 0x41, 0xD0, 0x0C, 0x0C]));
        ged_notifies(&d, POWER_BUTTON_GSI, b"PWRB");
    }

    /// `d` has a GED interrupt on `gsi` and a notify of `\_SB_.TARGET`.
    fn ged_notifies(d: &[u8], gsi: u32, target: &[u8; 4]) {
        // The GED's extended interrupt descriptor: consumer, edge, active
        // high, exclusive, one interrupt, the GSI.
        let mut irq = vec![0x89, 0x06, 0x00, 0x03, 0x01];
        irq.extend_from_slice(&gsi.to_le_bytes());
        assert!(contains(d, &irq), "no interrupt descriptor for gsi {gsi}");
        // Notify (\_SB_.TARGET, 0x80): NotifyOp, the root path, ByteConst
        // 0x80.
        let mut notify = vec![0x86, b'\\', 0x2E];
        notify.extend_from_slice(b"_SB_");
        notify.extend_from_slice(target);
        notify.extend_from_slice(&[0x0A, 0x80]);
        assert!(contains(d, &notify), "no notify of {target:?}");
    }

    #[test]
    fn dsdt_has_a_vm_generation_id_that_the_second_ged_interrupt_notifies() {
        let d = dsdt(None);
        for name in [&b"VGEN"[..], b"GED1", b"VMGENCTR\0"] {
            assert!(contains(&d, name), "{}", String::from_utf8_lossy(name));
        }
        // _CID and _DDN, each the string "VM_Gen_Counter".
        for name in [b"_CID", b"_DDN"] {
            let mut named = vec![0x08];
            named.extend_from_slice(name);
            named.push(0x0D);
            named.extend_from_slice(b"VM_Gen_Counter\0");
            assert!(contains(&d, &named), "{}", String::from_utf8_lossy(name));
        }
        // Name (ADDR, Package (2) { 0xFF000, 0 }): NameOp, the name,
        // PackageOp, its length, two elements, a DWord and Zero.
        let mut addr = vec![0x08];
        addr.extend_from_slice(b"ADDR");
        addr.extend_from_slice(&[0x12, 0x08, 0x02, 0x0C]);
        addr.extend_from_slice(&u32::try_from(VMGENID_ADDR).unwrap().to_le_bytes());
        addr.push(0x00);
        assert!(contains(&d, &addr));
        ged_notifies(&d, VMGENID_GSI, b"VGEN");
    }
}
