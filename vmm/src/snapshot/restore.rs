//! Starting a VM from a snapshot (`skvm run --restore DIR`), in the order
//! the build takes: the host checked against what the snapshot needs, the
//! device options taken from it, guest memory (regions mem-add added
//! included) refilled, the irqchips, clock and vCPUs, and last the PCI
//! headers and transports and every device's new instance, restored from
//! its saved state (last, because a restored device serves what waits in
//! its queues at once: an interrupt it raised before the LAPICs were
//! restored was overwritten by them, and the guest's virtio-net stopped
//! receiving). Every value is checked where it is applied:
//! by the transport (`restore_transport`), the devices (their restore) and
//! KVM.

use std::fs::File;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kvm_ioctls::{VcpuFd, VmFd};

use super::ram;
use super::state::VmSnapshot;
use crate::device_host::DeviceHost;
use crate::kinds::Opened;
use crate::memory::Memory;
use crate::pci::PciBus;
use crate::vcpu::setup::MSR_IA32_TSC;

/// How long each part of a restore took (`--restore` logs them).
#[derive(Debug, Default, Clone, Copy)]
pub struct Times {
    /// Guest memory refilled from the memory file.
    pub memory: Duration,
    /// Every device started (spawned and greeted).
    pub spawn: Duration,
    /// Irqchips, PIT, clock and vCPUs.
    pub machine: Duration,
    /// PCI headers, transports and the devices' own restore.
    pub devices: Duration,
}

impl std::fmt::Display for Times {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let us = |d: Duration| d.as_micros();
        write!(
            f,
            "memory {} us, device spawn {} us, vcpus and irqchips {} us, device restore {} us",
            us(self.memory),
            us(self.spawn),
            us(self.machine),
            us(self.devices)
        )
    }
}

/// The host must be able to take the snapshot's state: the same quirks
/// (an emulating host's guest relies on skvm completing its XSAVE and
/// SYSCALL; a hardware host's on nothing of the kind) and the same vCPU
/// state size (the XSAVE areas' layout).
pub fn check_host(snap: &VmSnapshot, quirks: bool, xsave_size: u32) -> Result<()> {
    let info = &snap.info;
    if info.quirks != quirks {
        bail!(
            "the snapshot was taken with --host-quirks {}, this VM has them {}: restore it \
             on a host like the one that took it",
            if info.quirks { "on" } else { "off" },
            if quirks { "on" } else { "off" }
        );
    }
    // As for the XSAVE completion (`xsave_layout` in vm/mod.rs).
    if !crate::vcpu::xsave::fits_kvm_xsave(xsave_size) {
        bail!("this host's vCPU state is {xsave_size} bytes, more than skvm restores (4 KiB)");
    }
    if info.xsave_size != xsave_size {
        bail!(
            "the snapshot's vCPU state is {} bytes (KVM_CAP_XSAVE2), this host's {xsave_size}: \
             another CPU",
            info.xsave_size
        );
    }
    Ok(())
}

/// Each device serves what the command line gave (its image, its tap), of
/// the size the snapshot's had, with the options the snapshot saved (which
/// may have moved on since boot: virtio-mem's plugged size).
pub fn take_device_options(snap: &VmSnapshot, opened: &mut [Opened]) -> Result<()> {
    for (saved, o) in snap.devices.iter().zip(opened.iter_mut()) {
        if saved.file_size != o.file_size {
            bail!(
                "{}: the image given is {} bytes, the snapshot's was {}",
                saved.name,
                o.file_size,
                saved.file_size
            );
        }
        o.params.clone_from(&saved.params);
    }
    Ok(())
}

/// Adds the regions mem-add had added (contiguous from the start of
/// `room`, inside it) and fills every region from `file`. Returns the
/// bytes added.
pub fn memory(
    snap: &VmSnapshot,
    memory: &mut Memory,
    room: Option<(u64, u64)>,
    file: &File,
) -> Result<u64> {
    let mut added = 0u64;
    for &(addr, size) in &snap.info.hotplugged {
        let Some((start, max)) = room else {
            bail!("the snapshot has hot-added memory: give --hotplug-mem as when it was taken");
        };
        let fits = size.is_multiple_of(crate::kinds::mem::GRANULE)
            && added
                .checked_add(size)
                .is_some_and(|end| end <= max && addr == start + added);
        if !fits {
            bail!(
                "the snapshot's hot-added region {addr:#x}+{size:#x} is not where --hotplug-mem \
                 puts the next one ({:#x}, {} MiB left)",
                start + added,
                (max - added) >> 20
            );
        }
        memory
            .add_region(addr, size)
            .context("cannot add the snapshot's hot-added memory")?;
        added += size;
    }
    let files = memory.files();
    let read = if memory.huge() {
        // Huge-page memfds take no write(2): through the VMM's mapping.
        ram::restore_regions_with(file, &files, |memfd, offset, page| {
            memory.write_file_at(memfd, offset, page)
        })
    } else {
        ram::restore_regions(file, &files)
    };
    read.context("cannot read the snapshot's memory")?;
    Ok(added)
}

/// Restores the PCI headers (BARs, decoding, MSI-X control), then each
/// device's transport and new instance.
pub fn devices(snap: &VmSnapshot, host: &mut DeviceHost, pci: &PciBus) -> Result<()> {
    for (slot, header) in &snap.pci {
        pci.restore_config(*slot, header)
            .context("cannot restore the PCI bus")?;
    }
    host.restore(&snap.devices)
}

/// The irqchips, PIT and clock, then every vCPU.
pub fn machine(snap: &VmSnapshot, vm: &VmFd, vcpus: &[&VcpuFd]) -> Result<()> {
    if vcpus.len() != snap.vcpus.len() {
        bail!(
            "{} vCPUs for the snapshot's {}",
            vcpus.len(),
            snap.vcpus.len()
        );
    }
    snap.machine
        .apply(vm)
        .context("cannot restore the irqchips, PIT and clock")?;
    for (i, (fd, state)) in vcpus.iter().zip(&snap.vcpus).enumerate() {
        state
            .apply(fd)
            .with_context(|| format!("cannot restore vcpu{i}"))?;
    }
    match vcpus.first() {
        Some(fd) => keep_clocks_together(snap, vm, fd),
        None => Ok(()),
    }
}

/// A TSC that did not take the saved value (kvm_pvm keeps every guest's
/// TSC at the host's and ignores KVM_SET_MSRS of it) has moved on by the
/// time the snapshot waited, and with it a guest clock source that reads
/// the TSC (Linux picks `tsc` over `kvm-clock` where the TSC is stable),
/// while the kvmclock, set to the saved time, has not: the guest's uptime
/// would jump but not its printk times or its scheduler clock. So the
/// kvmclock moves on by as much as the TSC did, and the guest sees one
/// pause of that length on every clock. Where KVM set the TSC (hardware
/// KVM), nothing moves: the guest sees no pause at all. `fd` is the first
/// vCPU, restored.
fn keep_clocks_together(snap: &VmSnapshot, vm: &VmFd, fd: &VcpuFd) -> Result<()> {
    let Some(saved) = snap.vcpus.first().and_then(|s| s.msr(MSR_IA32_TSC)) else {
        return Ok(());
    };
    let now = match super::vcpu::read_msrs(fd, &[MSR_IA32_TSC])?.first() {
        Some(&(MSR_IA32_TSC, tsc)) => tsc,
        _ => bail!("KVM cannot read the restored TSC"),
    };
    let khz = fd
        .get_tsc_khz()
        .context("cannot read the TSC's frequency")?;
    match tsc_advance_ns(saved, now, khz) {
        TscAdvance::Kept => Ok(()),
        TscAdvance::Behind => {
            crate::log::warn(
                "restore: the guest's TSC is behind the snapshot's and this host's KVM \
                 does not set it (was the host restarted?): the guest's clock may stall",
            );
            Ok(())
        }
        TscAdvance::Moved(ns) => {
            crate::log::info(&format!(
                "restore: this host's KVM keeps the guest's TSC at the host's; the guest's \
                 clocks move on together by the {:.1} s the snapshot waited",
                ns as f64 / 1e9
            ));
            snap.machine
                .set_clock(vm, ns)
                .context("cannot move the kvmclock with the TSC")
        }
    }
}

/// How a restored TSC stands against the saved one.
#[derive(Debug, PartialEq, Eq)]
enum TscAdvance {
    /// KVM took the saved value (within a second).
    Kept,
    /// It moved on by this many nanoseconds.
    Moved(u64),
    /// It is behind the saved value.
    Behind,
}

fn tsc_advance_ns(saved: u64, now: u64, khz: u32) -> TscAdvance {
    let khz = u128::from(khz.max(1));
    let second = khz * 1000;
    if now < saved {
        return if u128::from(saved - now) < second {
            TscAdvance::Kept
        } else {
            TscAdvance::Behind
        };
    }
    let cycles = u128::from(now - saved);
    if cycles < second {
        return TscAdvance::Kept;
    }
    TscAdvance::Moved(u64::try_from(cycles * 1_000_000 / khz).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tsc_that_moved_on_moves_the_kvmclock_by_as_much() {
        let khz = 2_596_138;
        let second = u64::from(khz) * 1000;
        // KVM set it: a restore takes milliseconds, either way.
        assert_eq!(
            tsc_advance_ns(10 * second, 10 * second + 1000, khz),
            TscAdvance::Kept
        );
        assert_eq!(
            tsc_advance_ns(10 * second, 10 * second - 1000, khz),
            TscAdvance::Kept
        );
        // It kept the host's: 47 s later.
        assert_eq!(
            tsc_advance_ns(10 * second, 57 * second, khz),
            TscAdvance::Moved(47_000_000_000)
        );
        assert_eq!(
            tsc_advance_ns(10 * second, 2 * second, khz),
            TscAdvance::Behind
        );
        // No overflow, no division by zero.
        assert_eq!(tsc_advance_ns(0, u64::MAX, 1), TscAdvance::Moved(u64::MAX));
        assert!(matches!(
            tsc_advance_ns(0, u64::MAX, 0),
            TscAdvance::Moved(_)
        ));
    }
}
