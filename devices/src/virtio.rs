//! What every virtio device model provides (virtio 1.2, sections 2 and 5),
//! independent of the transport and of where the model runs.

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::Bytes;

/// Guest memory as device models see it.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

/// Feature bit: the device conforms to virtio 1.x (6).
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// Feature bit: used/available event indices (2.7.7).
pub const VIRTIO_F_RING_EVENT_IDX: u32 = 29;
/// Feature bit: indirect descriptors (2.7.5.3).
pub const VIRTIO_F_RING_INDIRECT_DESC: u32 = 28;
/// Feature bit: the device is behind an IOMMU (never offered).
pub const VIRTIO_F_ACCESS_PLATFORM: u32 = 33;

/// Device ID of a network card.
pub const DEVICE_ID_NET: u32 = 1;
/// Device ID of a block device.
pub const DEVICE_ID_BLOCK: u32 = 2;
/// Device ID of a console.
pub const DEVICE_ID_CONSOLE: u32 = 3;
/// Device ID of an entropy source.
pub const DEVICE_ID_RNG: u32 = 4;

/// A backend fd a device waits on, and the queue to process when it is
/// ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendEvent {
    /// The fd.
    pub fd: std::os::fd::RawFd,
    /// Wait for room to write rather than for data to read.
    pub writable: bool,
    /// The queue to process.
    pub queue: usize,
}

impl BackendEvent {
    /// Data to read on `fd` makes `queue` worth processing.
    pub fn readable(fd: std::os::fd::RawFd, queue: usize) -> Self {
        Self {
            fd,
            writable: false,
            queue,
        }
    }

    /// Room to write on `fd` makes `queue` worth processing.
    pub fn writable(fd: std::os::fd::RawFd, queue: usize) -> Self {
        Self {
            fd,
            writable: true,
            queue,
        }
    }
}

/// The transport features every skvm device offers: virtio 1.x, event
/// indices and indirect descriptors (virtio-queue handles both).
pub const TRANSPORT_FEATURES: u64 =
    (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_F_RING_EVENT_IDX) | (1 << VIRTIO_F_RING_INDIRECT_DESC);

/// Why a device refused something or stopped serving a queue.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The driver asked for features the device did not offer.
    #[error("features {0:#x} were not offered")]
    UnofferedFeatures(u64),
    /// The device has no writable configuration there.
    #[error("configuration is read-only")]
    ReadOnlyConfig,
    /// No such queue.
    #[error("no queue {0}")]
    NoQueue(usize),
    /// The queue's rings cannot be used (outside memory, bad indices).
    #[error("queue unusable: {0}")]
    Queue(virtio_queue::Error),
    /// The device refused a request, with why.
    #[error("{0}")]
    Refused(String),
}

/// What one call of [`VirtioDevice::process_queue`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Processed {
    /// The driver must be interrupted.
    pub notify: bool,
    /// The call stopped at its budget with buffers left: call it again
    /// (the driver will not kick for them).
    pub pending: bool,
    /// Another queue has work now (vsock's answers to what the driver
    /// sent wait for the receive queue): process it as if kicked.
    pub wake: Option<usize>,
}

/// The next available chain of a queue the device fills as data comes (a
/// receive queue), whose notifications the caller disabled. When there is
/// none it asks the driver for a kick, and takes a chain that came
/// meanwhile; `None`: the driver has no buffers (notifications are on, so
/// it kicks when it has).
pub fn next_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemory,
) -> Result<Option<DescriptorChain<&'m GuestMemory>>, DeviceError> {
    loop {
        if let Some(chain) = queue.iter(mem).map_err(DeviceError::Queue)?.next() {
            return Ok(Some(chain));
        }
        if !queue.enable_notification(mem).map_err(DeviceError::Queue)? {
            return Ok(None);
        }
        queue
            .disable_notification(mem)
            .map_err(DeviceError::Queue)?;
    }
}

/// Ends a round of a queue the device fills as data comes, in which it
/// used `used` chains: notifications back on (unless the driver ran out of
/// buffers, `starved`, which left them on), and whether the driver must be
/// interrupted.
pub fn end_fill(
    queue: &mut Queue,
    mem: &GuestMemory,
    used: usize,
    starved: bool,
    pending: bool,
) -> Result<Processed, DeviceError> {
    if !starved {
        queue.enable_notification(mem).map_err(DeviceError::Queue)?;
    }
    let notify = used > 0 && queue.needs_notification(mem).map_err(DeviceError::Queue)?;
    Ok(Processed {
        notify,
        pending,
        wake: None,
    })
}

/// Serves the available chains of `queue` with `serve`, which returns each
/// chain's used length. At most a few rounds of the ring per call, so that
/// a guest cannot keep the device from its control channel; notifications
/// are suppressed meanwhile and re-enabled at the end (event index or
/// flags, whichever was negotiated).
pub fn serve_queue(
    queue: &mut Queue,
    mem: &GuestMemory,
    mut serve: impl FnMut(DescriptorChain<&GuestMemory>) -> u32,
) -> Result<Processed, DeviceError> {
    let budget = usize::from(queue.size()).saturating_mul(4);
    let mut served = 0usize;
    let mut pending = false;
    queue
        .disable_notification(mem)
        .map_err(DeviceError::Queue)?;
    loop {
        while served < budget {
            let chain = queue.iter(mem).map_err(DeviceError::Queue)?.next();
            let Some(chain) = chain else {
                break;
            };
            let head = chain.head_index();
            let len = serve(chain);
            queue.add_used(mem, head, len).map_err(DeviceError::Queue)?;
            served += 1;
        }
        if served >= budget {
            pending = true;
            break;
        }
        // Re-enable notifications; if buffers came meanwhile, go on.
        if !queue.enable_notification(mem).map_err(DeviceError::Queue)? {
            break;
        }
    }
    let notify = served > 0 && queue.needs_notification(mem).map_err(DeviceError::Queue)?;
    Ok(Processed {
        notify,
        pending,
        wake: None,
    })
}

/// Most descriptors of one chain that [`gather`] and [`scatter`] look at.
pub const MAX_DESCRIPTORS: usize = 64;

/// Appends the readable descriptors of `chain` to `out`; false if the
/// chain is cut short, takes `out` past `max` bytes, has more than
/// [`MAX_DESCRIPTORS`] or a writable descriptor, or leaves guest memory.
pub fn gather(
    chain: DescriptorChain<&GuestMemory>,
    mem: &GuestMemory,
    out: &mut Vec<u8>,
    max: usize,
) -> bool {
    let mut cut = false;
    for (i, desc) in chain.enumerate() {
        cut = desc.has_next();
        let Ok(n) = usize::try_from(desc.len()) else {
            return false;
        };
        if i >= MAX_DESCRIPTORS || desc.is_write_only() || out.len() + n > max {
            return false;
        }
        let start = out.len();
        out.resize(start + n, 0);
        let Some(dst) = out.get_mut(start..) else {
            return false;
        };
        if mem.read_slice(dst, desc.addr()).is_err() {
            return false;
        }
    }
    !cut
}

/// Copies the start of `data` into the writable descriptors of `chain`;
/// how many bytes went in, or `None` if the chain is cut short, has more
/// than [`MAX_DESCRIPTORS`] or a readable descriptor, or leaves guest
/// memory.
pub fn scatter(
    chain: DescriptorChain<&GuestMemory>,
    mem: &GuestMemory,
    data: &[u8],
) -> Option<usize> {
    let mut done = 0usize;
    let mut cut = false;
    for (i, desc) in chain.enumerate() {
        cut = desc.has_next();
        if i >= MAX_DESCRIPTORS || !desc.is_write_only() {
            return None;
        }
        let room = usize::try_from(desc.len()).ok()?;
        let n = room.min(data.len() - done);
        if n == 0 {
            continue;
        }
        let src = data.get(done..done + n)?;
        mem.write_slice(src, desc.addr()).ok()?;
        done += n;
    }
    (!cut).then_some(done)
}

/// A virtio device model.
pub trait VirtioDevice: Send {
    /// Virtio device ID.
    fn device_type(&self) -> u32;
    /// Number of virtqueues.
    fn num_queues(&self) -> usize;
    /// Largest queue size the device accepts (a power of two).
    fn max_queue_size(&self) -> u16;
    /// Feature bits offered to the driver.
    fn features(&self) -> u64;
    /// The device-specific configuration space (may be empty).
    fn config(&self) -> Vec<u8>;
    /// A driver write to the configuration space. Refused by default: no
    /// skvm device offers a writable field (blk's `writeback` needs
    /// CONFIG_WCE, net's MAC is writable only on legacy devices).
    fn write_config(&mut self, _offset: u32, _data: &[u8]) -> Result<(), DeviceError> {
        Err(DeviceError::ReadOnlyConfig)
    }
    /// The driver set DRIVER_OK with `features` (a subset of `features()`).
    fn activate(&mut self, features: u64) -> Result<(), DeviceError>;
    /// The driver made buffers available on queue `index`: consume them and
    /// add used entries. An error means the queue itself is unusable (the
    /// device then needs a reset); one bad request is completed or dropped,
    /// never an error.
    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<Processed, DeviceError>;
    /// Back to the state before activation.
    fn reset(&mut self);
    /// Adds to `out` the backend fds to wait on while active, each with the
    /// queue to process when it is ready (a tap's receive side; a console's
    /// listening socket and its client; vsock's streams); none while the
    /// device waits for the driver instead.
    fn backend_events(&self, out: &mut Vec<BackendEvent>) {
        let _ = out;
    }
    /// What the device has to say when it stops: hostile input it dropped,
    /// backend errors. `None` when there is nothing worth a log line.
    fn report(&self) -> Option<String> {
        None
    }
    /// The model's own state beyond features and queues, for a new
    /// instance to carry on with (at most `ipc::MAX_DEVICE_STATE` bytes).
    /// Called between requests, so nothing is in flight.
    fn save_state(&self) -> Vec<u8> {
        Vec::new()
    }
    /// This instance, activated, takes over from one that died without
    /// saving its state: what that one held of the backend is gone.
    fn recovered(&mut self) {}

    /// Takes over what [`VirtioDevice::save_state`] of another instance
    /// returned, after [`VirtioDevice::activate`]; refuses anything that
    /// instance could not have produced.
    fn restore_state(&mut self, state: &[u8]) -> Result<(), DeviceError> {
        keeps_none("device state", state)
    }

    /// State too large for [`VirtioDevice::save_state`] (virtio-fs's node
    /// table, up to [`MAX_BULK_STATE`] bytes), handed to the next instance
    /// of a restart or a mem-add rebuild, not kept in a snapshot. Empty
    /// for most devices.
    fn save_bulk(&self) -> Vec<u8> {
        Vec::new()
    }

    /// Takes over what [`VirtioDevice::save_bulk`] of another instance
    /// returned, after [`VirtioDevice::restore_state`]; hostile input as
    /// any other.
    fn restore_bulk(&mut self, bulk: &[u8]) -> Result<(), DeviceError> {
        keeps_none("bulk state", bulk)
    }
}

/// What a device that keeps no `what` takes: nothing.
fn keeps_none(what: &str, bytes: &[u8]) -> Result<(), DeviceError> {
    if bytes.is_empty() {
        Ok(())
    } else {
        Err(DeviceError::Refused(format!(
            "{} bytes of {what} for a device that keeps none",
            bytes.len()
        )))
    }
}

/// The most bulk state a device saves ([`VirtioDevice::save_bulk`]).
pub const MAX_BULK_STATE: usize = 16 << 20;

/// A device's counters: a struct of `u64` fields, each with its doc
/// comment, that saves as their values in order ([`save_counters`]) with
/// `save` and comes back from them with `restore(state, what)`, which
/// refuses any other length.
#[macro_export]
macro_rules! counters {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $field:ident: u64,)+ }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $name {
            $($(#[$fm])* pub $field: u64,)+
        }

        impl $name {
            const FIELDS: usize = [$(stringify!($field)),+].len();

            /// The counters as saved state.
            fn save(&self) -> Vec<u8> {
                $crate::virtio::save_counters(&[$(self.$field),+])
            }

            /// The counters `save` wrote for a `what` device.
            fn restore(
                state: &[u8],
                what: &str,
            ) -> Result<Self, $crate::virtio::DeviceError> {
                let [$($field),+] = $crate::virtio::restore_counters::<{ Self::FIELDS }>(state, what)?;
                Ok(Self { $($field),+ })
            }
        }
    };
}

/// Counters as saved state: each little-endian, in order.
pub fn save_counters(counters: &[u64]) -> Vec<u8> {
    counters.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The `N` counters [`save_counters`] wrote for a `what` device; refuses
/// any other length.
pub fn restore_counters<const N: usize>(state: &[u8], what: &str) -> Result<[u64; N], DeviceError> {
    if state.len() != N * 8 {
        return Err(DeviceError::Refused(format!(
            "{what} state of {} bytes, expected {}",
            state.len(),
            N * 8
        )));
    }
    let mut counters = [0u64; N];
    for (c, chunk) in counters.iter_mut().zip(state.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        *c = u64::from_le_bytes(b);
    }
    Ok(counters)
}

/// Checks that `features` is a subset of `offered`.
pub fn check_features(features: u64, offered: u64) -> Result<(), DeviceError> {
    match features & !offered {
        0 => Ok(()),
        extra => Err(DeviceError::UnofferedFeatures(extra)),
    }
}

#[cfg(test)]
mod tests {
    // Test code: a panic is a failure report.
    #![allow(clippy::unwrap_used)]

    use super::*;

    use crate::test_queue::WRITE;
    use vm_memory::GuestAddress;

    // A queue's parts, apart (virtio-queue's MockSplitQueue places its used
    // ring over the second half of the available ring: fine for a few
    // chains, not for these tests' hundred).
    const DESC: u64 = 0;
    const AVAIL: u64 = 0x1000;
    const USED: u64 = 0x2000;

    /// A queue of `size` whose descriptor i is a 64-byte buffer and whose
    /// first `avail` entries are made available (entry i: descriptor i).
    fn queue_with(m: &GuestMemory, size: u16, avail: u16) -> Queue {
        for i in 0..size {
            let d = DESC + u64::from(i) * 16;
            m.write_obj(0x10_0000 + u64::from(i) * 64, GuestAddress(d))
                .unwrap();
            m.write_obj(64u32, GuestAddress(d + 8)).unwrap();
            m.write_obj(WRITE, GuestAddress(d + 12)).unwrap();
        }
        for i in 0..avail {
            m.write_obj(i, GuestAddress(AVAIL + 4 + u64::from(i) * 2))
                .unwrap();
        }
        m.write_obj(avail, GuestAddress(AVAIL + 2)).unwrap();
        let mut q = Queue::new(size).unwrap();
        q.try_set_desc_table_address(GuestAddress(DESC)).unwrap();
        q.try_set_avail_ring_address(GuestAddress(AVAIL)).unwrap();
        q.try_set_used_ring_address(GuestAddress(USED)).unwrap();
        q.set_ready(true);
        q
    }

    /// The used entries as (id, len).
    fn used(m: &GuestMemory, size: u16) -> Vec<(u32, u32)> {
        let n: u16 = m.read_obj(GuestAddress(USED + 2)).unwrap();
        (0..n)
            .map(|i| {
                let e = USED + 4 + u64::from(i % size) * 8;
                let id = m.read_obj(GuestAddress(e)).unwrap();
                (id, m.read_obj(GuestAddress(e + 4)).unwrap())
            })
            .collect()
    }

    fn mem() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
    }

    #[test]
    fn every_available_chain_is_served_and_used_in_order() {
        // More chains than one run of used entries.
        let m = mem();
        let mut q = queue_with(&m, 128, 100);
        let p = serve_queue(&mut q, &m, |c| u32::from(c.head_index()) * 2).unwrap();
        assert_eq!((p.notify, p.pending), (true, false));
        let want: Vec<(u32, u32)> = (0..100).map(|i| (i, i * 2)).collect();
        assert_eq!(used(&m, 128), want);
    }

    #[test]
    fn a_driver_that_never_stops_gets_four_rings_then_the_control_channel_its_turn() {
        // Each chain served makes another available: the queue never
        // empties, and one call stops at its budget with work pending.
        let m = mem();
        let size = 32u16;
        let mut q = queue_with(&m, size, size);
        let avail = AVAIL;
        let mut next = size;
        let p = serve_queue(&mut q, &m, |c| {
            let slot = avail + 4 + u64::from(next % size) * 2;
            m.write_obj(c.head_index(), GuestAddress(slot)).unwrap();
            next = next.wrapping_add(1);
            m.write_obj(next, GuestAddress(avail + 2)).unwrap();
            1
        })
        .unwrap();
        assert!(p.pending && p.notify);
        let u = used(&m, size);
        assert_eq!(u.len(), usize::from(size) * 4);
        assert!(u.iter().all(|&(id, len)| id < u32::from(size) && len == 1));
    }

    #[test]
    fn only_offered_features_are_accepted() {
        assert!(check_features(1 << 32, TRANSPORT_FEATURES).is_ok());
        assert!(matches!(
            check_features(1 << 5, TRANSPORT_FEATURES),
            Err(DeviceError::UnofferedFeatures(32))
        ));
    }
}
