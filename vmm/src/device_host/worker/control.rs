//! What a worker does with the VMM's requests once it serves a model:
//! reset, pause (saving the state a new instance needs), resume, restore
//! (taking only state this device could have reached), configuration reads
//! and writes, and activation (mapping the memory and validating the
//! queues). Every reply goes back on the control channel.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use devices::virtio::VirtioDevice;
use ipc::{DeviceState, QueueLayout, QueueState, Reply, Request};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::wake::process_all;
use super::{message, Active, ActiveQueue, Next, RequestError, Worker, WorkerError};
use crate::memory::{map_ranges, RamRange};

impl Worker<'_> {
    /// Answers one request of the VMM; [`Next::Stop`] when it asked the
    /// device to end.
    pub(super) fn handle(
        &mut self,
        req: Request,
        mut fds: Vec<OwnedFd>,
    ) -> Result<Next, WorkerError> {
        let reply = match req {
            Request::Shutdown => return Ok(Next::Stop),
            Request::Hello { .. } => return Err(WorkerError::Protocol("hello twice".into())),
            Request::Pause => {
                self.answer_pause()?;
                return Ok(Next::Serve);
            }
            Request::Reset => {
                self.active = None;
                self.paused = false;
                self.device.reset();
                Reply::Ack
            }
            Request::Resume => {
                self.paused = false;
                let served = self.active.as_mut().map(|a| process_all(self.device, a));
                acked(served.unwrap_or(Ok(())))
            }
            Request::Restore {
                regions,
                state,
                recover,
                bulk,
            } => {
                let bulk = if bulk { fds.pop() } else { None };
                self.answer_restore(&regions, (&state, bulk), recover, fds)?
            }
            Request::ConfigRead { offset, len } => {
                let cfg = self.device.config();
                let start = usize::try_from(offset).unwrap_or(usize::MAX);
                let end = start.saturating_add(usize::try_from(len).unwrap_or(0));
                let data = cfg.get(start..end.min(cfg.len())).unwrap_or_default();
                Reply::ConfigData {
                    data: data.to_vec(),
                }
            }
            Request::ConfigWrite { offset, data } => acked(self.device.write_config(offset, &data)),
            Request::Activate {
                features,
                regions,
                queues,
            } => self.answer_activate(features, &regions, &queues, fds),
        };
        self.chan.send_reply(&reply)?;
        Ok(Next::Serve)
    }

    /// Stops serving the queues and answers with the state a new instance
    /// needs (none before activation), and the bulk state in a memfd.
    fn answer_pause(&mut self) -> Result<(), WorkerError> {
        self.paused = true;
        let state = self
            .active
            .as_ref()
            .map(|a| save(self.device, a))
            .unwrap_or_default();
        let memfd = self
            .active
            .as_ref()
            .and_then(|_| crate::device_host::bulk::saved(&self.device.save_bulk()));
        let reply = Reply::Saved {
            state,
            bulk: memfd.is_some(),
        };
        let fds: Vec<_> = memfd.iter().map(std::os::fd::AsFd::as_fd).collect();
        self.chan.send_reply_with(&reply, &fds)?;
        Ok(())
    }

    /// Activates the model with `features` on the memory and queues of
    /// `regions`, `queues` and `fds`, then serves the kicks that came
    /// before activation (they are not lost).
    fn answer_activate(
        &mut self,
        features: u64,
        regions: &[ipc::MemRegion],
        queues: &[QueueLayout],
        fds: Vec<OwnedFd>,
    ) -> Reply {
        self.active = None;
        let done = activate(self.device, features, regions, queues, fds).and_then(|mut a| {
            let first = process_all(self.device, &mut a);
            self.active = Some(a);
            first
        });
        acked(done)
    }

    /// Takes over a saved state ([`restore`]); tells the VMM first when
    /// the configuration it knows moved.
    fn answer_restore(
        &mut self,
        regions: &[ipc::MemRegion],
        saved: (&DeviceState, Option<OwnedFd>),
        recover: bool,
        fds: Vec<OwnedFd>,
    ) -> Result<Reply, WorkerError> {
        self.active = None;
        self.paused = false;
        match restore(self.device, regions, saved, recover, fds) {
            Ok(a) => {
                self.active = Some(a);
                let config = self.device.config();
                if config != self.announced {
                    self.chan.send_reply(&Reply::ConfigChanged {
                        config: config.clone(),
                    })?;
                    self.announced = config;
                }
                Ok(Reply::Ack)
            }
            Err(e) => {
                self.device.reset();
                Ok(Reply::Error {
                    message: message(&e),
                })
            }
        }
    }
}

/// `Ack` for what went through, else `Error` with why.
fn acked(done: Result<(), impl std::fmt::Display>) -> Reply {
    match done {
        Ok(()) => Reply::Ack,
        Err(e) => Reply::Error {
            message: message(&e),
        },
    }
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
            crate::device_host::bulk::restore(device, &fd).map_err(RequestError::State)?;
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

    /// A new eventfd, as the VMM would send it.
    fn eventfd_fd() -> (EventFd, OwnedFd) {
        let e = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).unwrap();
        let dup = e.try_clone().unwrap();
        // SAFETY: into_raw_fd hands over the fd the clone owned.
        let fd = unsafe {
            <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(
                dup,
            ))
        };
        (e, fd)
    }

    #[test]
    fn a_paused_worker_serves_nothing_and_carries_no_polled_work() {
        // Polling had found work on queue 0 (`polled`) and the queue was
        // kicked when the pause came: the paused worker must neither serve
        // nor hand the polled work to its next wait, which would then not
        // sleep (it spun until resumed).
        let ram = GuestRam::new(16 << 20, false).unwrap();
        let memfd = OwnedFd::from(ram.memfd.try_clone().unwrap());
        let regions = [ipc::MemRegion {
            guest_addr: 0,
            size: 16 << 20,
            file_offset: 0,
        }];
        let (kick, kick_fd) = eventfd_fd();
        let (_irq, irq_fd) = eventfd_fd();
        let (_config, config_fd) = eventfd_fd();
        let mut model = devices::rng::Rng::new();
        let a = activate(
            &mut model,
            FEATURES,
            &regions,
            &[LAYOUT],
            vec![memfd, kick_fd, irq_fd, config_fd],
        )
        .unwrap();
        let (chan, _vmm) = ipc::Channel::pair().unwrap();
        let mut w = Worker {
            chan: &chan,
            device: &mut model,
            active: Some(a),
            paused: true,
            announced: Vec::new(),
        };
        kick.write(1).unwrap();
        let mut poller = crate::device_host::poll::Poller::new(1000);
        let mut backend = ipc::wait::WaitSet::with_capacity(4);
        let polled = w
            .serve_queues(&[], 1, 1, (&mut poller, &mut backend))
            .unwrap();
        assert_eq!(polled, 0);
        // The kick stays for whoever serves the queue next.
        assert_eq!(kick.read().unwrap(), 1);
    }
}
