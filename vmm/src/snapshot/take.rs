//! Taking a snapshot of a paused VM (`skvm ctl SOCKET snapshot DIR`): its
//! vCPUs, in-kernel and legacy devices, PCI headers, virtio devices and
//! guest memory, written to two files the control client opened and
//! passed (the VMM opens no path: it has no view of the host's files once
//! the guest runs).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kvm_ioctls::VmFd;

use super::machine::MachineState;
use super::ram;
use super::state::{MachineInfo, VmSnapshot};
use crate::device_host::DeviceHost;
use crate::legacy::LegacyDevices;
use crate::memory::Memory;
use crate::pci::PciBus;
use crate::vcpu::PauseGate;

/// How long the parked vCPUs may take to give their state.
const CAPTURE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a snapshot reads besides the devices: the machine, as the VM was
/// built.
pub struct SnapshotSource {
    /// The KVM VM (irqchips, PIT, clock).
    pub vm: Arc<VmFd>,
    /// Guest memory.
    pub memory: Arc<Mutex<Memory>>,
    /// PCI bus 0.
    pub pci: Arc<PciBus>,
    /// The UART, RTC and power management ports.
    pub legacy: Arc<LegacyDevices>,
    /// vCPUs, boot RAM, quirks, XSAVE size (the regions mem-add added are
    /// read when the snapshot is taken).
    pub info: MachineInfo,
    /// The MSRs to save: KVM's index list, read before confinement.
    pub msrs: Vec<u32>,
}

/// What a snapshot wrote, and how long each part took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// Bytes of the state file.
    pub state_bytes: u64,
    /// Bytes of guest memory written (pages with data).
    pub memory_bytes: u64,
    /// Reading vCPUs, irqchips, devices.
    pub state_time: Duration,
    /// Writing guest memory.
    pub memory_time: Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes the snapshot of the VM, whose vCPUs `gate` holds parked and
/// whose devices `host` has paused, to `state` and `memory` (empty files).
pub fn take(
    src: &SnapshotSource,
    gate: &PauseGate,
    host: &DeviceHost,
    state: &File,
    memory: &File,
) -> Result<Taken> {
    let start = Instant::now();
    let vcpus = gate
        .capture(
            usize::from(src.info.cpus),
            src.msrs.clone(),
            CAPTURE_TIMEOUT,
        )
        .map_err(|e| anyhow::anyhow!("cannot read the vCPUs' state: {e}"))?;
    let machine = MachineState::capture(&src.vm).context("cannot read the irqchips")?;
    let (files, hotplugged) = {
        let m = lock(&src.memory);
        (m.files(), m.hotplugged())
    };
    let snapshot = VmSnapshot {
        info: MachineInfo {
            hotplugged,
            ..src.info.clone()
        },
        vcpus,
        machine,
        legacy: src.legacy.save(),
        pci: src.pci.save_config(),
        devices: host.snapshot(),
    };
    let bytes = snapshot.encode().context("cannot encode the state")?;
    state
        .write_all_at(&bytes, 0)
        .context("cannot write the state file")?;
    let state_time = start.elapsed();
    let memory_bytes = ram::save_regions(&files, memory).context("cannot write guest memory")?;
    Ok(Taken {
        state_bytes: bytes.len() as u64,
        memory_bytes,
        state_time,
        memory_time: start.elapsed() - state_time,
    })
}
