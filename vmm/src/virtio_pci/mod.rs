//! The virtio-pci modern transport (virtio 1.2, 4.1) with MSI-X.
//!
//! Everything the guest reads is answered here from cached state: the common
//! configuration, the device configuration, the MSI-X table. Only lifecycle
//! events (DRIVER_OK, reset) and device-config writes reach the device
//! through its [`Backend`]. Queue notifications never pass through the VMM:
//! each queue's notify address is a KVM ioeventfd on the device's kick
//! eventfd, and each queue's interrupt eventfd is a KVM irqfd routed to the
//! MSI-X vector the guest chose.
//!
//! BAR 0 (32 KiB) layout:
//!
//! | offset | structure                   |
//! |--------|-----------------------------|
//! | 0x0000 | common configuration        |
//! | 0x1000 | ISR status                  |
//! | 0x2000 | device-specific config      |
//! | 0x3000 | notifications, 4 bytes/queue |
//! | 0x4000 | MSI-X table                 |
//! | 0x6000 | MSI-X pending bits          |

pub mod msix;

use std::sync::Arc;

use ipc::{DeviceInfo, DeviceState, QueueLayout, QueueState};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::irq::IrqRouter;
use crate::log;
use crate::pci::config::{ConfigSpace, PciIds};
use crate::pci::PciFunction;
use msix::{MsixTable, NO_VECTOR};

const BAR_SIZE: u32 = 0x8000;
const COMMON: u64 = 0x0000;
const COMMON_LEN: u64 = 0x38;
const ISR: u64 = 0x1000;
const DEVICE_CFG: u64 = 0x2000;
const NOTIFY: u64 = 0x3000;
const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE: u64 = 0x4000;
const MSIX_PBA: u64 = 0x6000;
const REGION_LEN: u64 = 0x1000;

const VIRTIO_VENDOR: u16 = 0x1af4;
const VIRTIO_DEVICE_BASE: u16 = 0x1040;
const CAP_VENDOR: u8 = 0x09;
const CAP_MSIX: u8 = 0x11;
const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;
const CFG_PCI: u8 = 5;

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    /// The driver is ready.
    pub const DRIVER_OK: u8 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u8 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const NEEDS_RESET: u8 = 0x40;
}

/// The eventfds of one device instance: created by the VMM, shared with the
/// device at activation.
pub struct DeviceEvents {
    /// One kick eventfd per queue (KVM ioeventfds on the notify addresses).
    pub kicks: Vec<EventFd>,
    /// One interrupt eventfd per queue (KVM irqfds).
    pub irqs: Vec<EventFd>,
    /// The configuration-change interrupt.
    pub config_irq: EventFd,
}

/// What the transport needs from a device, wherever it runs.
pub trait Backend: Send {
    /// The device's name for logs, e.g. "rng0".
    fn name(&self) -> &str;
    /// What the device reported at start.
    fn info(&self) -> &DeviceInfo;
    /// A driver write to the device configuration.
    fn write_config(&mut self, offset: u32, data: &[u8]) -> anyhow::Result<()>;
    /// DRIVER_OK: start serving `queues` with `features`.
    fn activate(
        &mut self,
        features: u64,
        queues: &[QueueLayout],
        events: &DeviceEvents,
    ) -> anyhow::Result<()>;
    /// The driver reset the device.
    fn reset(&mut self) -> anyhow::Result<()>;
    /// Stop serving the queues and say where they are.
    fn pause(&mut self) -> anyhow::Result<DeviceState>;
    /// Serve the queues again after [`Backend::pause`].
    fn resume(&mut self) -> anyhow::Result<()>;
    /// Carry on from `state` in place of an activation; `recover` when the
    /// state is put together by the VMM for an instance that died unsaved.
    fn restore(
        &mut self,
        state: &DeviceState,
        recover: bool,
        events: &DeviceEvents,
    ) -> anyhow::Result<()>;
}

#[derive(Clone, Copy)]
struct QueueConfig {
    size: u16,
    enabled: bool,
    vector: u16,
    desc: u64,
    avail: u64,
    used: u64,
}

/// A virtio device on the PCI bus.
pub struct VirtioPci<B: Backend> {
    config: ConfigSpace,
    msix_cap: usize,
    pci_cfg_cap: usize,
    backend: B,
    info: DeviceInfo,
    events: DeviceEvents,
    vm: Arc<VmFd>,
    router: Arc<IrqRouter>,
    queue_gsis: Vec<u32>,
    config_gsi: u32,
    msix: MsixTable,
    notify_base: Option<u64>,
    // Common configuration state.
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    generation: u8,
    msix_config: u16,
    queue_select: u16,
    queues: Vec<QueueConfig>,
}

fn le_value(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

fn put_le(data: &mut [u8], value: u64) {
    let bytes = value.to_le_bytes();
    for (i, d) in data.iter_mut().enumerate() {
        *d = bytes.get(i).copied().unwrap_or(0);
    }
}

/// Replaces the 32-bit half `high` of `cur` with `v`.
fn set_half(cur: u64, high: bool, v: u64) -> u64 {
    let v = v & 0xffff_ffff;
    if high {
        (cur & 0xffff_ffff) | (v << 32)
    } else {
        (cur & !0xffff_ffff) | v
    }
}

impl<B: Backend> VirtioPci<B> {
    /// A transport for `backend`, with BAR 0 proposed at `bar_addr` and
    /// interrupt routes from `router`.
    pub fn new(
        backend: B,
        bar_addr: u32,
        vm: Arc<VmFd>,
        router: Arc<IrqRouter>,
    ) -> anyhow::Result<Self> {
        let info = backend.info().clone();
        let nq = usize::from(info.num_queues);
        let mut kicks = Vec::with_capacity(nq);
        let mut irqs = Vec::with_capacity(nq);
        let mut queue_gsis = Vec::with_capacity(nq);
        for _ in 0..nq {
            kicks.push(EventFd::new(EFD_NONBLOCK)?);
            irqs.push(EventFd::new(EFD_NONBLOCK)?);
            queue_gsis.push(router.allocate()?);
        }
        let events = DeviceEvents {
            kicks,
            irqs,
            config_irq: EventFd::new(EFD_NONBLOCK)?,
        };
        let config_gsi = router.allocate()?;
        let vectors = info.num_queues.saturating_add(1);
        let (config, msix_cap, pci_cfg_cap) = build_config(&info, bar_addr, vectors);
        let max = info.max_queue_size;
        Ok(Self {
            config,
            msix_cap,
            pci_cfg_cap,
            backend,
            info,
            events,
            vm,
            router,
            queue_gsis,
            config_gsi,
            msix: MsixTable::new(vectors),
            notify_base: None,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            generation: 0,
            msix_config: NO_VECTOR,
            queue_select: 0,
            queues: vec![
                QueueConfig {
                    size: max,
                    enabled: false,
                    vector: NO_VECTOR,
                    desc: 0,
                    avail: 0,
                    used: 0,
                };
                nq
            ],
        })
    }

    /// The device failed (its process died, or it asked for a reset): set
    /// DEVICE_NEEDS_RESET and tell the driver with a config interrupt. Not
    /// while the device is reset (status 0): a driver that has just written
    /// 0 waits to read 0 back (Linux polls for ever), and the next
    /// activation fails anyway.
    pub fn device_failed(&mut self) {
        if self.status == 0 {
            return;
        }
        self.status |= status::NEEDS_RESET;
        self.generation = self.generation.wrapping_add(1);
        let _ = self.events.config_irq.write(1);
    }

    /// Whether the driver has the device running (DRIVER_OK, not failed).
    pub fn is_active(&self) -> bool {
        self.status & status::DRIVER_OK != 0 && self.status & status::NEEDS_RESET == 0
    }

    /// Stops a running device between requests and returns its state;
    /// `None` when it is not running (nothing to save).
    pub fn pause(&mut self) -> anyhow::Result<Option<DeviceState>> {
        if !self.is_active() {
            return Ok(None);
        }
        self.backend.pause().map(Some)
    }

    /// Lets a paused device serve its queues again.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        if self.is_active() {
            self.backend.resume()?;
        }
        Ok(())
    }

    /// Puts `backend`, a new instance of the same device, in place of the
    /// current one and, if the driver has the device running, brings it to
    /// where the old one was: `saved`, or without it (the old instance died
    /// unsaved) what the transport knows, the negotiated features and the
    /// queue layouts, with the indices from the used rings. The guest sees
    /// nothing but, at most, an extra interrupt. Returns the old instance;
    /// on failure the device is marked DEVICE_NEEDS_RESET.
    pub fn replace_backend(&mut self, backend: B, saved: Option<DeviceState>) -> anyhow::Result<B> {
        let same = {
            let new = backend.info();
            new.device_type == self.info.device_type
                && new.num_queues == self.info.num_queues
                && new.max_queue_size == self.info.max_queue_size
                && new.features == self.info.features
        };
        let config = backend.info().config.clone();
        let old = std::mem::replace(&mut self.backend, backend);
        if !same {
            self.device_failed();
            anyhow::bail!("the new instance is not the same device");
        }
        if config != self.info.config {
            // A new backend description (virtio-mem after mem-add).
            self.config_changed(config);
        }
        if self.is_active() {
            let recover = saved.is_none();
            let state = saved.unwrap_or_else(|| self.known_state());
            if let Err(e) = self.backend.restore(&state, recover, &self.events) {
                self.device_failed();
                return Err(e.context("restore failed"));
            }
        }
        Ok(old)
    }

    /// The state of the running device as the transport knows it: features
    /// and queue layouts (no indices).
    fn known_state(&self) -> DeviceState {
        let event_idx = self.driver_features & (1 << devices::virtio::VIRTIO_F_RING_EVENT_IDX) != 0;
        DeviceState {
            features: self.driver_features,
            queues: self
                .enabled_layouts()
                .into_iter()
                .map(|layout| QueueState {
                    layout,
                    event_idx,
                    next_avail: 0,
                    next_used: 0,
                })
                .collect(),
            device: Vec::new(),
        }
    }

    /// Where the driver put the rings of each queue it enabled, while the
    /// device runs (empty otherwise).
    pub fn active_queues(&self) -> Vec<QueueLayout> {
        if self.is_active() {
            self.enabled_layouts()
        } else {
            Vec::new()
        }
    }

    fn enabled_layouts(&self) -> Vec<QueueLayout> {
        self.queues
            .iter()
            .enumerate()
            .filter(|(_, q)| q.enabled)
            .filter_map(|(i, q)| {
                Some(QueueLayout {
                    index: u16::try_from(i).ok()?,
                    size: q.size,
                    desc: q.desc,
                    avail: q.avail,
                    used: q.used,
                })
            })
            .collect()
    }

    /// New device configuration from the device.
    pub fn config_changed(&mut self, config: Vec<u8>) {
        self.info.config = config;
        self.generation = self.generation.wrapping_add(1);
        let _ = self.events.config_irq.write(1);
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    fn msix_control(&self) -> u16 {
        self.config.read_u16(self.msix_cap + 2)
    }

    /// Re-resolves every vector and updates the KVM routes.
    fn update_routes(&self) {
        let control = self.msix_control();
        let mut updates: Vec<(u32, &EventFd, u16)> = self
            .queues
            .iter()
            .zip(self.queue_gsis.iter().zip(self.events.irqs.iter()))
            .map(|(q, (gsi, evt))| (*gsi, evt, q.vector))
            .collect();
        updates.push((self.config_gsi, &self.events.config_irq, self.msix_config));
        for (gsi, evt, vector) in updates {
            let msg = self.msix.message(control, vector);
            if let Err(e) = self.router.update(gsi, evt, msg) {
                log::error(&format!("{}: {e}", self.backend.name()));
            }
        }
    }

    fn selected(&mut self) -> Option<&mut QueueConfig> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    fn common_read(&mut self, offset: u64, data: &mut [u8]) {
        let q = self.queues.get(usize::from(self.queue_select)).copied();
        let v: u64 = match offset {
            0x00 => u64::from(self.device_feature_select),
            0x04 => match self.device_feature_select {
                0 => self.info.features & 0xffff_ffff,
                1 => self.info.features >> 32,
                _ => 0,
            },
            0x08 => u64::from(self.driver_feature_select),
            0x0c => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            0x10 => u64::from(self.msix_config),
            0x12 => u64::from(self.info.num_queues),
            0x14 => u64::from(self.status),
            0x15 => u64::from(self.generation),
            0x16 => u64::from(self.queue_select),
            0x18 => q.map_or(0, |q| u64::from(q.size)),
            0x1a => q.map_or(u64::from(NO_VECTOR), |q| u64::from(q.vector)),
            0x1c => q.map_or(0, |q| u64::from(q.enabled)),
            0x1e => u64::from(self.queue_select),
            0x20 => q.map_or(0, |q| q.desc),
            0x24 => q.map_or(0, |q| q.desc >> 32),
            0x28 => q.map_or(0, |q| q.avail),
            0x2c => q.map_or(0, |q| q.avail >> 32),
            0x30 => q.map_or(0, |q| q.used),
            0x34 => q.map_or(0, |q| q.used >> 32),
            _ => 0,
        };
        put_le(data, v);
    }

    fn common_write(&mut self, offset: u64, data: &[u8]) {
        let v = le_value(data);
        let setup_allowed = self.status & status::DRIVER_OK == 0;
        let vectors = self.msix.vectors();
        match offset {
            0x00 => self.device_feature_select = u32::try_from(v & 0xffff_ffff).unwrap_or(0),
            0x08 => self.driver_feature_select = u32::try_from(v & 0xffff_ffff).unwrap_or(0),
            0x0c if self.status & status::FEATURES_OK == 0 => match self.driver_feature_select {
                0 => self.driver_features = set_half(self.driver_features, false, v),
                1 => self.driver_features = set_half(self.driver_features, true, v),
                _ => {}
            },
            0x10 => {
                let vec = u16::try_from(v & 0xffff).unwrap_or(NO_VECTOR);
                self.msix_config = if vec < vectors { vec } else { NO_VECTOR };
                self.update_routes();
            }
            0x14 => self.write_status(u8::try_from(v & 0xff).unwrap_or(0)),
            0x16 => self.queue_select = u16::try_from(v & 0xffff).unwrap_or(0),
            0x18 if setup_allowed => {
                let max = self.info.max_queue_size;
                let size = u16::try_from(v & 0xffff).unwrap_or(0);
                if let Some(q) = self.selected() {
                    // Split queues: a power of two up to the maximum.
                    if size.is_power_of_two() && size <= max {
                        q.size = size;
                    }
                }
            }
            0x1a => {
                let vec = u16::try_from(v & 0xffff).unwrap_or(NO_VECTOR);
                if let Some(q) = self.selected() {
                    q.vector = if vec < vectors { vec } else { NO_VECTOR };
                }
                self.update_routes();
            }
            0x1c if setup_allowed => {
                if let Some(q) = self.selected() {
                    q.enabled = v & 1 == 1;
                }
            }
            0x20..=0x37 if setup_allowed => {
                let high = offset % 8 == 4;
                let field = offset & !7;
                if let Some(q) = self.selected() {
                    match field {
                        0x20 => q.desc = set_half(q.desc, high, v),
                        0x28 => q.avail = set_half(q.avail, high, v),
                        _ => q.used = set_half(q.used, high, v),
                    }
                }
            }
            _ => {}
        }
    }

    fn write_status(&mut self, new: u8) {
        if new == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        let mut new = new | (old & status::NEEDS_RESET);
        if new & status::FEATURES_OK != 0 && old & status::FEATURES_OK == 0 {
            let unknown = self.driver_features & !self.info.features;
            if unknown != 0 {
                log::warn(&format!(
                    "{}: driver asked for features {unknown:#x} the device does not offer",
                    self.backend.name()
                ));
                new &= !status::FEATURES_OK;
            }
        }
        self.status = new;
        if new & status::DRIVER_OK != 0 && old & status::DRIVER_OK == 0 {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let layouts = self.enabled_layouts();
        let activated = self
            .backend
            .activate(self.driver_features, &layouts, &self.events);
        if let Err(e) = &activated {
            log::error(&format!(
                "{}: activation failed: {e:#}",
                self.backend.name()
            ));
            self.device_failed();
        }
        #[cfg(feature = "escape-test")]
        if activated.is_ok() {
            crate::device_host::escape::after_activation(&mut self.backend);
        }
    }

    fn reset(&mut self) {
        if self.status != 0 {
            if let Err(e) = self.backend.reset() {
                log::error(&format!("{}: reset failed: {e:#}", self.backend.name()));
            }
        }
        let max = self.info.max_queue_size;
        for q in &mut self.queues {
            *q = QueueConfig {
                size: max,
                enabled: false,
                vector: NO_VECTOR,
                desc: 0,
                avail: 0,
                used: 0,
            };
        }
        self.status = 0;
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.msix_config = NO_VECTOR;
        self.queue_select = 0;
        self.update_routes();
    }

    fn notify_write(&mut self, offset: u64) {
        // Only reached when the ioeventfd is not in place yet.
        let index = usize::try_from(offset / u64::from(NOTIFY_MULTIPLIER)).unwrap_or(usize::MAX);
        if let Some(k) = self.events.kicks.get(index) {
            let _ = k.write(1);
        }
    }

    fn set_ioeventfds(&mut self, base: Option<u64>) {
        if let Some(old) = self.notify_base.take() {
            for (i, k) in self.events.kicks.iter().enumerate() {
                let addr = IoEventAddress::Mmio(old + NOTIFY + 4 * i as u64);
                let _ = self.vm.unregister_ioevent(k, &addr, NoDatamatch);
            }
        }
        let Some(new) = base else {
            return;
        };
        for (i, k) in self.events.kicks.iter().enumerate() {
            let addr = IoEventAddress::Mmio(new + NOTIFY + 4 * i as u64);
            if let Err(e) = self.vm.register_ioevent(k, &addr, NoDatamatch) {
                log::error(&format!(
                    "{}: cannot register the notify ioeventfd of queue {i}: {e}",
                    self.backend.name()
                ));
            }
        }
        self.notify_base = Some(new);
    }
}

/// The configuration header: IDs, BAR 0, the virtio capabilities and MSI-X.
/// Returns it with the offsets of the MSI-X and PCI-config capabilities.
fn build_config(info: &DeviceInfo, bar_addr: u32, vectors: u16) -> (ConfigSpace, usize, usize) {
    let device_type = u16::try_from(info.device_type).unwrap_or(0);
    let class = match info.device_type {
        1 => [0x02, 0x00, 0x00], // network controller, ethernet
        2 => [0x01, 0x80, 0x00], // mass storage, other
        _ => [0xff, 0x00, 0x00], // unclassified
    };
    let ids = PciIds {
        vendor: VIRTIO_VENDOR,
        device: VIRTIO_DEVICE_BASE + device_type,
        revision: 1,
        class,
        subsystem_vendor: VIRTIO_VENDOR,
        subsystem: 0x40 + device_type,
    };
    let mut c = ConfigSpace::new(&ids);
    c.add_memory_bar(0, BAR_SIZE, bar_addr);
    let cap = |cfg_type: u8, offset: u64, length: u64| -> Vec<u8> {
        // cap_len, cfg_type, bar, id, padding[2], offset, length.
        let mut body = vec![16, cfg_type, 0, 0, 0, 0];
        body.extend_from_slice(&u32::try_from(offset).unwrap_or(0).to_le_bytes());
        body.extend_from_slice(&u32::try_from(length).unwrap_or(0).to_le_bytes());
        body
    };
    c.add_capability(CAP_VENDOR, &cap(CFG_COMMON, COMMON, COMMON_LEN), &[]);
    c.add_capability(CAP_VENDOR, &cap(CFG_ISR, ISR, 1), &[]);
    c.add_capability(CAP_VENDOR, &cap(CFG_DEVICE, DEVICE_CFG, REGION_LEN), &[]);
    let mut notify = cap(CFG_NOTIFY, NOTIFY, REGION_LEN);
    notify[0] = 20;
    notify.extend_from_slice(&NOTIFY_MULTIPLIER.to_le_bytes());
    c.add_capability(CAP_VENDOR, &notify, &[]);
    // VIRTIO_PCI_CAP_PCI_CFG: bar, offset, length and the data window are
    // the driver's to write.
    let mut pci_cfg = cap(CFG_PCI, 0, 0);
    pci_cfg[0] = 20;
    pci_cfg.extend_from_slice(&[0; 4]);
    let mut mask = vec![0, 0, 0xff, 0, 0, 0];
    mask.extend_from_slice(&[0xff; 12]);
    let pci_cfg_cap = c.add_capability(CAP_VENDOR, &pci_cfg, &mask);
    // MSI-X: control (enable, function mask writable), table and PBA in BAR 0.
    let mut m = (vectors - 1).to_le_bytes().to_vec();
    m.extend_from_slice(&u32::try_from(MSIX_TABLE).unwrap_or(0).to_le_bytes());
    m.extend_from_slice(&u32::try_from(MSIX_PBA).unwrap_or(0).to_le_bytes());
    let msix_cap = c.add_capability(CAP_MSIX, &m, &[0, 0xc0]);
    (c, msix_cap, pci_cfg_cap)
}

impl<B: Backend> VirtioPci<B> {
    /// The BAR access behind the PCI-config capability's data window.
    fn pci_cfg_window(&self) -> Option<(u64, usize)> {
        let base = self.pci_cfg_cap;
        let bar = self.config.read_u16(base + 4) & 0xff;
        let offset = u64::from(self.config.read_u32(base + 8));
        let len = usize::try_from(self.config.read_u32(base + 12)).ok()?;
        (bar == 0 && matches!(len, 1 | 2 | 4)).then_some((offset, len))
    }
}

impl<B: Backend + 'static> PciFunction for VirtioPci<B> {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        let window = self.pci_cfg_cap + 16;
        if offset == window {
            if let Some((bar_off, len)) = self.pci_cfg_window() {
                let n = len.min(data.len());
                self.bar_read(0, bar_off, &mut data[..n]);
                return;
            }
        }
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        let window = self.pci_cfg_cap + 16;
        if offset == window {
            if let Some((bar_off, len)) = self.pci_cfg_window() {
                let n = len.min(data.len());
                self.bar_write(0, bar_off, &data[..n]);
                return;
            }
        }
        let before = self.msix_control();
        self.config.write(offset, data);
        if self.msix_control() != before {
            self.update_routes();
        }
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if bar != 0 {
            return;
        }
        match offset {
            o if o < COMMON_LEN => self.common_read(o, data),
            // ISR: interrupts are MSI-X only, so nothing is ever pending.
            o if (ISR..ISR + REGION_LEN).contains(&o) => {}
            o if (DEVICE_CFG..DEVICE_CFG + REGION_LEN).contains(&o) => {
                let start = usize::try_from(o - DEVICE_CFG).unwrap_or(usize::MAX);
                for (i, d) in data.iter_mut().enumerate() {
                    *d = self
                        .info
                        .config
                        .get(start.saturating_add(i))
                        .copied()
                        .unwrap_or(0);
                }
            }
            o if (MSIX_TABLE..MSIX_TABLE + self.msix.size()).contains(&o) => {
                self.msix.read(o - MSIX_TABLE, data);
            }
            _ => {}
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar != 0 {
            return;
        }
        match offset {
            o if o < COMMON_LEN => self.common_write(o, data),
            o if (DEVICE_CFG..DEVICE_CFG + REGION_LEN).contains(&o) => {
                let off = u32::try_from(o - DEVICE_CFG).unwrap_or(u32::MAX);
                if let Err(e) = self.backend.write_config(off, data) {
                    log::warn(&format!("{}: config write: {e:#}", self.backend.name()));
                }
            }
            o if (NOTIFY..NOTIFY + REGION_LEN).contains(&o) => self.notify_write(o - NOTIFY),
            o if (MSIX_TABLE..MSIX_TABLE + self.msix.size()).contains(&o)
                && self.msix.write(o - MSIX_TABLE, data).is_some() =>
            {
                self.update_routes();
            }
            _ => {}
        }
    }

    fn bar_moved(&mut self, bar: usize, _old: Option<u64>, new: Option<u64>) {
        if bar == 0 {
            self.set_ioeventfds(new);
        }
    }
}
