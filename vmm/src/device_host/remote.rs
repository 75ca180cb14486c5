//! The VMM's side of a device's control channel: a [`Backend`] for the
//! virtio-pci transport that speaks the ipc protocol, with a timeout on
//! every wait, whether the device runs in a process or a thread.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use ipc::{
    Channel, DeviceInfo, DeviceState, MemRegion, QueueLayout, Reply, Request, PROTOCOL_VERSION,
};

use vmm_sys_util::eventfd::EventFd;

use crate::memory::RamRange;
use crate::virtio_pci::{Backend, DeviceEvents};

/// An eventfd as a borrowed fd.
fn borrow(e: &EventFd) -> BorrowedFd<'_> {
    // SAFETY: the EventFd owns the fd and outlives the borrow.
    unsafe { BorrowedFd::borrow_raw(e.as_raw_fd()) }
}

/// How long the VMM waits for any answer from a device.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// Something the device said on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceEvent {
    /// New device configuration.
    ConfigChanged(Vec<u8>),
    /// The device cannot go on without a reset.
    NeedsReset(String),
    /// The device made a forbidden syscall (already logged).
    ForbiddenSyscall(u32),
}

/// A device on the other end of a control channel.
pub struct RemoteDevice {
    name: String,
    chan: Channel,
    info: DeviceInfo,
    memory: Vec<(RamRange, Arc<File>)>,
    events: Vec<DeviceEvent>,
    dead: bool,
    pid: Option<libc::pid_t>,
}

/// How many unsolicited messages a device may send between two of the
/// VMM's reads; more is a flood, and the device is killed.
const MAX_UNSOLICITED: usize = 64;

impl RemoteDevice {
    /// Says hello to the device on `chan`, hands it its backend (`backend`
    /// and its fds) and learns what it is. The device must be of
    /// `expected_type`. `pid` is the device process, killed when the device
    /// breaks the protocol (`None` for a device thread).
    pub fn connect(
        name: &str,
        pid: Option<libc::pid_t>,
        chan: Channel,
        expected_type: u32,
        backend: (&ipc::Backend, &[BorrowedFd<'_>]),
        memory: Vec<(RamRange, Arc<File>)>,
    ) -> Result<Self> {
        chan.send_request(
            &Request::Hello {
                version: PROTOCOL_VERSION,
                backend: backend.0.clone(),
            },
            backend.1,
        )
        .with_context(|| format!("{name}: cannot greet the device"))?;
        let info = match chan
            .recv_reply(Some(REPLY_TIMEOUT))
            .with_context(|| format!("{name}: no hello from the device"))?
        {
            Reply::Welcome { version, info } if version == PROTOCOL_VERSION => info,
            Reply::Error { message } => bail!("{name}: device refused: {message}"),
            other => bail!("{name}: unexpected answer to hello: {other:?}"),
        };
        if info.device_type != expected_type {
            bail!(
                "{name}: device is of type {}, expected {expected_type}",
                info.device_type
            );
        }
        if info.num_queues == 0 || usize::from(info.num_queues) > ipc::MAX_QUEUES {
            bail!("{name}: device reports {} queues", info.num_queues);
        }
        if info.max_queue_size == 0 || !info.max_queue_size.is_power_of_two() {
            bail!("{name}: bad maximum queue size {}", info.max_queue_size);
        }
        Ok(Self {
            name: name.to_owned(),
            chan,
            info,
            memory,
            events: Vec::new(),
            dead: false,
            pid,
        })
    }

    /// The channel, to poll for unsolicited messages.
    pub fn channel(&self) -> &Channel {
        &self.chan
    }

    /// Whether the device is gone (exited, killed, or dropped for breaking
    /// the protocol).
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// Marks the device as gone: later calls fail at once.
    pub fn mark_dead(&mut self) {
        self.dead = true;
    }

    /// Reads what the device sent on its own, without waiting.
    pub fn poll_events(&mut self) -> Vec<DeviceEvent> {
        while !self.dead {
            match self.chan.recv_reply(Some(Duration::ZERO)) {
                Ok(r) => self.note_unsolicited(r),
                Err(ipc::IpcError::Timeout) => break,
                // It exited; the spawner reports how.
                Err(ipc::IpcError::Closed) => self.dead = true,
                Err(e) => {
                    self.fail(anyhow!(e));
                }
            }
        }
        std::mem::take(&mut self.events)
    }

    fn note_unsolicited(&mut self, r: Reply) {
        if self.events.len() >= MAX_UNSOLICITED {
            self.fail(anyhow!("more than {MAX_UNSOLICITED} unsolicited messages"));
            return;
        }
        match r {
            Reply::ConfigChanged { config } => self.events.push(DeviceEvent::ConfigChanged(config)),
            Reply::NeedsReset { reason } => self.events.push(DeviceEvent::NeedsReset(reason)),
            Reply::ForbiddenSyscall { nr } => {
                let pid = self
                    .pid
                    .map_or_else(|| "thread".to_owned(), |p| format!("pid {p}"));
                crate::log::error(&format!(
                    "device {} ({pid}) made forbidden syscall {}",
                    self.name,
                    sandbox::syscalls::describe(i64::from(nr))
                ));
                // Counted against the flood limit like any other message.
                self.events.push(DeviceEvent::ForbiddenSyscall(nr));
            }
            other => {
                self.fail(anyhow!("unexpected message {other:?}"));
            }
        }
    }

    /// Sends `req` and waits for its answer, setting aside what the device
    /// says on its own meanwhile.
    fn call(&mut self, req: &Request, fds: &[BorrowedFd<'_>]) -> Result<Reply> {
        if self.dead {
            bail!("device is not running");
        }
        self.chan
            .send_request(req, fds)
            .map_err(|e| self.fail(anyhow!(e)))?;
        loop {
            if self.dead {
                bail!("device is not running");
            }
            let r = match self.chan.recv_reply(Some(REPLY_TIMEOUT)) {
                Ok(r) => r,
                // It exited (the spawner reports how); not a protocol fault.
                Err(ipc::IpcError::Closed) => {
                    self.dead = true;
                    bail!("the device exited");
                }
                Err(e) => return Err(self.fail(anyhow!(e))),
            };
            match r {
                Reply::ConfigChanged { .. }
                | Reply::NeedsReset { .. }
                | Reply::ForbiddenSyscall { .. } => self.note_unsolicited(r),
                other => return Ok(other),
            }
        }
    }

    /// The device broke the protocol (or timed out): it is hostile or
    /// wedged. Kill its process (the spawner then reports the exit and the
    /// host marks the device failed) and fail every later call.
    fn fail(&mut self, e: anyhow::Error) -> anyhow::Error {
        if !self.dead {
            self.dead = true;
            match self.pid {
                Some(pid) => {
                    crate::log::error(&format!(
                        "device {} (pid {pid}) misbehaved: {e:#}; killing it",
                        self.name
                    ));
                    // SAFETY: kill has no memory effects; the pid is our
                    // device's, not reaped before the spawner reports it.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                None => crate::log::error(&format!(
                    "device {} misbehaved: {e:#}; stopped using it",
                    self.name
                )),
            }
        }
        e
    }

    /// Asks the device to exit.
    pub fn shutdown(&mut self) {
        if !self.dead {
            let _ = self.chan.send_request(&Request::Shutdown, &[]);
            self.dead = true;
        }
    }

    /// The memory regions the device maps and their fds.
    fn regions(&self) -> (Vec<MemRegion>, Vec<Arc<File>>) {
        let regions = self
            .memory
            .iter()
            .map(|(r, _)| MemRegion {
                guest_addr: r.guest_addr,
                size: r.size,
                file_offset: r.file_offset,
            })
            .collect();
        (
            regions,
            self.memory.iter().map(|(_, f)| f.clone()).collect(),
        )
    }

    fn expect_ack(&mut self, req: &Request, fds: &[BorrowedFd<'_>]) -> Result<()> {
        match self.call(req, fds)? {
            Reply::Ack => Ok(()),
            Reply::Error { message } => bail!("{message}"),
            other => Err(self.fail(anyhow!("unexpected answer {other:?}"))),
        }
    }
}

impl Backend for RemoteDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<()> {
        self.expect_ack(
            &Request::ConfigWrite {
                offset,
                data: data.to_vec(),
            },
            &[],
        )
    }

    fn activate(
        &mut self,
        features: u64,
        queues: &[QueueLayout],
        events: &DeviceEvents,
    ) -> Result<()> {
        let (regions, files) = self.regions();
        let fds = event_fds(&files, queues, events)?;
        let req = Request::Activate {
            features,
            regions,
            queues: queues.to_vec(),
        };
        self.expect_ack(&req, &fds)
    }

    fn reset(&mut self) -> Result<()> {
        self.expect_ack(&Request::Reset, &[])
    }

    fn pause(&mut self) -> Result<DeviceState> {
        match self.call(&Request::Pause, &[])? {
            Reply::Saved { state } => Ok(state),
            other => Err(self.fail(anyhow!("unexpected answer to pause {other:?}"))),
        }
    }

    fn resume(&mut self) -> Result<()> {
        self.expect_ack(&Request::Resume, &[])
    }

    fn restore(&mut self, state: &DeviceState, recover: bool, events: &DeviceEvents) -> Result<()> {
        let (regions, files) = self.regions();
        let layouts: Vec<QueueLayout> = state.queues.iter().map(|q| q.layout).collect();
        let fds = event_fds(&files, &layouts, events)?;
        let req = Request::Restore {
            regions,
            state: state.clone(),
            recover,
        };
        self.expect_ack(&req, &fds)
    }
}

/// The fds of an activation, in the protocol's order: memory, the queues'
/// kicks, their interrupts, the configuration interrupt.
fn event_fds<'a>(
    files: &'a [Arc<File>],
    queues: &[QueueLayout],
    events: &'a DeviceEvents,
) -> Result<Vec<BorrowedFd<'a>>> {
    let mut fds: Vec<BorrowedFd<'_>> = files.iter().map(|f| f.as_fd()).collect();
    for list in [&events.kicks, &events.irqs] {
        for q in queues {
            let e = list
                .get(usize::from(q.index))
                .context("queue index out of range")?;
            fds.push(borrow(e));
        }
    }
    fds.push(borrow(&events.config_irq));
    Ok(fds)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_BACKEND: (&ipc::Backend, &[BorrowedFd<'_>]) = (&ipc::Backend::None, &[]);

    fn info() -> DeviceInfo {
        DeviceInfo {
            device_type: 4,
            num_queues: 1,
            max_queue_size: 256,
            features: 0,
            config: Vec::new(),
        }
    }

    /// A device thread that answers hello with `welcome`, then runs `then`.
    fn peer(
        welcome: Reply,
        then: impl FnOnce(&Channel) + Send + 'static,
    ) -> (Channel, std::thread::JoinHandle<()>) {
        let (vmm, dev) = Channel::pair().unwrap();
        let t = std::thread::spawn(move || {
            let _ = dev.recv_request(Some(Duration::from_secs(5)));
            let _ = dev.send_reply(&welcome);
            then(&dev);
        });
        (vmm, t)
    }

    #[test]
    fn a_wrong_hello_is_refused() {
        for welcome in [
            Reply::Ack,
            Reply::Welcome {
                version: PROTOCOL_VERSION + 1,
                info: info(),
            },
            Reply::Welcome {
                version: PROTOCOL_VERSION,
                info: DeviceInfo {
                    num_queues: 0,
                    ..info()
                },
            },
            Reply::Welcome {
                version: PROTOCOL_VERSION,
                info: DeviceInfo {
                    max_queue_size: 100,
                    ..info()
                },
            },
            Reply::Welcome {
                version: PROTOCOL_VERSION,
                info: DeviceInfo {
                    device_type: 2,
                    ..info()
                },
            },
        ] {
            let (chan, t) = peer(welcome, |_| {});
            assert!(RemoteDevice::connect("rng0", None, chan, 4, NO_BACKEND, Vec::new()).is_err());
            t.join().unwrap();
        }
    }

    #[test]
    fn a_silent_device_times_out() {
        let (vmm, dev) = Channel::pair().unwrap();
        let start = std::time::Instant::now();
        assert!(RemoteDevice::connect("rng0", None, vmm, 4, NO_BACKEND, Vec::new()).is_err());
        assert!(start.elapsed() < REPLY_TIMEOUT + Duration::from_secs(1));
        drop(dev);
    }

    #[test]
    fn a_flooding_device_is_dropped() {
        let welcome = Reply::Welcome {
            version: PROTOCOL_VERSION,
            info: info(),
        };
        let (chan, t) = peer(welcome, |dev| {
            for _ in 0..=MAX_UNSOLICITED * 2 {
                let reply = Reply::ConfigChanged { config: vec![1] };
                if dev.send_reply(&reply).is_err() {
                    break;
                }
            }
        });
        let mut d = RemoteDevice::connect("rng0", None, chan, 4, NO_BACKEND, Vec::new()).unwrap();
        t.join().unwrap();
        let events = d.poll_events();
        assert!(events.len() <= MAX_UNSOLICITED);
        assert!(
            d.reset().is_err(),
            "a flooding device must not be used again"
        );
    }

    #[test]
    fn a_wrong_answer_ends_the_device() {
        let welcome = Reply::Welcome {
            version: PROTOCOL_VERSION,
            info: info(),
        };
        let (chan, t) = peer(welcome, |dev| {
            let _ = dev.recv_request(Some(Duration::from_secs(5)));
            let _ = dev.send_reply(&Reply::ConfigData { data: vec![0] });
            let _ = dev.recv_request(Some(Duration::from_millis(200)));
        });
        let mut d = RemoteDevice::connect("rng0", None, chan, 4, NO_BACKEND, Vec::new()).unwrap();
        assert!(d.reset().is_err());
        assert!(d.reset().is_err());
        t.join().unwrap();
    }
}
