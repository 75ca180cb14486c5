//! The driver's half of a split virtqueue (virtio 1.2, 2.7) in the
//! harness's "guest RAM": where the rings sit, writing descriptors and
//! available entries, publishing the available index, kicking, and
//! waiting for the device's interrupt.

use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use ipc::wait::wait_one;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::virtio_pci::DeviceEvents;

/// Queue size the driver uses (on a device whose queues are smaller, such
/// as virtio-fs's, the device's size: [`Ring::sized`]).
pub const QUEUE_SIZE: u16 = 256;
/// Longest wait for an interrupt before the device is declared stuck.
pub const IRQ_TIMEOUT: Duration = Duration::from_secs(5);
/// VIRTQ_DESC_F_NEXT: the chain goes on.
pub const DESC_F_NEXT: u16 = 1;
/// VIRTQ_DESC_F_WRITE: the device writes this buffer.
pub const DESC_F_WRITE: u16 = 2;
/// VIRTQ_USED_F_NO_NOTIFY: the device does not need kicks just now.
const USED_F_NO_NOTIFY: u16 = 1;

/// blk request headers (16 bytes each) and status bytes.
pub const HEADERS: u64 = 0x4_0000;
/// blk status bytes, one per request slot.
pub const STATUSES: u64 = 0x5_0000;
/// Data buffers: one per request slot, [`STRIDE`] apart.
pub const BUFFERS: u64 = 0x10_0000;
/// Distance between two requests' data buffers.
pub const STRIDE: u64 = 1 << 20;
/// Request slots (the deepest queue depth).
pub const SLOTS: u16 = 64;
/// Size of the driver's RAM: the buffers of every slot fit.
pub const RAM: u64 = BUFFERS + SLOTS as u64 * STRIDE;

/// Where one queue's three parts sit in driver memory, and its index.
#[derive(Debug, Clone, Copy)]
pub struct Ring {
    /// The queue's index in the device.
    pub index: u16,
    /// Its size (entries), at most [`QUEUE_SIZE`].
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
}

/// Queue 0 (rng's and blk's only queue; net's receive queue).
pub const QUEUE0: Ring = Ring {
    size: QUEUE_SIZE,
    index: 0,
    desc: 0x1_0000,
    avail: 0x2_0000,
    used: 0x3_0000,
};

/// Queue 1 (net's transmit queue).
pub const QUEUE1: Ring = Ring {
    size: QUEUE_SIZE,
    index: 1,
    desc: 0x6_0000,
    avail: 0x7_0000,
    used: 0x8_0000,
};

/// Queue 2 (vsock's event queue).
pub const QUEUE2: Ring = Ring {
    size: QUEUE_SIZE,
    index: 2,
    desc: 0x9_0000,
    avail: 0xa_0000,
    used: 0xb_0000,
};

impl Ring {
    /// The same queue with `size` entries (a power of two, at most
    /// [`QUEUE_SIZE`]), for a device whose queues are smaller.
    pub const fn sized(self, size: u16) -> Ring {
        Ring { size, ..self }
    }

    /// The layout the device is activated with.
    pub fn layout(self) -> crate::virtio_pci::QueueLayout {
        crate::virtio_pci::QueueLayout {
            index: self.index,
            size: self.size,
            desc: self.desc,
            avail: self.avail,
            used: self.used,
        }
    }

    /// Writes descriptor `index`; its `next` field names the following
    /// descriptor (used only with [`DESC_F_NEXT`]).
    pub fn write_desc(
        self,
        mem: &GuestMemoryMmap,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
    ) -> Result<()> {
        self.write_desc_to(mem, index, addr, len, flags, index.wrapping_add(1))
    }

    /// Writes descriptor `index` with an explicit `next`.
    pub fn write_desc_to(
        self,
        mem: &GuestMemoryMmap,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) -> Result<()> {
        let d = self.desc + u64::from(index) * 16;
        mem.write_obj(addr, GuestAddress(d))?;
        mem.write_obj(len, GuestAddress(d + 8))?;
        mem.write_obj(flags, GuestAddress(d + 12))?;
        mem.write_obj(next, GuestAddress(d + 14))?;
        Ok(())
    }

    /// Puts chain `head` in the available ring at running position `pos`
    /// (not yet published).
    pub fn offer(self, mem: &GuestMemoryMmap, pos: u16, head: u16) -> Result<()> {
        let ring = self.avail + 4 + u64::from(pos % self.size) * 2;
        mem.write_obj(head, GuestAddress(ring))?;
        Ok(())
    }

    /// Publishes the available index `next_avail` and kicks the queue,
    /// unless the device said it needs no kick.
    pub fn publish(
        self,
        mem: &GuestMemoryMmap,
        events: &DeviceEvents,
        next_avail: u16,
    ) -> Result<()> {
        self.set_avail_idx(mem, next_avail)?;
        let flags: u16 = mem.read_obj(GuestAddress(self.used))?;
        if flags & USED_F_NO_NOTIFY == 0 {
            self.kick(events)?;
        }
        Ok(())
    }

    /// Makes the chains up to `next_avail` available, ordered after the
    /// writes that built them and before what follows.
    fn set_avail_idx(self, mem: &GuestMemoryMmap, next_avail: u16) -> Result<()> {
        fence(Ordering::SeqCst);
        mem.write_obj(next_avail, GuestAddress(self.avail + 2))?;
        fence(Ordering::SeqCst);
        Ok(())
    }

    /// Kicks the queue.
    pub fn kick(self, events: &DeviceEvents) -> Result<()> {
        events.kicks[usize::from(self.index)].write(1)?;
        Ok(())
    }

    /// Publishes `next_avail`, kicks, and waits (interrupt by interrupt)
    /// until the device has used everything up to it; first, for the
    /// halt-polling window ([`set_halt_poll`]), by watching the used index.
    pub fn publish_and_wait(
        self,
        mem: &GuestMemoryMmap,
        events: &DeviceEvents,
        next_avail: u16,
    ) -> Result<()> {
        let event_idx = EVENT_IDX.load(Ordering::Relaxed);
        let before: u16 = mem.read_obj(GuestAddress(self.avail + 2))?;
        if event_idx {
            // used_event: interrupt once the last of these is used.
            let used_event = self.avail + 4 + u64::from(self.size) * 2;
            mem.write_obj(next_avail.wrapping_sub(1), GuestAddress(used_event))?;
        }
        self.set_avail_idx(mem, next_avail)?;
        // avail_event: the device asks for a kick only past that entry.
        let kick = !event_idx || {
            let avail_event: u16 =
                mem.read_obj(GuestAddress(self.used + 4 + u64::from(self.size) * 8))?;
            next_avail.wrapping_sub(avail_event).wrapping_sub(1) < next_avail.wrapping_sub(before)
        };
        if kick {
            self.kick(events)?;
        }
        if self.halt_poll(mem, events, |used| used == next_avail)? {
            return Ok(());
        }
        loop {
            self.wait_interrupt(events)?;
            if self.used_idx(mem)? == next_avail {
                return Ok(());
            }
        }
    }

    /// Waits until the device has used more than `seen` (the used index
    /// it last showed): first by watching the used index for the
    /// halt-polling window, then for one interrupt (which may be stale:
    /// the caller looks at the index again).
    pub fn wait_used(self, mem: &GuestMemoryMmap, events: &DeviceEvents, seen: u16) -> Result<()> {
        if self.halt_poll(mem, events, |used| used != seen)? {
            return Ok(());
        }
        self.wait_interrupt(events)
    }

    /// Watches the used index for the halt-polling window
    /// ([`set_halt_poll`]) until `done` holds for it; whether it did. The
    /// interrupt that came with it, if it came yet, is spent.
    fn halt_poll(
        self,
        mem: &GuestMemoryMmap,
        events: &DeviceEvents,
        done: impl Fn(u16) -> bool,
    ) -> Result<bool> {
        let window = Duration::from_micros(u64::from(HALT_POLL_US.load(Ordering::Relaxed)));
        if window.is_zero() {
            return Ok(false);
        }
        let deadline = Instant::now() + window;
        while Instant::now() < deadline {
            if done(self.used_idx(mem)?) {
                let _ = events.irqs[usize::from(self.index)].read();
                return Ok(true);
            }
            std::hint::spin_loop();
        }
        Ok(false)
    }

    /// Waits for the queue's interrupt and consumes it.
    pub fn wait_interrupt(self, events: &DeviceEvents) -> Result<()> {
        let irq = &events.irqs[usize::from(self.index)];
        wait_readable(irq)?;
        let _ = irq.read();
        Ok(())
    }

    /// The device's used index.
    pub fn used_idx(self, mem: &GuestMemoryMmap) -> Result<u16> {
        fence(Ordering::SeqCst);
        Ok(mem.read_obj(GuestAddress(self.used + 2))?)
    }

    /// The used entry at running position `pos`: (descriptor id, length).
    pub fn used_entry(self, mem: &GuestMemoryMmap, pos: u16) -> Result<(u32, u32)> {
        let e = self.used + 4 + u64::from(pos % self.size) * 8;
        Ok((
            mem.read_obj(GuestAddress(e))?,
            mem.read_obj(GuestAddress(e + 4))?,
        ))
    }

    /// Posts the chain at descriptor 0 as the `n`th available entry,
    /// kicks, and returns its used length.
    pub fn submit_one(self, mem: &GuestMemoryMmap, events: &DeviceEvents, n: u16) -> Result<u32> {
        self.offer(mem, n, 0)?;
        self.publish_and_wait(mem, events, n.wrapping_add(1))?;
        let (id, len) = self.used_entry(mem, n)?;
        anyhow::ensure!(id == 0, "used entry names descriptor {id}");
        Ok(len)
    }
}

/// The driver's halt-polling window, microseconds (`skvm drive
/// --halt-poll-us`; 0: none).
static HALT_POLL_US: AtomicU32 = AtomicU32::new(0);

/// Whether the driver negotiated VIRTIO_F_RING_EVENT_IDX (`skvm drive
/// --event-idx`): [`Ring::publish_and_wait`] then writes used_event and
/// kicks only as avail_event asks (virtio 1.2, 2.7.10).
static EVENT_IDX: AtomicBool = AtomicBool::new(false);

/// Sets whether the driver uses event indexes.
pub fn set_event_idx(on: bool) {
    EVENT_IDX.store(on, Ordering::Relaxed);
}

/// Sets how long, in microseconds, the driver watches for the device's
/// answer before it sleeps on the interrupt, as KVM's halt polling keeps an
/// idle vCPU awake for a while (0: it sleeps at once).
pub fn set_halt_poll(us: u32) {
    HALT_POLL_US.store(us, Ordering::Relaxed);
}

/// Waits until eventfd `e` is readable, at most [`IRQ_TIMEOUT`].
pub fn wait_readable(e: &EventFd) -> Result<()> {
    if poll_in(e.as_raw_fd(), IRQ_TIMEOUT)? {
        return Ok(());
    }
    bail!("no interrupt from the device within {IRQ_TIMEOUT:?}")
}

/// Polls `fd` for input up to `timeout`; false when it timed out. A
/// signal starts the wait over.
pub fn poll_in(fd: std::os::fd::RawFd, timeout: Duration) -> Result<bool> {
    loop {
        match wait_one(fd, Some(timeout)) {
            Ok(ready) => return Ok(ready.is_some()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}
