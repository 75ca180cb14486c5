//! The virtio-pci modern transport (virtio 1.2, 4.1) with MSI-X: registers
//! and their state, nothing else.
//!
//! Everything the guest reads is answered here from cached state: the common
//! configuration ([`common`]), the device configuration, the MSI-X table
//! ([`msix`]). Only lifecycle events (DRIVER_OK, reset) and device-config
//! writes reach the device, through its [`Backend`]. Queue notifications
//! never pass through the VMM: each queue's notify address is a KVM
//! ioeventfd on the device's kick eventfd, and each queue's interrupt
//! eventfd is a KVM irqfd routed to the MSI-X vector the guest chose; both
//! are set up through [`crate::irq::Routes`], so the transport runs without KVM in unit
//! tests and fuzz targets. What runs the device, restarts it and restores
//! it is the device host's business, not the transport's.
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

pub mod common;
pub mod msix;

use std::sync::Arc;

use vm_memory::{ByteValued, Le16, Le32};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::irq::{IrqError, Routes};
use crate::log;
use crate::pci::config::{ConfigSpace, PciIds};
use crate::pci::PciFunction;
use common::CommonConfig;
pub use common::{status, CommonState, CommonStateError, Effect, QueueRegs, NO_VECTOR};
use msix::{MsixStateError, MsixTable};

const BAR_SIZE: u32 = 0x8000;
const COMMON: u64 = 0x0000;
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

/// What a device is, as the transport shows it to the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceDescription {
    /// Virtio device ID.
    pub device_type: u32,
    /// Number of virtqueues.
    pub num_queues: u16,
    /// Largest queue size it accepts.
    pub max_queue_size: u16,
    /// Feature bits it offers.
    pub features: u64,
    /// Its configuration space.
    pub config: Vec<u8>,
}

/// Where the driver put a split virtqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLayout {
    /// Queue index.
    pub index: u16,
    /// Number of descriptors.
    pub size: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Available (driver) ring.
    pub avail: u64,
    /// Used (device) ring.
    pub used: u64,
}

/// What the driver set up on a running device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverState {
    /// The features it accepted.
    pub features: u64,
    /// The queues it enabled.
    pub queues: Vec<QueueLayout>,
}

/// The eventfds of one device instance: created by the transport, shared
/// with the device at activation.
pub struct DeviceEvents {
    /// One kick eventfd per queue (KVM ioeventfds on the notify addresses).
    pub kicks: Vec<EventFd>,
    /// One interrupt eventfd per queue (KVM irqfds).
    pub irqs: Vec<EventFd>,
    /// The configuration-change interrupt.
    pub config_irq: EventFd,
}

impl DeviceEvents {
    /// A kick and an interrupt eventfd for each of `queues` queues, and the
    /// configuration interrupt.
    pub fn new(queues: usize) -> std::io::Result<Self> {
        let eventfds = || {
            (0..queues)
                .map(|_| EventFd::new(EFD_NONBLOCK))
                .collect::<std::io::Result<Vec<_>>>()
        };
        Ok(Self {
            kicks: eventfds()?,
            irqs: eventfds()?,
            config_irq: EventFd::new(EFD_NONBLOCK)?,
        })
    }
}

/// Why a device did not do what the transport asked (logged; the device
/// is then marked DEVICE_NEEDS_RESET where that is the right answer).
pub type BackendError = Box<dyn std::error::Error + Send + Sync>;

/// What the transport needs from a device, wherever it runs.
pub trait Backend: Send {
    /// The device's name for logs, e.g. "rng0".
    fn name(&self) -> &str;
    /// What the device is.
    fn description(&self) -> &DeviceDescription;
    /// A driver write to the device configuration.
    fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), BackendError>;
    /// DRIVER_OK: start serving `queues` with `features`.
    fn activate(
        &mut self,
        features: u64,
        queues: &[QueueLayout],
        events: &DeviceEvents,
    ) -> Result<(), BackendError>;
    /// The driver reset the device.
    fn reset(&mut self) -> Result<(), BackendError>;
}

impl<B: Backend + ?Sized> Backend for Box<B> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn description(&self) -> &DeviceDescription {
        (**self).description()
    }
    fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), BackendError> {
        (**self).write_config(offset, data)
    }
    fn activate(
        &mut self,
        features: u64,
        queues: &[QueueLayout],
        events: &DeviceEvents,
    ) -> Result<(), BackendError> {
        (**self).activate(features, queues, events)
    }
    fn reset(&mut self) -> Result<(), BackendError> {
        (**self).reset()
    }
}

/// A PCI class code: base class, subclass, programming interface.
pub type PciClass = [u8; 3];

/// A virtio device on the PCI bus.
pub struct VirtioPci<B: Backend> {
    config: ConfigSpace,
    msix_cap: usize,
    pci_cfg_cap: usize,
    backend: B,
    info: DeviceDescription,
    events: DeviceEvents,
    routes: Arc<dyn Routes>,
    queue_gsis: Vec<u32>,
    config_gsi: u32,
    msix: MsixTable,
    notify_base: Option<u64>,
    common: CommonConfig,
}

/// What a snapshot keeps of a transport, beside its PCI header (which the
/// bus keeps): plain data, untrusted until
/// [`VirtioPci::restore_transport`] has checked it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportState {
    /// The common configuration's registers.
    pub common: CommonState,
    /// The MSI-X table: address low and high, data, control per vector.
    pub msix: Vec<[u32; 4]>,
    /// The device configuration the transport shows the driver.
    pub device_config: Vec<u8>,
}

/// Why a saved transport does not fit the device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportStateError {
    /// The common configuration.
    #[error(transparent)]
    Common(#[from] CommonStateError),
    /// The MSI-X table.
    #[error(transparent)]
    Msix(#[from] MsixStateError),
    /// A device configuration of another length.
    #[error("a device configuration of {saved} bytes saved, the device has {device}")]
    DeviceConfig {
        /// In the state.
        saved: usize,
        /// The device's.
        device: usize,
    },
}

/// Why a new instance cannot replace the current one.
#[derive(Debug, thiserror::Error)]
#[error("the new instance of {0} is not the same device")]
pub struct NotTheSameDevice(pub String);

impl<B: Backend> VirtioPci<B> {
    /// A transport for `backend` of PCI class `class`, with BAR 0 proposed
    /// at `bar_addr` and interrupt routes and notifications from `routes`.
    pub fn new(
        backend: B,
        class: PciClass,
        bar_addr: u32,
        routes: Arc<dyn Routes>,
    ) -> Result<Self, IrqError> {
        let info = backend.description().clone();
        let nq = usize::from(info.num_queues);
        let events = DeviceEvents::new(nq).map_err(IrqError::Eventfd)?;
        let queue_gsis = (0..nq)
            .map(|_| routes.allocate())
            .collect::<Result<Vec<_>, _>>()?;
        let config_gsi = routes.allocate()?;
        let vectors = info.num_queues.saturating_add(1);
        let (config, msix_cap, pci_cfg_cap) = build_config(&info, class, bar_addr, vectors);
        let common =
            CommonConfig::new(info.features, info.num_queues, info.max_queue_size, vectors);
        Ok(Self {
            config,
            msix_cap,
            pci_cfg_cap,
            backend,
            info,
            events,
            routes,
            queue_gsis,
            config_gsi,
            msix: MsixTable::new(vectors),
            notify_base: None,
            common,
        })
    }

    /// The device failed (its process died, or it asked for a reset): set
    /// DEVICE_NEEDS_RESET and tell the driver with a config interrupt. Not
    /// while the device is reset (status 0): a driver that has just written
    /// 0 waits to read 0 back (Linux polls for ever), and the next
    /// activation fails anyway.
    pub fn device_failed(&mut self) {
        if self.common.fail() {
            let _ = self.events.config_irq.write(1);
        }
    }

    /// Whether the driver has the device running (DRIVER_OK, not failed).
    pub fn is_active(&self) -> bool {
        self.common.is_active()
    }

    /// What the driver set up, while the device runs.
    pub fn driver_state(&self) -> Option<DriverState> {
        self.is_active().then(|| DriverState {
            features: self.common.driver_features(),
            queues: self.common.enabled_queues(),
        })
    }

    /// The eventfds the device instance serves its queues with.
    pub fn events(&self) -> &DeviceEvents {
        &self.events
    }

    /// The backend and the eventfds, together (a restore needs both).
    pub fn backend_and_events(&mut self) -> (&mut B, &DeviceEvents) {
        (&mut self.backend, &self.events)
    }

    /// Puts `backend`, a new instance of the same device, in place of the
    /// current one and returns the old one. An instance that describes
    /// another device (type, queues, features) is refused, and the device
    /// marked DEVICE_NEEDS_RESET; one whose configuration moved on (virtio-
    /// mem after mem-add) is announced to the driver.
    pub fn swap_backend(&mut self, backend: B) -> Result<B, NotTheSameDevice> {
        let new = backend.description().clone();
        let same = new.device_type == self.info.device_type
            && new.num_queues == self.info.num_queues
            && new.max_queue_size == self.info.max_queue_size
            && new.features == self.info.features;
        let old = std::mem::replace(&mut self.backend, backend);
        if !same {
            self.device_failed();
            return Err(NotTheSameDevice(self.backend.name().to_owned()));
        }
        if new.config != self.info.config {
            self.config_changed(new.config);
        }
        Ok(old)
    }

    /// The transport's state: registers, MSI-X table, device
    /// configuration.
    pub fn save_transport(&self) -> TransportState {
        TransportState {
            common: self.common.save(),
            msix: self.msix.save(),
            device_config: self.info.config.clone(),
        }
    }

    /// Takes a saved transport state (after the bus restored the PCI
    /// header, whose MSI-X control it reads) and routes every vector as
    /// the state says. The device is not activated: a device that was
    /// running is restored from its own saved state by whoever runs it.
    /// Refused whole, with nothing changed, if it cannot be this device's.
    pub fn restore_transport(&mut self, s: &TransportState) -> Result<(), TransportStateError> {
        if s.device_config.len() != self.info.config.len() {
            return Err(TransportStateError::DeviceConfig {
                saved: s.device_config.len(),
                device: self.info.config.len(),
            });
        }
        let mut common = self.common.clone();
        common.restore(&s.common)?;
        self.msix.restore(&s.msix)?;
        self.common = common;
        self.info.config.clone_from(&s.device_config);
        self.update_routes();
        Ok(())
    }

    /// New device configuration from the device.
    pub fn config_changed(&mut self, config: Vec<u8>) {
        self.info.config = config;
        self.common.config_changed();
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

    /// Re-resolves every vector and updates the routes.
    fn update_routes(&self) {
        let control = self.msix_control();
        let vectors = self.common.queue_vectors();
        let mut updates: Vec<(u32, &EventFd, u16)> = vectors
            .iter()
            .zip(self.queue_gsis.iter().zip(self.events.irqs.iter()))
            .map(|(v, (gsi, evt))| (*gsi, evt, *v))
            .collect();
        updates.push((
            self.config_gsi,
            &self.events.config_irq,
            self.common.config_vector(),
        ));
        for (gsi, evt, vector) in updates {
            let msg = self.msix.message(control, vector);
            if let Err(e) = self.routes.update(gsi, evt, msg) {
                log::error(&format!("{}: {e}", self.backend.name()));
            }
        }
    }

    fn common_write(&mut self, offset: u64, data: &[u8]) {
        match self.common.write(offset, data) {
            Effect::None => {}
            Effect::Routes => self.update_routes(),
            Effect::Activate => self.activate(),
            Effect::Reset => self.reset(),
            Effect::UnofferedFeatures(unknown) => log::warn(&format!(
                "{}: driver asked for features {unknown:#x} the device does not offer",
                self.backend.name()
            )),
        }
    }

    fn activate(&mut self) {
        let layouts = self.common.enabled_queues();
        let features = self.common.driver_features();
        if let Err(e) = self.backend.activate(features, &layouts, &self.events) {
            log::error(&format!("{}: activation failed: {e}", self.backend.name()));
            self.device_failed();
        }
    }

    /// The driver wrote 0: the registers are reset already; reset the
    /// device (whatever state it was in) and drop every route.
    fn reset(&mut self) {
        if let Err(e) = self.backend.reset() {
            log::error(&format!("{}: reset failed: {e}", self.backend.name()));
        }
        self.update_routes();
    }

    fn notify_write(&mut self, offset: u64) {
        // Only reached when the ioeventfd is not in place yet.
        let index = usize::try_from(offset / u64::from(NOTIFY_MULTIPLIER)).unwrap_or(usize::MAX);
        if let Some(k) = self.events.kicks.get(index) {
            let _ = k.write(1);
        }
    }

    fn notify_addr(base: u64, queue: usize) -> u64 {
        let queue = u64::try_from(queue).unwrap_or(u64::MAX);
        base + NOTIFY + u64::from(NOTIFY_MULTIPLIER) * queue
    }

    fn set_ioeventfds(&mut self, base: Option<u64>) {
        if let Some(old) = self.notify_base.take() {
            for (i, k) in self.events.kicks.iter().enumerate() {
                self.routes.remove_notify(k, Self::notify_addr(old, i));
            }
        }
        let Some(new) = base else {
            return;
        };
        for (i, k) in self.events.kicks.iter().enumerate() {
            if let Err(e) = self.routes.add_notify(k, Self::notify_addr(new, i)) {
                log::error(&format!(
                    "{}: cannot register the notify ioeventfd of queue {i}: {e}",
                    self.backend.name()
                ));
            }
        }
        self.notify_base = Some(new);
    }

    /// The BAR access behind the PCI-config capability's data window.
    fn pci_cfg_window(&self) -> Option<(u64, usize)> {
        let base = self.pci_cfg_cap;
        let bar = self.config.read_u16(base + 4) & 0xff;
        let offset = u64::from(self.config.read_u32(base + 8));
        let len = usize::try_from(self.config.read_u32(base + 12)).ok()?;
        (bar == 0 && matches!(len, 1 | 2 | 4)).then_some((offset, len))
    }
}

/// `struct virtio_pci_cap` (virtio 1.2, 4.1.4).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct VirtioPciCap {
    cap_vndr: u8,
    cap_next: u8,
    cap_len: u8,
    cfg_type: u8,
    bar: u8,
    id: u8,
    padding: [u8; 2],
    offset: Le32,
    length: Le32,
}

/// `struct virtio_pci_notify_cap`: the cap and the notify multiplier.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NotifyCap {
    cap: VirtioPciCap,
    notify_off_multiplier: Le32,
}

/// `struct virtio_pci_cfg_cap`: the cap and its data window.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PciCfgCap {
    cap: VirtioPciCap,
    pci_cfg_data: [u8; 4],
}

/// The MSI-X capability (PCI 3.0, 6.8.2).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct MsixCap {
    cap_id: u8,
    next: u8,
    message_control: Le16,
    table: Le32,
    pba: Le32,
}

// SAFETY: plain repr(C) structs of integers and byte arrays whose fields
// sit at their natural alignment, so there is no padding (the sizes are
// checked below); every bit pattern is a valid value.
unsafe impl ByteValued for VirtioPciCap {}
// SAFETY: as above.
unsafe impl ByteValued for NotifyCap {}
// SAFETY: as above.
unsafe impl ByteValued for PciCfgCap {}
// SAFETY: as above.
unsafe impl ByteValued for MsixCap {}
const _: () = assert!(std::mem::size_of::<VirtioPciCap>() == 16);
const _: () = assert!(std::mem::size_of::<NotifyCap>() == 20);
const _: () = assert!(std::mem::size_of::<PciCfgCap>() == 20);
const _: () = assert!(std::mem::size_of::<MsixCap>() == 12);

/// What a capability adds to the header: its bytes after the ID and next
/// pointer, which the configuration space fills in.
fn body<T: ByteValued>(cap: &T) -> &[u8] {
    cap.as_slice().get(2..).unwrap_or_default()
}

/// The capability of `cfg_type` for `length` bytes at `offset` of BAR 0,
/// `cap_len` bytes long in all.
fn virtio_cap(cap_len: usize, cfg_type: u8, offset: u64, length: u64) -> VirtioPciCap {
    VirtioPciCap {
        cap_len: u8::try_from(cap_len).unwrap_or(0),
        cfg_type,
        offset: Le32::from(u32::try_from(offset).unwrap_or(0)),
        length: Le32::from(u32::try_from(length).unwrap_or(0)),
        ..VirtioPciCap::default()
    }
}

/// The configuration header: IDs, BAR 0, the virtio capabilities and MSI-X.
/// Returns it with the offsets of the MSI-X and PCI-config capabilities.
fn build_config(
    info: &DeviceDescription,
    class: PciClass,
    bar_addr: u32,
    vectors: u16,
) -> (ConfigSpace, usize, usize) {
    let device_type = u16::try_from(info.device_type).unwrap_or(0);
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
    let plain = std::mem::size_of::<VirtioPciCap>();
    for (cfg_type, offset, length) in [
        (CFG_COMMON, COMMON, common::LEN),
        (CFG_ISR, ISR, 1),
        (CFG_DEVICE, DEVICE_CFG, REGION_LEN),
    ] {
        c.add_capability(
            CAP_VENDOR,
            body(&virtio_cap(plain, cfg_type, offset, length)),
            &[],
        );
    }
    let notify = NotifyCap {
        cap: virtio_cap(
            std::mem::size_of::<NotifyCap>(),
            CFG_NOTIFY,
            NOTIFY,
            REGION_LEN,
        ),
        notify_off_multiplier: Le32::from(NOTIFY_MULTIPLIER),
    };
    c.add_capability(CAP_VENDOR, body(&notify), &[]);
    // VIRTIO_PCI_CAP_PCI_CFG: bar, offset, length and the data window are
    // the driver's to write.
    let pci_cfg = PciCfgCap {
        cap: virtio_cap(std::mem::size_of::<PciCfgCap>(), CFG_PCI, 0, 0),
        ..PciCfgCap::default()
    };
    let mut mask = vec![0, 0, 0xff, 0, 0, 0];
    mask.extend_from_slice(&[0xff; 12]);
    let pci_cfg_cap = c.add_capability(CAP_VENDOR, body(&pci_cfg), &mask);
    // MSI-X: control (enable, function mask writable), table and PBA in BAR 0.
    let m = MsixCap {
        message_control: Le16::from(vectors - 1),
        table: Le32::from(u32::try_from(MSIX_TABLE).unwrap_or(0)),
        pba: Le32::from(u32::try_from(MSIX_PBA).unwrap_or(0)),
        ..MsixCap::default()
    };
    let msix_cap = c.add_capability(CAP_MSIX, body(&m), &[0, 0xc0]);
    (c, msix_cap, pci_cfg_cap)
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
            o if o < common::LEN => self.common.read(o, data),
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
            o if o < common::LEN => self.common_write(o, data),
            o if (DEVICE_CFG..DEVICE_CFG + REGION_LEN).contains(&o) => {
                let off = u32::try_from(o - DEVICE_CFG).unwrap_or(u32::MAX);
                if let Err(e) = self.backend.write_config(off, data) {
                    log::warn(&format!("{}: config write: {e}", self.backend.name()));
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

#[cfg(test)]
mod tests;
