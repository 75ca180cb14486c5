//! How a worker waits and what it runs when it wakes: one poll(2) over its
//! control channel, its queues' kicks and its backend's fds, reading only
//! what was ready; the queues that were kicked, that polling found work on
//! ([`Poller`]) or whose backend has data; and the interrupts and re-kicks
//! that follow.

use std::os::fd::AsRawFd;
use std::time::Duration;

use devices::virtio::{BackendEvent, VirtioDevice};
use ipc::wait::WaitSet;
use ipc::Channel;
use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;

use super::{Active, ActiveQueue, RequestError};
use crate::device_host::poll::Poller;

/// Adds the backend's fds to `set` under `token`, each for reading or,
/// when it waits for room, for writing.
pub(super) fn add_backend<T: Copy>(set: &mut WaitSet<T>, backend: &[BackendEvent], token: T) {
    for e in backend {
        if e.writable {
            set.add_raw_writable(e.fd, token);
        } else {
            set.add_raw(e.fd, token);
        }
    }
}

/// What wakes a worker.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Wake {
    /// A request on the control channel.
    Control,
    /// Data on the backend's fd.
    Backend,
    /// The kick eventfd of the queue at this place in `Active::queues`.
    Kick(usize),
}

/// Queue `i`'s bit in [`Woke::kicks`] (every bit past the 64th queue).
fn queue_bit(i: usize) -> u64 {
    u32::try_from(i)
        .ok()
        .and_then(|i| 1u64.checked_shl(i))
        .unwrap_or(u64::MAX)
}

/// What a wait found ready.
pub(super) struct Woke {
    pub(super) control: bool,
    pub(super) backend: bool,
    /// Bit i: the kick of `Active::queues[i]` (all set past the 64th).
    pub(super) kicks: u64,
}

impl Woke {
    /// Everything, as after a wait that failed: the caller looks at all.
    const ALL: Woke = Woke {
        control: true,
        backend: true,
        kicks: u64::MAX,
    };
}

/// Blocks until the channel, a kick eventfd or the backend fd is
/// readable; returns which were. A failed wait (a signal ended it) counts
/// as everything ready: the caller looks at each and comes back.
pub(super) fn wait(
    set: &mut WaitSet<Wake>,
    chan: &Channel,
    active: Option<&Active>,
    backend: &[BackendEvent],
    timeout: Option<Duration>,
) -> Woke {
    set.clear();
    set.add(chan, Wake::Control);
    add_backend(set, backend, Wake::Backend);
    if let Some(a) = active {
        for (i, q) in a.queues.iter().enumerate() {
            set.add_raw(q.kick.as_raw_fd(), Wake::Kick(i));
        }
    }
    let Ok(ready) = set.wait(timeout) else {
        return Woke::ALL;
    };
    let mut woke = Woke {
        control: false,
        backend: false,
        kicks: 0,
    };
    for e in ready.iter() {
        match e.token {
            Wake::Control => woke.control = true,
            Wake::Backend => woke.backend = true,
            Wake::Kick(i) => woke.kicks |= queue_bit(i),
        }
    }
    woke
}

/// Runs the queues that were kicked (bit i of `kicks`: `a.queues[i]`'s
/// kick was readable), those polling found work on (`polled`, the same
/// bits), and those of `ready`, the backend fds of which one (at least)
/// has data.
pub(super) fn process_kicked(
    device: &mut dyn VirtioDevice,
    a: &mut Active,
    ready: &[BackendEvent],
    kicks: u64,
    polled: u64,
) -> Result<(), RequestError> {
    let mut woken = Vec::new();
    for (i, q) in a.queues.iter_mut().enumerate() {
        let backend = ready.iter().any(|e| e.queue == q.index);
        // Only a kick the wait saw is read (it is consumed; a read of a
        // non-blocking eventfd succeeds only if it was kicked).
        let kicked = kicks & queue_bit(i) != 0 && q.kick.read().is_ok();
        if kicked || backend || polled & queue_bit(i) != 0 {
            woken.extend(run_queue(device, &a.mem, q)?);
        }
    }
    wake_queues(a, &woken);
    Ok(())
}

/// Polls `a`'s queues for entries the driver makes available from now on
/// (adaptive polling, [`Poller`]): the queues that have some, as bits; or
/// [`BACKEND_READY`] when one of the backend's fds (`backend`, looked at
/// every [`BACKEND_EVERY`] looks at the queues, one poll(2) with no wait)
/// is ready first.
pub(super) fn poll_queues(poller: &mut Poller, a: &Active, backend: &mut WaitSet<()>) -> u64 {
    let avail = |q: &ActiveQueue| {
        q.queue
            .avail_idx(&a.mem, std::sync::atomic::Ordering::Acquire)
            .map(|i| i.0)
            .ok()
    };
    let mut seen = [None; ipc::MAX_QUEUES];
    for (s, q) in seen.iter_mut().zip(&a.queues) {
        *s = avail(q);
    }
    let mut looks: u32 = 0;
    poller.spin(|| {
        looks = looks.wrapping_add(1);
        if looks.is_multiple_of(BACKEND_EVERY)
            && !backend.is_empty()
            && backend
                .wait(Some(Duration::ZERO))
                .is_ok_and(|r| !r.is_empty())
        {
            return BACKEND_READY;
        }
        a.queues
            .iter()
            .zip(&seen)
            .enumerate()
            .filter(|(_, (q, before))| avail(q) != **before)
            .fold(0, |mask, (i, _)| mask | queue_bit(i))
    })
}

/// What [`poll_queues`] returns when a backend fd is ready: no queue's bit.
const BACKEND_READY: u64 = 1 << 63;
/// Looks at the queues between two looks at the backend's fds.
const BACKEND_EVERY: u32 = 16;

pub(super) fn process_all(
    device: &mut dyn VirtioDevice,
    a: &mut Active,
) -> Result<(), RequestError> {
    let mut woken = Vec::new();
    for q in &mut a.queues {
        let _ = q.kick.read();
        woken.extend(run_queue(device, &a.mem, q)?);
    }
    wake_queues(a, &woken);
    Ok(())
}

/// Kicks the queues a device said have work (`Processed::wake`), so that
/// the next round processes them.
pub(super) fn wake_queues(a: &Active, queues: &[usize]) {
    for q in a.queues.iter().filter(|q| queues.contains(&q.index)) {
        let _ = q.kick.write(1);
    }
}

/// Processes queue `q`; which other queue has work, if any.
pub(super) fn run_queue(
    device: &mut dyn VirtioDevice,
    mem: &GuestMemoryMmap,
    q: &mut ActiveQueue,
) -> Result<Option<usize>, RequestError> {
    let done = device
        .process_queue(q.index, &mut q.queue, mem)
        .map_err(|source| RequestError::Serve {
            index: q.index,
            source,
        })?;
    if done.notify {
        let _ = q.irq.write(1);
    }
    if done.pending {
        // Come back after a look at the control channel.
        let _ = q.kick.write(1);
    }
    Ok(done.wake)
}
