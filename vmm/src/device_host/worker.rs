//! The device side of a control channel: the event loop that runs a virtio
//! device model, the same code in a device process and in a VMM thread.
//!
//! It answers the VMM's requests (hello, config, activate, reset, shutdown,
//! pause, resume, restore) and, once active, waits on the queues' kick
//! eventfds, lets the model process the queue, and signals the queue's
//! interrupt eventfd when the model says the driver needs it. Paused, it
//! waits on the control channel alone; kicks stay in their eventfds for
//! whoever serves the queues next. Nothing here trusts the VMM's numbers
//! more than the guest's: queue layouts are validated by virtio-queue
//! against the memory actually mapped.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use devices::virtio::{DeviceError, VirtioDevice};
use ipc::wait::WaitSet;
use ipc::{
    Channel, DeviceInfo, DeviceState, IpcError, QueueLayout, QueueState, Reply, Request,
    PROTOCOL_VERSION,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::poll::Poller;
use crate::kinds::{DeviceKind, KindError};
use crate::memory::{map_ranges, MemoryError, RamRange};
use wake::{add_backend, poll_queues, process_all, process_kicked, wait};

mod wake;

/// How long a device waits for the VMM's hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

struct ActiveQueue {
    index: usize,
    queue: Queue,
    kick: EventFd,
    irq: EventFd,
}

struct Active {
    features: u64,
    mem: GuestMemoryMmap,
    queues: Vec<ActiveQueue>,
    /// Kept for config-change interrupts from the device.
    _config_irq: EventFd,
}

/// Why serving stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The control channel failed.
    #[error(transparent)]
    Ipc(#[from] IpcError),
    /// The VMM broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The hello's backend could not be served.
    #[error(transparent)]
    Backend(#[from] KindError),
    /// Confinement could not be applied.
    #[error("cannot confine the device: {0}")]
    Confine(#[source] ConfineError),
}

/// Why the confinement after the hello failed.
pub type ConfineError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request from the VMM was refused (the text goes back in `Error`),
/// or a queue stopped being served (the text goes in `NeedsReset`).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Fewer fds than the message needs (the ipc crate counts them; this
    /// is the check that names which).
    #[error("missing {0} fd")]
    MissingFd(&'static str),
    /// Guest memory could not be mapped.
    #[error("cannot map guest memory: {0}")]
    Map(#[from] MemoryError),
    /// A queue index twice, or past the device's queues.
    #[error("bad queue index {0}")]
    QueueIndex(usize),
    /// virtio-queue refused a queue's layout.
    #[error("queue {index}: {source}")]
    Queue {
        /// The queue.
        index: u16,
        /// Why.
        source: virtio_queue::Error,
    },
    /// A queue's rings are not inside the memory mapped.
    #[error("queue {0}: rings outside guest memory")]
    OutsideMemory(u16),
    /// The model refused the features.
    #[error("activation refused: {0}")]
    Activation(#[source] DeviceError),
    /// The model refused its saved state.
    #[error("device state refused: {0}")]
    State(#[source] DeviceError),
    /// Saved state whose event index flag contradicts the features.
    #[error("queue {0}: event index state does not follow the features")]
    EventIdx(usize),
    /// Saved state whose next used index is not the used ring's.
    #[error("queue {index}: saved next used index {saved} but the used ring says {ring}")]
    UsedIndex {
        /// The queue.
        index: usize,
        /// What the state says.
        saved: u16,
        /// What the ring says.
        ring: u16,
    },
    /// Saved state with chains in flight, which no skvm device leaves.
    #[error(
        "queue {index}: {count} chains in flight; this device completes every chain it takes \
         before it pauses"
    )]
    InFlight {
        /// The queue.
        index: usize,
        /// How many.
        count: u16,
    },
    /// The used ring could not be read.
    #[error("queue {index}: {source}")]
    UsedRing {
        /// The queue.
        index: usize,
        /// Why.
        source: virtio_queue::Error,
    },
    /// The model found the queue unusable.
    #[error("queue {index}: {source}")]
    Serve {
        /// The queue.
        index: usize,
        /// Why.
        source: DeviceError,
    },
}

/// `e` as the text of an `Error` or `NeedsReset` message.
fn message(e: &impl std::fmt::Display) -> String {
    clip(e.to_string())
}

/// The device's self-description for the VMM.
pub fn device_info(device: &dyn VirtioDevice) -> DeviceInfo {
    DeviceInfo {
        device_type: device.device_type(),
        num_queues: u16::try_from(device.num_queues()).unwrap_or(0),
        max_queue_size: device.max_queue_size(),
        features: device.features(),
        config: device.config(),
    }
}

/// Serves device `name` of `kind` on `chan` until the VMM shuts it down or
/// goes away, then logs what the model reports (hostile input it dropped).
/// The model is built from the backend the hello carries, which must be of
/// `kind` ([`DeviceKind::model`]), after `root` (the share the process
/// made its root, which the hello then leaves out); `confine` runs once,
/// after the hello and before the answer or any guest data (the seccomp
/// filter of the device's process or thread).
pub fn serve(
    chan: &Channel,
    kind: &dyn DeviceKind,
    name: &str,
    root: Option<OwnedFd>,
    confine: impl FnOnce() -> Result<(), ConfineError>,
) -> Result<(), WorkerError> {
    let (backend, poll_us, mut fds) = match chan.recv_request(Some(HELLO_TIMEOUT))? {
        (
            Request::Hello {
                version,
                backend,
                poll_us,
            },
            fds,
        ) if version == PROTOCOL_VERSION => (backend, poll_us, fds),
        (Request::Hello { version, .. }, _) => {
            return Err(refuse(
                chan,
                format!("unsupported protocol version {version}"),
            ));
        }
        _ => return Err(WorkerError::Protocol("expected hello".into())),
    };
    if backend.kind != kind.name() {
        let why = format!(
            "a {} device cannot serve a {} backend",
            kind.name(),
            backend.kind
        );
        return Err(refuse(chan, why));
    }
    if let Some(root) = root {
        fds.insert(0, root);
    }
    let mut device = match kind.model(&backend.params, fds) {
        Ok(d) => d,
        Err(e) => {
            let _ = chan.send_reply(&Reply::Error {
                message: message(&e),
            });
            return Err(e.into());
        }
    };
    let device = device.as_mut();
    let result = serve_model(chan, device, confine, Poller::new(poll_us));
    if let Some(report) = device.report() {
        crate::log::warn(&format!("device {name}: {report}"));
    }
    result
}

/// Answers the hello with `why` and gives up.
fn refuse(chan: &Channel, why: String) -> WorkerError {
    let _ = chan.send_reply(&Reply::Error {
        message: clip(why.clone()),
    });
    WorkerError::Protocol(why)
}

/// The loop of [`serve`] once the model is built.
fn serve_model(
    chan: &Channel,
    device: &mut dyn VirtioDevice,
    confine: impl FnOnce() -> Result<(), ConfineError>,
    mut poller: Poller,
) -> Result<(), WorkerError> {
    let info = device_info(device);
    // The configuration the VMM knows, to tell it when a restore moves it.
    let mut announced = info.config.clone();
    // Confined before the welcome: when the VMM has its answer, the
    // device's filter is on (the VMM checks every thread's before the
    // guest runs).
    confine().map_err(WorkerError::Confine)?;
    chan.send_reply(&Reply::Welcome {
        version: PROTOCOL_VERSION,
        info,
    })?;

    let mut active: Option<Active> = None;
    let mut paused = false;
    let mut wake = WaitSet::with_capacity(1 + 2 + ipc::MAX_QUEUES);
    let mut backend = Vec::new();
    // Queues polling found work on (bit i: `Active::queues[i]`; or
    // BACKEND_READY).
    let mut polled: u64 = 0;
    let mut backend_set = WaitSet::with_capacity(4);
    loop {
        let serving = active.as_ref().filter(|_| !paused);
        backend.clear();
        if serving.is_some() {
            device.backend_events(&mut backend);
        }
        if poller.on() {
            // What polling looks at beside the queues.
            backend_set.clear();
            add_backend(&mut backend_set, &backend, ());
        }
        let woke = if polled != 0 {
            // Work is waiting: look at the rest without sleeping.
            wait(&mut wake, chan, serving, &backend, Some(Duration::ZERO))
        } else {
            poller.sleeping();
            let woke = wait(&mut wake, chan, serving, &backend, None);
            poller.woken(woke.kicks != 0);
            woke
        };
        if let Some(a) = active.as_mut().filter(|_| !paused) {
            if !woke.backend {
                backend.clear();
            }
            let served = process_kicked(device, a, &backend, woke.kicks, polled);
            // Work that came by a kick or by polling: more may follow.
            // Not a backend's: its peer (a console's or vsock's host
            // program) needs the core polling would take, and a tap's
            // frames gained nothing from it (bench-latency, net rx).
            let worked = woke.kicks != 0 || polled != 0;
            polled = 0;
            if served.is_ok() && worked {
                polled = poll_queues(&mut poller, a, &mut backend_set);
            }
            if let Err(reason) = served {
                // The queue is unusable: stop serving it and tell the VMM.
                active = None;
                device.reset();
                chan.send_reply(&Reply::NeedsReset {
                    reason: message(&reason),
                })?;
            }
        }
        // The channel is read only when it woke the wait: a request costs
        // no look at an empty channel.
        if !woke.control {
            continue;
        }
        let (req, mut fds) = match chan.recv_request(Some(Duration::ZERO)) {
            Ok(r) => r,
            Err(IpcError::Timeout) => continue,
            Err(IpcError::Closed) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        match req {
            Request::Shutdown => return Ok(()),
            Request::Reset => {
                active = None;
                paused = false;
                device.reset();
                chan.send_reply(&Reply::Ack)?;
            }
            Request::Pause => {
                paused = true;
                let state = active.as_ref().map(|a| save(device, a)).unwrap_or_default();
                let memfd = active
                    .as_ref()
                    .and_then(|_| super::bulk::saved(&device.save_bulk()));
                let reply = Reply::Saved {
                    state,
                    bulk: memfd.is_some(),
                };
                let fds: Vec<_> = memfd.iter().map(std::os::fd::AsFd::as_fd).collect();
                chan.send_reply_with(&reply, &fds)?;
            }
            Request::Resume => {
                paused = false;
                let mut reply = Reply::Ack;
                if let Some(a) = active.as_mut() {
                    if let Err(reason) = process_all(device, a) {
                        reply = Reply::Error {
                            message: message(&reason),
                        };
                    }
                }
                chan.send_reply(&reply)?;
            }
            Request::Restore {
                regions,
                state,
                recover,
                bulk,
            } => {
                active = None;
                paused = false;
                let bulk = if bulk { fds.pop() } else { None };
                let reply = match restore(device, &regions, (&state, bulk), recover, fds) {
                    Ok(a) => {
                        active = Some(a);
                        let config = device.config();
                        if config != announced {
                            chan.send_reply(&Reply::ConfigChanged {
                                config: config.clone(),
                            })?;
                            announced = config;
                        }
                        Reply::Ack
                    }
                    Err(e) => {
                        device.reset();
                        Reply::Error {
                            message: message(&e),
                        }
                    }
                };
                chan.send_reply(&reply)?;
            }
            Request::ConfigRead { offset, len } => {
                let cfg = device.config();
                let start = usize::try_from(offset).unwrap_or(usize::MAX);
                let end = start.saturating_add(usize::try_from(len).unwrap_or(0));
                let data = cfg.get(start..end.min(cfg.len())).unwrap_or_default();
                chan.send_reply(&Reply::ConfigData {
                    data: data.to_vec(),
                })?;
            }
            Request::ConfigWrite { offset, data } => {
                let reply = match device.write_config(offset, &data) {
                    Ok(()) => Reply::Ack,
                    Err(e) => Reply::Error {
                        message: message(&e),
                    },
                };
                chan.send_reply(&reply)?;
            }
            Request::Activate {
                features,
                regions,
                queues,
            } => {
                active = None;
                let reply = match activate(device, features, &regions, &queues, fds) {
                    Ok(mut a) => {
                        // Kicks that came before activation are not lost.
                        let first = process_all(device, &mut a);
                        active = Some(a);
                        match first {
                            Ok(()) => Reply::Ack,
                            Err(reason) => Reply::Error {
                                message: message(&reason),
                            },
                        }
                    }
                    Err(e) => Reply::Error {
                        message: message(&e),
                    },
                };
                chan.send_reply(&reply)?;
            }
            Request::Hello { .. } => {
                return Err(WorkerError::Protocol("hello twice".into()));
            }
        }
    }
}

/// `text` cut to what an ipc message carries.
fn clip(mut text: String) -> String {
    if text.len() > ipc::MAX_TEXT {
        let mut end = ipc::MAX_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Maps the memory, builds and validates the queues, and activates the
/// model. Fds: one per region, a kick per queue, an interrupt per queue,
/// the config interrupt (the ipc crate checked the count).
fn activate(
    device: &mut dyn VirtioDevice,
    features: u64,
    regions: &[ipc::MemRegion],
    layouts: &[QueueLayout],
    fds: Vec<OwnedFd>,
) -> Result<Active, RequestError> {
    let mut fds = fds.into_iter();
    let mut ranges = Vec::with_capacity(regions.len());
    for r in regions {
        let fd = fds.next().ok_or(RequestError::MissingFd("memory"))?;
        let range = RamRange {
            guest_addr: r.guest_addr,
            size: r.size,
            file_offset: r.file_offset,
        };
        ranges.push((range, Arc::new(File::from(fd))));
    }
    let mem = map_ranges(&ranges)?;
    let kicks: Vec<OwnedFd> = fds.by_ref().take(layouts.len()).collect();
    let irqs: Vec<OwnedFd> = fds.by_ref().take(layouts.len()).collect();
    let config_irq = fds
        .next()
        .ok_or(RequestError::MissingFd("config interrupt"))?;
    let event_idx = features & (1 << devices::virtio::VIRTIO_F_RING_EVENT_IDX) != 0;
    let mut queues = Vec::with_capacity(layouts.len());
    for ((l, kick), irq) in layouts.iter().zip(kicks).zip(irqs) {
        let index = usize::from(l.index);
        if index >= device.num_queues() || queues.iter().any(|q: &ActiveQueue| q.index == index) {
            return Err(RequestError::QueueIndex(index));
        }
        let queue = build_queue(device.max_queue_size(), l, event_idx, &mem)?;
        queues.push(ActiveQueue {
            index,
            queue,
            kick: eventfd(kick),
            irq: eventfd(irq),
        });
    }
    device
        .activate(features)
        .map_err(RequestError::Activation)?;
    Ok(Active {
        features,
        mem,
        queues,
        _config_irq: eventfd(config_irq),
    })
}

/// What a new instance needs to carry on: features, queues and their
/// indices, the model's own state. Taken between requests, when every
/// chain the device took is completed (next avail equals next used).
fn save(device: &dyn VirtioDevice, a: &Active) -> DeviceState {
    let queues = a
        .queues
        .iter()
        .map(|q| QueueState {
            layout: QueueLayout {
                index: u16::try_from(q.index).unwrap_or(u16::MAX),
                size: q.queue.size(),
                desc: q.queue.desc_table(),
                avail: q.queue.avail_ring(),
                used: q.queue.used_ring(),
            },
            event_idx: q.queue.event_idx_enabled(),
            next_avail: q.queue.next_avail(),
            next_used: q.queue.next_used(),
        })
        .collect();
    DeviceState {
        features: a.features,
        queues,
        device: device.save_state(),
    }
}

/// Activates the model from a saved state (or, with `recover`, from what
/// the VMM knows of a device that died unsaved), accepting only state this
/// device could have reached: the queues' used indices are the ones in the
/// used rings, nothing is in flight, event indices follow the features,
/// and the model takes its own part. Then serves what waits and, when
/// recovering, interrupts the driver once per queue (an interrupt the dead
/// instance owed is not lost).
fn restore(
    device: &mut dyn VirtioDevice,
    regions: &[ipc::MemRegion],
    (state, bulk): (&DeviceState, Option<OwnedFd>),
    recover: bool,
    fds: Vec<OwnedFd>,
) -> Result<Active, RequestError> {
    let layouts: Vec<QueueLayout> = state.queues.iter().map(|q| q.layout).collect();
    let mut a = activate(device, state.features, regions, &layouts, fds)?;
    let event_idx = state.features & (1 << devices::virtio::VIRTIO_F_RING_EVENT_IDX) != 0;
    for (q, s) in a.queues.iter_mut().zip(&state.queues) {
        let index = q.index;
        if s.event_idx != event_idx {
            return Err(RequestError::EventIdx(index));
        }
        let used = q
            .queue
            .used_idx(&a.mem, std::sync::atomic::Ordering::Acquire)
            .map_err(|source| RequestError::UsedRing { index, source })?
            .0;
        if !recover {
            if s.next_used != used {
                return Err(RequestError::UsedIndex {
                    index,
                    saved: s.next_used,
                    ring: used,
                });
            }
            if s.next_avail != s.next_used {
                return Err(RequestError::InFlight {
                    index,
                    count: s.next_avail.wrapping_sub(s.next_used),
                });
            }
        }
        q.queue.set_next_avail(used);
        q.queue.set_next_used(used);
    }
    if recover {
        device.recovered();
    } else {
        device
            .restore_state(&state.device)
            .map_err(RequestError::State)?;
        if let Some(fd) = bulk {
            super::bulk::restore(device, &fd).map_err(RequestError::State)?;
        }
    }
    process_all(device, &mut a)?;
    if recover {
        for q in &a.queues {
            let _ = q.irq.write(1);
        }
    }
    Ok(a)
}

fn eventfd(fd: OwnedFd) -> EventFd {
    // SAFETY: the fd came from the VMM as an eventfd; EventFd takes
    // ownership, and a wrong kind only makes reads and writes fail.
    unsafe {
        <EventFd as std::os::fd::FromRawFd>::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(fd))
    }
}

fn build_queue(
    max: u16,
    l: &QueueLayout,
    event_idx: bool,
    mem: &GuestMemoryMmap,
) -> Result<Queue, RequestError> {
    let bad = |source| RequestError::Queue {
        index: l.index,
        source,
    };
    let mut q = Queue::new(max).map_err(bad)?;
    q.try_set_size(l.size).map_err(bad)?;
    q.try_set_desc_table_address(vm_memory::GuestAddress(l.desc))
        .map_err(bad)?;
    q.try_set_avail_ring_address(vm_memory::GuestAddress(l.avail))
        .map_err(bad)?;
    q.try_set_used_ring_address(vm_memory::GuestAddress(l.used))
        .map_err(bad)?;
    q.set_event_idx(event_idx);
    q.set_ready(true);
    if !q.is_valid(mem) {
        return Err(RequestError::OutsideMemory(l.index));
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_host::{greet, start_device, DeviceMode, Launch, SandboxOpts};
    use crate::kinds::rng::Rng;
    use crate::memory::GuestRam;
    use crate::remote::RemoteDevice;
    use crate::virtio_pci::{DeviceEvents, QueueLayout as Layout};
    use vm_memory::{Bytes, GuestAddress};

    const LAYOUT: QueueLayout = QueueLayout {
        index: 0,
        size: 16,
        desc: 0x1000,
        avail: 0x2000,
        used: 0x3000,
    };
    const FEATURES: u64 = (1 << 32) | (1 << devices::virtio::VIRTIO_F_RING_EVENT_IDX);

    /// An rng device in a thread of this process, greeted.
    fn rng(ram: &GuestRam) -> RemoteDevice {
        let kind = std::sync::Arc::new(Rng);
        let started = start_device(
            None,
            DeviceMode::Thread,
            "rng0",
            kind.clone(),
            SandboxOpts::default(),
            Launch::default(),
        )
        .unwrap();
        let memory = ram.ranges.iter().map(|r| (*r, ram.memfd.clone())).collect();
        let backend = ipc::Backend {
            kind: "rng".into(),
            params: crate::kinds::rng::params(),
            fds: 0,
        };
        greet(
            "rng0",
            (started.chan, None),
            kind.as_ref(),
            (&backend, &[]),
            &memory,
            0,
        )
        .unwrap()
    }

    fn events() -> DeviceEvents {
        DeviceEvents::new(1).unwrap()
    }

    const L: Layout = Layout {
        index: LAYOUT.index,
        size: LAYOUT.size,
        desc: LAYOUT.desc,
        avail: LAYOUT.avail,
        used: LAYOUT.used,
    };

    fn state(next_avail: u16, next_used: u16) -> DeviceState {
        DeviceState {
            features: FEATURES,
            queues: vec![QueueState {
                layout: LAYOUT,
                event_idx: true,
                next_avail,
                next_used,
            }],
            device: Vec::new(),
        }
    }

    fn set_used_idx(ram: &GuestRam, idx: u16) {
        ram.mem
            .write_obj(idx, GuestAddress(LAYOUT.used + 2))
            .unwrap();
    }

    #[test]
    fn a_device_restores_only_state_it_could_have_reached() {
        let ram = GuestRam::new(16 << 20, false).unwrap();
        let ev = events();
        let mut first = rng(&ram);
        first.start(FEATURES, &[L], &ev).unwrap();
        // The used ring says 3 chains were completed (by a device that
        // served them); the saved state must agree.
        set_used_idx(&ram, 3);
        let (saved, bulk) = first.pause().unwrap();
        assert!(bulk.is_none(), "rng keeps no bulk state");
        assert_eq!(saved.queues.len(), 1);
        assert_eq!(saved.features, FEATURES);
        first.shutdown();

        let mut second = rng(&ram);
        let refused = |d: &mut RemoteDevice, s: &DeviceState, why: &str| {
            let e = format!("{:#}", d.restore((s, None), false, &ev).unwrap_err());
            assert!(e.contains(why), "{e}");
        };
        // Its indices are where the first instance was: 0, not 3.
        refused(&mut second, &saved, "but the used ring says 3");
        set_used_idx(&ram, 0);
        refused(&mut second, &state(2, 0), "2 chains in flight");
        let mut no_event_idx = state(0, 0);
        no_event_idx.queues[0].event_idx = false;
        refused(&mut second, &no_event_idx, "event index state");
        let mut blob = state(0, 0);
        blob.device = vec![1];
        refused(&mut second, &blob, "device state refused");
        let mut unoffered = state(0, 0);
        unoffered.features |= 1 << 5;
        refused(&mut second, &unoffered, "activation refused");
        let mut outside = state(0, 0);
        outside.queues[0].layout.used = 1 << 40;
        refused(&mut second, &outside, "outside guest memory");
        second.restore((&saved, None), false, &ev).unwrap();
        assert_eq!(second.pause().unwrap().0, saved);
        second.shutdown();

        // Recovery takes the indices from the used ring and interrupts the
        // driver once (an interrupt the dead instance owed). The driver had
        // made those 9 chains available.
        set_used_idx(&ram, 9);
        ram.mem
            .write_obj(9u16, GuestAddress(LAYOUT.avail + 2))
            .unwrap();
        let _ = ev.irqs[0].read();
        let mut third = rng(&ram);
        third.restore((&state(0, 0), None), true, &ev).unwrap();
        assert_eq!(ev.irqs[0].read().unwrap(), 1);
        let (now, _) = third.pause().unwrap();
        assert_eq!((now.queues[0].next_avail, now.queues[0].next_used), (9, 9));
        third.shutdown();
    }
}
