//! The VMM's side of a device's control channel: a [`Backend`] for the
//! virtio-pci transport that speaks the ipc protocol, with a timeout on
//! every wait, whether the device runs in a process or a thread; and the
//! lifecycle calls the device host makes beside the transport (pause,
//! resume, restore, shutdown). Every answer is decoded by the ipc crate's
//! bounded decoder and checked here; a device that breaks the protocol is
//! killed and never used again.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipc::{
    Channel, DeviceInfo, DeviceState, IpcError, MemRegion, Reply, Request, PROTOCOL_VERSION,
};

use sandbox::process::Pidfd;
use vmm_sys_util::eventfd::EventFd;

use crate::memory::RamRange;
use crate::virtio_pci::{Backend, BackendError, DeviceDescription, DeviceEvents, QueueLayout};

/// Why a call to a device failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The device is gone (exited, killed, or dropped for misbehaving).
    #[error("device is not running")]
    NotRunning,
    /// It exited while the VMM waited for its answer.
    #[error("the device exited")]
    Exited,
    /// The channel failed or the device timed out.
    #[error(transparent)]
    Ipc(#[from] IpcError),
    /// The device refused the request, with its reason.
    #[error("{0}")]
    Refused(String),
    /// The device answered something the protocol does not allow here.
    #[error("unexpected answer {0}")]
    Unexpected(String),
    /// Its hello was not what the VMM asked for.
    #[error("{0}")]
    Hello(String),
    /// An activation named a queue the transport has no eventfds for.
    #[error("queue {0} is out of range")]
    QueueRange(u16),
    /// More unsolicited messages than the VMM reads at a time.
    #[error("more than {MAX_UNSOLICITED} unsolicited messages")]
    Flood,
}

type Result<T, E = RemoteError> = std::result::Result<T, E>;

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

/// Guest memory as a device maps it: each region with its memfd.
pub type DeviceMemory = Vec<(RamRange, Arc<File>)>;

/// A device on the other end of a control channel.
pub struct RemoteDevice {
    name: String,
    chan: Channel,
    info: DeviceDescription,
    memory: DeviceMemory,
    events: Vec<DeviceEvent>,
    dead: bool,
    process: Option<Pidfd>,
}

/// How long a device dropped from supervision has to exit on its own (it
/// was asked to, or has exited already) before it is killed.
pub const EXIT_GRACE: Duration = Duration::from_secs(1);

/// How many unsolicited messages a device may send between two of the
/// VMM's reads; more is a flood, and the device is killed.
const MAX_UNSOLICITED: usize = 64;

/// What the VMM expects a device's hello to say.
#[derive(Debug, Clone, Copy)]
pub struct Expected {
    /// The virtio device ID of its kind.
    pub device_type: u32,
}

/// Checks a device's self-description; `None` if it is usable.
fn check_info(info: &DeviceInfo, expected: Expected) -> Option<String> {
    if info.device_type != expected.device_type {
        return Some(format!(
            "device is of type {}, expected {}",
            info.device_type, expected.device_type
        ));
    }
    if info.num_queues == 0 || usize::from(info.num_queues) > ipc::MAX_QUEUES {
        return Some(format!("device reports {} queues", info.num_queues));
    }
    if info.max_queue_size == 0 || !info.max_queue_size.is_power_of_two() {
        return Some(format!("bad maximum queue size {}", info.max_queue_size));
    }
    None
}

impl RemoteDevice {
    /// Says hello to the device on `chan`, hands it its backend (`backend`
    /// and its fds) and learns what it is; it must be what `expected`
    /// says. `process` is the device process, killed when the device breaks
    /// the protocol (`None` for a device thread). `memory` is what it maps
    /// at activation and restore.
    pub fn connect(
        name: &str,
        (chan, process): (Channel, Option<Pidfd>),
        expected: Expected,
        backend: (&ipc::Backend, &[BorrowedFd<'_>]),
        memory: DeviceMemory,
        poll_us: u32,
    ) -> Result<Self> {
        let connected = Self::hello(&chan, expected, backend, poll_us);
        let info = match connected {
            Ok(info) => info,
            Err(e) => {
                // A device that failed its hello is not kept running.
                if let Some(p) = &process {
                    let _ = p.kill();
                }
                return Err(e);
            }
        };
        Ok(Self {
            name: name.to_owned(),
            chan,
            info: DeviceDescription {
                device_type: info.device_type,
                num_queues: info.num_queues,
                max_queue_size: info.max_queue_size,
                features: info.features,
                config: info.config,
            },
            memory,
            events: Vec::new(),
            dead: false,
            process,
        })
    }

    /// The same device, with `features` taken out of what it offers the
    /// driver (the transport offers what the description says).
    #[must_use]
    pub fn withholding(mut self, features: u64) -> Self {
        self.info.features &= !features;
        self
    }

    /// The hello and the device's answer, checked.
    fn hello(
        chan: &Channel,
        expected: Expected,
        backend: (&ipc::Backend, &[BorrowedFd<'_>]),
        poll_us: u32,
    ) -> Result<DeviceInfo> {
        chan.send_request(
            &Request::Hello {
                version: PROTOCOL_VERSION,
                backend: backend.0.clone(),
                poll_us,
            },
            backend.1,
        )?;
        let info = match chan.recv_reply(Some(REPLY_TIMEOUT))? {
            Reply::Welcome { version, info } if version == PROTOCOL_VERSION => info,
            Reply::Error { message } => return Err(RemoteError::Refused(message)),
            other => return Err(RemoteError::Hello(format!("answer to hello: {other:?}"))),
        };
        if let Some(why) = check_info(&info, expected) {
            return Err(RemoteError::Hello(why));
        }
        Ok(info)
    }

    /// The channel, to poll for unsolicited messages.
    pub fn channel(&self) -> &Channel {
        &self.chan
    }

    /// Its process, if it runs in one.
    pub fn pid(&self) -> Option<libc::pid_t> {
        self.process.as_ref().map(Pidfd::pid)
    }

    /// Its process's resident memory (VmRSS), in KiB, from the status file
    /// the spawner opened for it.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = self.process.as_ref()?.status_text()?;
        crate::host::status_kib(&status, "VmRSS:")
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
                Err(IpcError::Timeout) => break,
                // It exited (the spawner reports how) or hung up to run
                // on: `hung_up` kills it either way.
                Err(IpcError::Closed) => self.hung_up(),
                Err(e) => {
                    self.fail(RemoteError::Ipc(e));
                }
            }
        }
        std::mem::take(&mut self.events)
    }

    fn note_unsolicited(&mut self, r: Reply) {
        if self.events.len() >= MAX_UNSOLICITED {
            self.fail(RemoteError::Flood);
            return;
        }
        match r {
            Reply::ConfigChanged { config } => self.events.push(DeviceEvent::ConfigChanged(config)),
            Reply::NeedsReset { reason } => self.events.push(DeviceEvent::NeedsReset(reason)),
            Reply::ForbiddenSyscall { nr } => {
                let pid = self
                    .pid()
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
                self.fail(RemoteError::Unexpected(format!("message {other:?}")));
            }
        }
    }

    /// Sends `req` and waits for its answer, setting aside what the device
    /// says on its own meanwhile.
    fn call(&mut self, req: &Request, fds: &[BorrowedFd<'_>]) -> Result<Reply> {
        Ok(self.call_with(req, fds)?.0)
    }

    /// [`RemoteDevice::call`], with the fds the answer brings.
    fn call_with(
        &mut self,
        req: &Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Reply, Vec<OwnedFd>)> {
        if self.dead {
            return Err(RemoteError::NotRunning);
        }
        if let Err(e) = self.chan.send_request(req, fds) {
            return Err(self.fail(RemoteError::Ipc(e)));
        }
        loop {
            if self.dead {
                return Err(RemoteError::NotRunning);
            }
            let (r, got) = match self.chan.recv_reply_with(Some(REPLY_TIMEOUT)) {
                Ok(r) => r,
                // It exited (the spawner reports how) or hung up to run
                // on; not a protocol fault, and `hung_up` kills it.
                Err(IpcError::Closed) => {
                    self.hung_up();
                    return Err(RemoteError::Exited);
                }
                Err(e) => return Err(self.fail(RemoteError::Ipc(e))),
            };
            match r {
                Reply::ConfigChanged { .. }
                | Reply::NeedsReset { .. }
                | Reply::ForbiddenSyscall { .. } => self.note_unsolicited(r),
                other => return Ok((other, got)),
            }
        }
    }

    /// The device's end of the control socket is closed: it has exited
    /// (the spawner reports how), or it closed the socket to run on
    /// unsupervised, which it may not: it is killed either way (through
    /// its pidfd, so that no other process is hit if it is gone).
    fn hung_up(&mut self) {
        self.dead = true;
        if let Some(p) = &self.process {
            let _ = p.kill();
        }
    }

    /// The device broke the protocol (or timed out): it is hostile or
    /// wedged. Kill its process (the spawner then reports the exit and the
    /// host marks the device failed) and fail every later call.
    fn fail(&mut self, e: RemoteError) -> RemoteError {
        if !self.dead {
            self.dead = true;
            match &self.process {
                Some(p) => {
                    crate::log::error(&format!(
                        "device {} (pid {}) misbehaved: {e}; killing it",
                        self.name,
                        p.pid()
                    ));
                    if let Err(k) = p.kill() {
                        crate::log::error(&format!("device {}: cannot kill it: {k}", self.name));
                    }
                }
                None => crate::log::error(&format!(
                    "device {} misbehaved: {e}; stopped using it",
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
            Reply::Error { message } => Err(RemoteError::Refused(message)),
            other => Err(self.fail(RemoteError::Unexpected(format!("{other:?}")))),
        }
    }

    /// A driver write to the device configuration.
    pub fn config_write(&mut self, offset: u32, data: &[u8]) -> Result<()> {
        let req = Request::ConfigWrite {
            offset,
            data: data.to_vec(),
        };
        self.expect_ack(&req, &[])
    }

    /// DRIVER_OK: hands the device guest memory and the queues' eventfds.
    pub fn start(
        &mut self,
        features: u64,
        queues: &[QueueLayout],
        events: &DeviceEvents,
    ) -> Result<()> {
        let (regions, files) = self.regions();
        let fds = event_fds(&files, queues.iter().map(|q| q.index), events)?;
        let req = Request::Activate {
            features,
            regions,
            queues: queues.iter().map(|q| wire_layout(*q)).collect(),
        };
        self.expect_ack(&req, &fds)
    }

    /// Back to the state before activation.
    pub fn stop(&mut self) -> Result<()> {
        self.expect_ack(&Request::Reset, &[])
    }

    /// Stops serving the queues between requests and says where they are,
    /// with the model's bulk state (a memfd the VMM passes on unread to the
    /// next instance) if it has one.
    pub fn pause(&mut self) -> Result<(DeviceState, Option<OwnedFd>)> {
        match self.call_with(&Request::Pause, &[])? {
            (Reply::Saved { state, .. }, mut fds) => Ok((state, fds.pop())),
            (other, _) => Err(self.fail(RemoteError::Unexpected(format!("{other:?} to pause")))),
        }
    }

    /// Serves the queues again after [`RemoteDevice::pause`].
    pub fn resume(&mut self) -> Result<()> {
        self.expect_ack(&Request::Resume, &[])
    }

    /// Carries on from `state` in place of an activation; `recover` when
    /// the state is put together by the VMM for an instance that died
    /// unsaved.
    pub fn restore(
        &mut self,
        (state, bulk): (&DeviceState, Option<BorrowedFd<'_>>),
        recover: bool,
        events: &DeviceEvents,
    ) -> Result<()> {
        let (regions, files) = self.regions();
        let mut fds = event_fds(&files, state.queues.iter().map(|q| q.layout.index), events)?;
        fds.extend(bulk);
        let req = Request::Restore {
            regions,
            state: state.clone(),
            recover,
            bulk: bulk.is_some(),
        };
        self.expect_ack(&req, &fds)
    }
}

/// A transport queue layout as the protocol carries it.
pub fn wire_layout(q: QueueLayout) -> ipc::QueueLayout {
    ipc::QueueLayout {
        index: q.index,
        size: q.size,
        desc: q.desc,
        avail: q.avail,
        used: q.used,
    }
}

impl Backend for RemoteDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn description(&self) -> &DeviceDescription {
        &self.info
    }

    fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), BackendError> {
        Ok(self.config_write(offset, data)?)
    }

    fn activate(
        &mut self,
        features: u64,
        queues: &[QueueLayout],
        events: &DeviceEvents,
    ) -> Result<(), BackendError> {
        Ok(self.start(features, queues, events)?)
    }

    fn reset(&mut self) -> Result<(), BackendError> {
        Ok(self.stop()?)
    }
}

/// A device as the device host keeps it behind its transport: a
/// [`RemoteDevice`], or a device kind's wrapper around one (the escape
/// suite's kinds request their actions after an activation this way).
pub trait Hosted: Backend {
    /// The device underneath.
    fn remote(&self) -> &RemoteDevice;
    /// The device underneath, mutably.
    fn remote_mut(&mut self) -> &mut RemoteDevice;
}

impl Hosted for RemoteDevice {
    fn remote(&self) -> &RemoteDevice {
        self
    }
    fn remote_mut(&mut self) -> &mut RemoteDevice {
        self
    }
}

/// The fds of an activation, in the protocol's order: memory, the queues'
/// kicks, their interrupts, the configuration interrupt.
fn event_fds<'a>(
    files: &'a [Arc<File>],
    queues: impl Iterator<Item = u16> + Clone,
    events: &'a DeviceEvents,
) -> Result<Vec<BorrowedFd<'a>>> {
    let mut fds: Vec<BorrowedFd<'_>> = files.iter().map(|f| f.as_fd()).collect();
    for list in [&events.kicks, &events.irqs] {
        for q in queues.clone() {
            let e = list.get(usize::from(q)).ok_or(RemoteError::QueueRange(q))?;
            fds.push(borrow(e));
        }
    }
    fds.push(borrow(&events.config_irq));
    Ok(fds)
}

impl RemoteDevice {
    /// Ends the device: asked to shut down (if it was not), its process
    /// has until `deadline` to exit, and is killed through its pidfd if it
    /// has not (one that ignores Shutdown). The process is then no longer
    /// this handle's.
    pub fn end(&mut self, deadline: Instant) {
        self.shutdown();
        if let Some(p) = self.process.take() {
            if !p.wait_exit(deadline.saturating_duration_since(Instant::now())) {
                crate::log::error(&format!(
                    "device {} (pid {}) did not exit when asked; killing it",
                    self.name,
                    p.pid()
                ));
                let _ = p.kill();
            }
        }
    }
}

impl Drop for RemoteDevice {
    /// No device outlives its supervision: asked to shut down (if it was
    /// not), it has [`EXIT_GRACE`] to exit before it is killed.
    fn drop(&mut self) {
        self.end(Instant::now() + EXIT_GRACE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_backend() -> ipc::Backend {
        ipc::Backend {
            kind: "rng".into(),
            params: Vec::new(),
            fds: 0,
        }
    }
    const RNG: Expected = Expected { device_type: 4 };

    /// An rng device on `chan`, greeted without a backend or memory.
    fn connect_rng(chan: Channel) -> Result<RemoteDevice> {
        RemoteDevice::connect(
            "rng0",
            (chan, None),
            RNG,
            (&no_backend(), &[]),
            Vec::new(),
            0,
        )
    }

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
            assert!(connect_rng(chan).is_err());
            t.join().unwrap();
        }
    }

    #[test]
    fn a_silent_device_times_out() {
        let (vmm, dev) = Channel::pair().unwrap();
        let start = std::time::Instant::now();
        assert!(connect_rng(vmm).is_err());
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
        let mut d = connect_rng(chan).unwrap();
        t.join().unwrap();
        let events = d.poll_events();
        assert!(events.len() <= MAX_UNSOLICITED);
        assert!(
            d.stop().is_err(),
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
        let mut d = connect_rng(chan).unwrap();
        assert!(d.stop().is_err());
        assert!(d.stop().is_err());
        t.join().unwrap();
    }
}
