//! The common configuration structure of virtio-pci (virtio 1.2, 4.1.4.3)
//! as a state machine: feature negotiation, queue setup and the device
//! status, with the rules the driver must follow enforced here. Pure
//! logic: what a register access changes, and what the transport must do
//! about it (an [`Effect`]), with no device, interrupt or KVM behind it.

use std::mem::offset_of;

use vm_memory::{Le16, Le32, Le64};

use super::QueueLayout;

/// `struct virtio_pci_common_cfg`, to name the offsets of its fields.
#[repr(C)]
#[allow(dead_code)] // Only its field offsets are used.
struct Layout {
    device_feature_select: Le32,
    device_feature: Le32,
    driver_feature_select: Le32,
    driver_feature: Le32,
    config_msix_vector: Le16,
    num_queues: Le16,
    device_status: u8,
    config_generation: u8,
    queue_select: Le16,
    queue_size: Le16,
    queue_msix_vector: Le16,
    queue_enable: Le16,
    queue_notify_off: Le16,
    queue_desc: Le64,
    queue_driver: Le64,
    queue_device: Le64,
}

/// Bytes of the structure.
pub const LEN: u64 = std::mem::size_of::<Layout>() as u64;

const fn at(offset: usize) -> u64 {
    offset as u64
}
const DEVICE_FEATURE_SELECT: u64 = at(offset_of!(Layout, device_feature_select));
const DEVICE_FEATURE: u64 = at(offset_of!(Layout, device_feature));
const DRIVER_FEATURE_SELECT: u64 = at(offset_of!(Layout, driver_feature_select));
const DRIVER_FEATURE: u64 = at(offset_of!(Layout, driver_feature));
const CONFIG_MSIX_VECTOR: u64 = at(offset_of!(Layout, config_msix_vector));
const NUM_QUEUES: u64 = at(offset_of!(Layout, num_queues));
const DEVICE_STATUS: u64 = at(offset_of!(Layout, device_status));
const CONFIG_GENERATION: u64 = at(offset_of!(Layout, config_generation));
const QUEUE_SELECT: u64 = at(offset_of!(Layout, queue_select));
const QUEUE_SIZE: u64 = at(offset_of!(Layout, queue_size));
const QUEUE_MSIX_VECTOR: u64 = at(offset_of!(Layout, queue_msix_vector));
const QUEUE_ENABLE: u64 = at(offset_of!(Layout, queue_enable));
const QUEUE_NOTIFY_OFF: u64 = at(offset_of!(Layout, queue_notify_off));
const QUEUE_DESC: u64 = at(offset_of!(Layout, queue_desc));
const QUEUE_DRIVER: u64 = at(offset_of!(Layout, queue_driver));
const QUEUE_DEVICE: u64 = at(offset_of!(Layout, queue_device));
const _: () = assert!(LEN == 0x38 && QUEUE_DESC == 0x20 && QUEUE_DEVICE == 0x30);

/// "No vector" in the vector registers.
pub const NO_VECTOR: u16 = 0xffff;

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    /// The driver found the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The driver knows how to drive it.
    pub const DRIVER: u8 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u8 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u8 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const NEEDS_RESET: u8 = 0x40;
}

/// What the transport must do after a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing beyond the register change.
    None,
    /// An interrupt vector changed: re-resolve the routes.
    Routes,
    /// The driver set DRIVER_OK: activate the device.
    Activate,
    /// The driver wrote 0 to the status of a started device: reset the
    /// device and re-resolve the routes (the registers are reset already).
    Reset,
    /// The driver asked for features the device does not offer; FEATURES_OK
    /// was refused.
    UnofferedFeatures(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Queue {
    size: u16,
    enabled: bool,
    vector: u16,
    desc: u64,
    avail: u64,
    used: u64,
}

impl Queue {
    fn reset(max: u16) -> Self {
        Self {
            size: max,
            enabled: false,
            vector: NO_VECTOR,
            desc: 0,
            avail: 0,
            used: 0,
        }
    }
}

/// One queue's registers as plain data (a snapshot's; see
/// [`CommonState`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueRegs {
    /// Number of descriptors.
    pub size: u16,
    /// queue_enable.
    pub enabled: bool,
    /// Its MSI-X vector.
    pub vector: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Available (driver) ring.
    pub avail: u64,
    /// Used (device) ring.
    pub used: u64,
}

/// The registers the driver set, as plain data: what a snapshot keeps of
/// the common configuration. Untrusted: it becomes live state only through
/// [`CommonConfig::restore`], which checks it against the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommonState {
    /// device_feature_select.
    pub device_feature_select: u32,
    /// driver_feature_select.
    pub driver_feature_select: u32,
    /// The features the driver wrote.
    pub driver_features: u64,
    /// device_status.
    pub status: u8,
    /// config_generation.
    pub generation: u8,
    /// The configuration-change vector.
    pub msix_config: u16,
    /// queue_select.
    pub queue_select: u16,
    /// Every queue's registers, by index.
    pub queues: Vec<QueueRegs>,
}

/// Why a saved common configuration does not fit the device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommonStateError {
    /// Another number of queues.
    #[error("{saved} queues saved, the device has {device}")]
    Queues {
        /// In the state.
        saved: usize,
        /// The device's.
        device: usize,
    },
    /// A queue size the driver could not have set.
    #[error("queue {index}: size {size} (a power of two up to {max})")]
    QueueSize {
        /// The queue.
        index: usize,
        /// Its size.
        size: u16,
        /// The device's maximum.
        max: u16,
    },
    /// A vector past the MSI-X table.
    #[error("vector {0} past the device's {1} vectors")]
    Vector(u16, u16),
    /// Status bits a driver cannot set, or in an order it cannot reach.
    #[error("device status {0:#x} cannot be reached")]
    Status(u8),
    /// Features accepted that the device does not offer.
    #[error("features {0:#x} accepted that the device does not offer")]
    Features(u64),
}

/// The registers of one device's common configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommonConfig {
    offered: u64,
    max_queue_size: u16,
    vectors: u16,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    generation: u8,
    msix_config: u16,
    queue_select: u16,
    queues: Vec<Queue>,
}

fn le_value(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    for (d, s) in b.iter_mut().zip(data) {
        *d = *s;
    }
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

fn low32(v: u64) -> u32 {
    u32::try_from(v & 0xffff_ffff).unwrap_or(0)
}

fn low16(v: u64) -> u16 {
    u16::try_from(v & 0xffff).unwrap_or(0)
}

impl CommonConfig {
    /// A device offering `offered` features with `queues` queues of at most
    /// `max_queue_size` entries and `vectors` MSI-X vectors, as after reset.
    pub fn new(offered: u64, queues: u16, max_queue_size: u16, vectors: u16) -> Self {
        Self {
            offered,
            max_queue_size,
            vectors,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            generation: 0,
            msix_config: NO_VECTOR,
            queue_select: 0,
            queues: vec![Queue::reset(max_queue_size); usize::from(queues)],
        }
    }

    /// The device status.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// The features the driver accepted.
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// Whether the driver has the device running (DRIVER_OK, not failed).
    pub fn is_active(&self) -> bool {
        self.status & status::DRIVER_OK != 0 && self.status & status::NEEDS_RESET == 0
    }

    /// Sets DEVICE_NEEDS_RESET, unless the device is reset (status 0: a
    /// driver that has just written 0 waits to read 0 back). Returns
    /// whether it was set, and the driver is due a configuration interrupt.
    pub fn fail(&mut self) -> bool {
        if self.status == 0 {
            return false;
        }
        self.status |= status::NEEDS_RESET;
        self.generation = self.generation.wrapping_add(1);
        true
    }

    /// The device configuration changed: a new generation.
    pub fn config_changed(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    /// The configuration-change vector.
    pub fn config_vector(&self) -> u16 {
        self.msix_config
    }

    /// Each queue's vector, by queue index.
    pub fn queue_vectors(&self) -> Vec<u16> {
        self.queues.iter().map(|q| q.vector).collect()
    }

    /// Where the driver put each queue it enabled.
    pub fn enabled_queues(&self) -> Vec<QueueLayout> {
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

    /// A read of `data.len()` bytes at `offset`; unknown offsets read 0.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let q = self.queues.get(usize::from(self.queue_select));
        let half = |v: u64, select: u32| match select {
            0 => v & 0xffff_ffff,
            1 => v >> 32,
            _ => 0,
        };
        let v: u64 = match offset {
            DEVICE_FEATURE_SELECT => u64::from(self.device_feature_select),
            DEVICE_FEATURE => half(self.offered, self.device_feature_select),
            DRIVER_FEATURE_SELECT => u64::from(self.driver_feature_select),
            DRIVER_FEATURE => half(self.driver_features, self.driver_feature_select),
            CONFIG_MSIX_VECTOR => u64::from(self.msix_config),
            NUM_QUEUES => u64::try_from(self.queues.len()).unwrap_or(0),
            DEVICE_STATUS => u64::from(self.status),
            CONFIG_GENERATION => u64::from(self.generation),
            QUEUE_SELECT => u64::from(self.queue_select),
            QUEUE_SIZE => q.map_or(0, |q| u64::from(q.size)),
            QUEUE_MSIX_VECTOR => q.map_or(u64::from(NO_VECTOR), |q| u64::from(q.vector)),
            QUEUE_ENABLE => q.map_or(0, |q| u64::from(q.enabled)),
            // Each queue notifies at its own index (times the multiplier).
            QUEUE_NOTIFY_OFF => u64::from(self.queue_select),
            o if (QUEUE_DESC..LEN).contains(&o) => {
                let field = q.map_or(0, |q| match o & !7 {
                    QUEUE_DESC => q.desc,
                    QUEUE_DRIVER => q.avail,
                    _ => q.used,
                });
                if o % 8 == 4 {
                    field >> 32
                } else {
                    field
                }
            }
            _ => 0,
        };
        put_le(data, v);
    }

    /// A write of `data` at `offset`. Queue setup is refused once the
    /// driver set DRIVER_OK, features once it set FEATURES_OK (or DRIVER_OK),
    /// DRIVER_OK without FEATURES_OK is not taken; sizes must
    /// be powers of two up to the maximum; vectors past the table read back
    /// as NO_VECTOR. A 64-bit queue address takes one 64-bit write or two
    /// 32-bit ones (4.1.3.1).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Effect {
        let v = le_value(data);
        let setup_allowed = self.status & status::DRIVER_OK == 0;
        let vector = |v: u64, vectors: u16| match low16(v) {
            n if n < vectors => n,
            _ => NO_VECTOR,
        };
        match offset {
            DEVICE_FEATURE_SELECT => self.device_feature_select = low32(v),
            DRIVER_FEATURE_SELECT => self.driver_feature_select = low32(v),
            DRIVER_FEATURE if self.status & (status::FEATURES_OK | status::DRIVER_OK) == 0 => {
                match self.driver_feature_select {
                    0 => self.driver_features = set_half(self.driver_features, false, v),
                    1 => self.driver_features = set_half(self.driver_features, true, v),
                    _ => {}
                }
            }
            CONFIG_MSIX_VECTOR => {
                self.msix_config = vector(v, self.vectors);
                return Effect::Routes;
            }
            DEVICE_STATUS => return self.write_status(v.to_le_bytes()[0]),
            QUEUE_SELECT => self.queue_select = low16(v),
            QUEUE_SIZE if setup_allowed => {
                let (max, size) = (self.max_queue_size, low16(v));
                if let Some(q) = self.selected() {
                    if size.is_power_of_two() && size <= max {
                        q.size = size;
                    }
                }
            }
            QUEUE_MSIX_VECTOR => {
                let vec = vector(v, self.vectors);
                if let Some(q) = self.selected() {
                    q.vector = vec;
                }
                return Effect::Routes;
            }
            QUEUE_ENABLE if setup_allowed => {
                if let Some(q) = self.selected() {
                    q.enabled = v & 1 == 1;
                }
            }
            o if setup_allowed && (QUEUE_DESC..LEN).contains(&o) => {
                let high = o % 8 == 4;
                let whole = !high && data.len() == 8;
                let set = |cur: u64| if whole { v } else { set_half(cur, high, v) };
                if let Some(q) = self.selected() {
                    match o & !7 {
                        QUEUE_DESC => q.desc = set(q.desc),
                        QUEUE_DRIVER => q.avail = set(q.avail),
                        _ => q.used = set(q.used),
                    }
                }
            }
            _ => {}
        }
        Effect::None
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    fn write_status(&mut self, new: u8) -> Effect {
        if new == 0 {
            let was = self.status;
            self.reset();
            // A device never started needs no reset, only its routes dropped.
            return if was == 0 {
                Effect::Routes
            } else {
                Effect::Reset
            };
        }
        let old = self.status;
        // Only a reset clears status bits (2.1.1: the driver never clears
        // one); DEVICE_NEEDS_RESET is the device's.
        let mut new = new | old;
        let mut effect = Effect::None;
        if new & status::FEATURES_OK != 0 && old & status::FEATURES_OK == 0 {
            let unknown = self.driver_features & !self.offered;
            if unknown != 0 {
                new &= !status::FEATURES_OK;
                effect = Effect::UnofferedFeatures(unknown);
            }
        }
        // A device starts only on features it accepted (3.1.1: FEATURES_OK
        // comes before DRIVER_OK).
        if new & status::FEATURES_OK == 0 {
            new &= !status::DRIVER_OK;
        }
        self.status = new;
        if new & status::DRIVER_OK != 0 && old & status::DRIVER_OK == 0 {
            effect = Effect::Activate;
        }
        effect
    }

    /// The registers as plain data.
    pub fn save(&self) -> CommonState {
        CommonState {
            device_feature_select: self.device_feature_select,
            driver_feature_select: self.driver_feature_select,
            driver_features: self.driver_features,
            status: self.status,
            generation: self.generation,
            msix_config: self.msix_config,
            queue_select: self.queue_select,
            queues: self
                .queues
                .iter()
                .map(|q| QueueRegs {
                    size: q.size,
                    enabled: q.enabled,
                    vector: q.vector,
                    desc: q.desc,
                    avail: q.avail,
                    used: q.used,
                })
                .collect(),
        }
    }

    /// Takes `s` as the registers, if a driver of this device could have
    /// set them: as many queues, sizes that are powers of two up to the
    /// maximum, vectors inside the table, only status bits a driver (or a
    /// failed device) sets, DRIVER_OK only after FEATURES_OK, and accepted
    /// features the device offers. Otherwise nothing changes.
    pub fn restore(&mut self, s: &CommonState) -> Result<(), CommonStateError> {
        if s.queues.len() != self.queues.len() {
            return Err(CommonStateError::Queues {
                saved: s.queues.len(),
                device: self.queues.len(),
            });
        }
        let vector_ok = |v: u16| v == NO_VECTOR || v < self.vectors;
        for (index, q) in s.queues.iter().enumerate() {
            if !q.size.is_power_of_two() || q.size > self.max_queue_size {
                return Err(CommonStateError::QueueSize {
                    index,
                    size: q.size,
                    max: self.max_queue_size,
                });
            }
            if !vector_ok(q.vector) {
                return Err(CommonStateError::Vector(q.vector, self.vectors));
            }
        }
        if !vector_ok(s.msix_config) {
            return Err(CommonStateError::Vector(s.msix_config, self.vectors));
        }
        let known = status::ACKNOWLEDGE
            | status::DRIVER
            | status::FEATURES_OK
            | status::DRIVER_OK
            | status::NEEDS_RESET;
        let ok_without_features = s.status & status::DRIVER_OK == 0;
        let features_ok = s.status & status::FEATURES_OK != 0;
        if s.status & !known != 0 || !(ok_without_features || features_ok) {
            return Err(CommonStateError::Status(s.status));
        }
        let unknown = s.driver_features & !self.offered;
        if features_ok && unknown != 0 {
            return Err(CommonStateError::Features(unknown));
        }
        self.device_feature_select = s.device_feature_select;
        self.driver_feature_select = s.driver_feature_select;
        self.driver_features = s.driver_features;
        self.status = s.status;
        self.generation = s.generation;
        self.msix_config = s.msix_config;
        self.queue_select = s.queue_select;
        for (q, r) in self.queues.iter_mut().zip(&s.queues) {
            *q = Queue {
                size: r.size,
                enabled: r.enabled,
                vector: r.vector,
                desc: r.desc,
                avail: r.avail,
                used: r.used,
            };
        }
        Ok(())
    }

    /// Back to the state after power-on (status 0), keeping the generation.
    fn reset(&mut self) {
        let generation = self.generation;
        let queues = u16::try_from(self.queues.len()).unwrap_or(0);
        *self = Self::new(self.offered, queues, self.max_queue_size, self.vectors);
        self.generation = generation;
    }
}

#[cfg(test)]
mod tests;
