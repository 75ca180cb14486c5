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

use std::os::fd::OwnedFd;
use std::time::Duration;

use devices::virtio::{DeviceError, VirtioDevice};
use ipc::wait::WaitSet;
use ipc::{Channel, DeviceInfo, IpcError, Reply, Request, PROTOCOL_VERSION};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::poll::Poller;
use crate::kinds::{DeviceKind, KindError};
use crate::memory::MemoryError;
use wake::{add_backend, poll_queues, process_kicked, wait};

mod control;
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

/// What [`serve_model`]'s loop keeps from one wake-up to the next, beside
/// its waits and polling.
struct Worker<'a> {
    chan: &'a Channel,
    device: &'a mut dyn VirtioDevice,
    /// Memory, queues and features, once activated (or restored).
    active: Option<Active>,
    /// Paused: kicks stay in their eventfds for whoever serves the queues
    /// next.
    paused: bool,
    /// The configuration the VMM knows, to tell it when a restore moves
    /// it.
    announced: Vec<u8>,
}

/// Whether the loop goes on after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Serve,
    Stop,
}

/// The loop of [`serve`] once the model is built.
fn serve_model(
    chan: &Channel,
    device: &mut dyn VirtioDevice,
    confine: impl FnOnce() -> Result<(), ConfineError>,
    mut poller: Poller,
) -> Result<(), WorkerError> {
    let info = device_info(device);
    let announced = info.config.clone();
    // Confined before the welcome: when the VMM has its answer, the
    // device's filter is on (the VMM checks every thread's before the
    // guest runs).
    confine().map_err(WorkerError::Confine)?;
    chan.send_reply(&Reply::Welcome {
        version: PROTOCOL_VERSION,
        info,
    })?;
    let mut w = Worker {
        chan,
        device,
        active: None,
        paused: false,
        announced,
    };
    let mut wake = WaitSet::with_capacity(1 + 2 + ipc::MAX_QUEUES);
    let mut backend = Vec::new();
    // Queues polling found work on (bit i: `Active::queues[i]`; or
    // BACKEND_READY).
    let mut polled: u64 = 0;
    let mut backend_set = WaitSet::with_capacity(4);
    loop {
        let serving = w.active.as_ref().filter(|_| !w.paused);
        backend.clear();
        if serving.is_some() {
            w.device.backend_events(&mut backend);
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
        if !woke.backend {
            backend.clear();
        }
        polled = w.serve_queues(
            &backend,
            woke.kicks,
            polled,
            (&mut poller, &mut backend_set),
        )?;
        // The channel is read only when it woke the wait: a request costs
        // no look at an empty channel.
        if !woke.control {
            continue;
        }
        let next = match chan.recv_request(Some(Duration::ZERO)) {
            Ok((req, fds)) => w.handle(req, fds)?,
            Err(IpcError::Timeout) => Next::Serve,
            Err(IpcError::Closed) => Next::Stop,
            Err(e) => return Err(e.into()),
        };
        if next == Next::Stop {
            return Ok(());
        }
    }
}

impl Worker<'_> {
    /// Runs the queues that were kicked (`kicks`), that polling found work
    /// on (`polled`) or whose backend fds are `ready`, unless paused; then,
    /// if work came by a kick or by polling, polls for more (`poll`: the
    /// poller and the backend's fds it looks at). Returns the queues
    /// polling found work on. A queue that turned out unusable stops the
    /// device until the VMM resets it, which it is told.
    fn serve_queues(
        &mut self,
        ready: &[devices::virtio::BackendEvent],
        kicks: u64,
        polled: u64,
        (poller, backend_set): (&mut Poller, &mut WaitSet<()>),
    ) -> Result<u64, WorkerError> {
        let Some(a) = self.active.as_mut().filter(|_| !self.paused) else {
            return Ok(0);
        };
        if let Err(reason) = process_kicked(self.device, a, ready, kicks, polled) {
            // The queue is unusable: stop serving it and tell the VMM.
            self.active = None;
            self.device.reset();
            self.chan.send_reply(&Reply::NeedsReset {
                reason: message(&reason),
            })?;
            return Ok(0);
        }
        // Work that came by a kick or by polling: more may follow. Not a
        // backend's: its peer (a console's or vsock's host program) needs
        // the core polling would take, and a tap's frames gained nothing
        // from it (bench-latency, net rx).
        if kicks != 0 || polled != 0 {
            return Ok(poll_queues(poller, a, backend_set));
        }
        Ok(0)
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
