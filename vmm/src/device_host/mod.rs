//! Where devices run: the only process-aware code of skvm.
//!
//! Each virtio device instance runs the same worker loop ([`worker`]) over
//! an ipc control channel, either in its own process (`--device-mode
//! process`, the default: started by the [`spawner`], confined by seccomp
//! before it touches guest data) or in a VMM thread (`--device-mode
//! thread`, to measure what isolation costs, and always for kinds without
//! a [`crate::kinds::Confinement`]). The VMM side is a
//! [`crate::remote::RemoteDevice`] behind the device's virtio-pci transport
//! either way; the transport keeps registers, and this module does what
//! the transport must not: supervise, restart and restore.
//!
//! Supervision: the spawner reports every device process exit; the host logs
//! the device, pid and signal, then starts a new instance that carries on
//! from what the VMM knows (`--on-device-failure restart`, the default: see
//! [`DeviceHost::respawn`]), marks the device DEVICE_NEEDS_RESET for the
//! guest (`reset`) or stops the VM (`exit`). A running device can also be
//! paused, saved and replaced on request ([`DeviceHost::restart`]).

pub mod jail;
pub mod policy;
mod process;
pub mod spawner;
pub mod worker;

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use ipc::{Channel, DeviceState, QueueState};

use crate::exit::ExitReason;
use crate::irq::Routes;
use crate::kinds::{DeviceKind, Opened};
use crate::log;
use crate::pci::PciBus;
use crate::remote::{DeviceEvent, DeviceMemory, Expected, Hosted, RemoteDevice};
use crate::virtio_pci::{DriverState, VirtioPci};
pub use process::{process_main, DeviceArgs};
use spawner::{SingleThreaded, Spawner};

/// Where device models run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceMode {
    /// Each device in its own sandboxed process.
    Process,
    /// Each device in a thread of the VMM (no isolation; for comparison).
    Thread,
}

/// What to do when a device process dies or gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnFailure {
    /// Start a new device process that carries on where the old one
    /// stopped (within the restart limit).
    Restart,
    /// Keep the guest running with the device marked DEVICE_NEEDS_RESET.
    Reset,
    /// Stop the VM with an error.
    Exit,
}

/// What a device's seccomp filter does on a syscall its policy forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SeccompMode {
    /// The kernel kills the device process (the default).
    Kill,
    /// The syscall fails with ENOSYS and the device reports it; skvm logs
    /// "device NAME (pid N) made forbidden syscall NAME". For debugging.
    Trap,
    /// The kernel logs the syscall and allows it. For debugging.
    Log,
}

/// Whether devices may run without namespaces where the host forbids them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Degraded {
    /// Refuse to start a device that cannot be fully confined.
    Deny,
    /// Warn, and run it with seccomp, no capabilities and rlimits only.
    Allow,
}

/// How device processes are confined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxOpts {
    /// Seccomp's action on forbidden syscalls.
    pub seccomp: SeccompMode,
    /// Whether to fall back to no namespaces.
    pub degraded: Degraded,
    /// No confinement at all (`skvm drive --unconfined`, to measure the
    /// sandbox's cost; never for `skvm run`).
    pub unconfined: bool,
}

impl Default for SandboxOpts {
    fn default() -> Self {
        Self {
            seccomp: SeccompMode::Kill,
            degraded: Degraded::Deny,
            unconfined: false,
        }
    }
}

/// The transport of a hosted device.
type Transport = VirtioPci<Box<dyn Hosted>>;

struct Device {
    name: String,
    kind: Arc<dyn DeviceKind>,
    /// What the device serves, for new instances.
    backend: ipc::Backend,
    /// The backend's fds (a disk image: holding it keeps its lock).
    backend_fds: Vec<OwnedFd>,
    pid: Option<libc::pid_t>,
    transport: Arc<Mutex<Transport>>,
    thread: Option<JoinHandle<()>>,
    failed: bool,
    paused: bool,
    /// Instances started after the first.
    restarts: u32,
    /// When the restarts of the last minute happened.
    recent_restarts: VecDeque<Instant>,
}

/// The VM's devices and, in process mode, the spawner.
pub struct DeviceHost {
    mode: DeviceMode,
    on_failure: OnFailure,
    restart_limit: u32,
    sandbox: SandboxOpts,
    spawner: Option<Spawner>,
    /// Guest memory as devices map it.
    memory: DeviceMemory,
    devices: Vec<Device>,
}

/// What one device looks like from outside, for `skvm ctl status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStatus {
    /// "rng0", "blk0", ...
    pub name: String,
    /// Its process (process mode).
    pub pid: Option<libc::pid_t>,
    /// "running", "paused" or "failed".
    pub state: &'static str,
    /// Instances started after the first.
    pub restarts: u32,
    /// Resident memory of its process, KiB.
    pub rss_kib: Option<u64>,
    /// The rings of each queue the driver runs.
    pub queues: Vec<crate::virtio_pci::QueueLayout>,
}

/// How long each step of replacing a running device took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartTimes {
    /// Pause and save.
    pub save: Duration,
    /// Stop the old instance, start and greet the new one.
    pub spawn: Duration,
    /// Restore and resume.
    pub restore: Duration,
    /// The new instance's process.
    pub pid: Option<libc::pid_t>,
}

/// Where a device of `kind` runs: kinds without a confinement (virtio-mem)
/// always in a VMM thread, every other one as `mode` says.
fn mode_for(kind: &dyn DeviceKind, mode: DeviceMode) -> DeviceMode {
    match kind.confinement() {
        Some(_) => mode,
        None => DeviceMode::Thread,
    }
}

/// The state of a running device as the transport knows it: features and
/// queue layouts (no indices), for an instance that died unsaved.
fn known_state(driver: &DriverState) -> DeviceState {
    let event_idx = driver.features & (1 << devices::virtio::VIRTIO_F_RING_EVENT_IDX) != 0;
    DeviceState {
        features: driver.features,
        queues: driver
            .queues
            .iter()
            .map(|q| QueueState {
                layout: crate::remote::wire_layout(*q),
                event_idx,
                next_avail: 0,
                next_used: 0,
            })
            .collect(),
        device: Vec::new(),
    }
}

/// Stops a running device between requests and returns its state; `None`
/// when it is not running (nothing to save).
fn pause(t: &mut Transport) -> Result<Option<DeviceState>> {
    if !t.is_active() {
        return Ok(None);
    }
    Ok(Some(t.backend_mut().remote_mut().pause()?))
}

/// Brings a new instance, just put in place, to where the old one was:
/// `saved`, or without it (the old instance died unsaved) what the
/// transport knows, with the indices from the used rings. On failure the
/// device is marked DEVICE_NEEDS_RESET.
fn carry_on(t: &mut Transport, saved: Option<DeviceState>) -> Result<()> {
    let Some(driver) = t.driver_state() else {
        return Ok(());
    };
    let recover = saved.is_none();
    let state = saved.unwrap_or_else(|| known_state(&driver));
    let (backend, events) = t.backend_and_events();
    if let Err(e) = backend.remote_mut().restore(&state, recover, events) {
        t.device_failed();
        return Err(anyhow::Error::new(e).context("restore failed"));
    }
    Ok(())
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DeviceHost {
    /// Sets up device hosting. In process mode this forks the spawner,
    /// which `single` proves safe.
    pub fn new(
        mode: DeviceMode,
        (on_failure, restart_limit): (OnFailure, u32),
        sandbox: SandboxOpts,
        single: SingleThreaded,
    ) -> Result<Self> {
        let spawner = match mode {
            DeviceMode::Process => Some(Spawner::start(&single)?),
            DeviceMode::Thread => None,
        };
        Ok(Self {
            mode,
            on_failure,
            restart_limit,
            sandbox,
            spawner,
            memory: Vec::new(),
            devices: Vec::new(),
        })
    }

    /// Sets the guest memory devices map: boot RAM before any device is
    /// added; after a memory hotplug, for the instances started from now
    /// on (what [`DeviceHost::rebuild_all`] gives every device).
    pub fn set_memory(&mut self, memory: DeviceMemory) {
        self.memory = memory;
    }

    /// Starts device `name` (e.g. "rng0") of `kind` over `opened` (whose
    /// fds the host keeps) and plugs its transport into `bus`, with its
    /// interrupts and notifications through `routes`.
    pub fn add(
        &mut self,
        name: &str,
        kind: Arc<dyn DeviceKind>,
        opened: Opened,
        bus: &mut PciBus,
        routes: &Arc<dyn Routes>,
    ) -> Result<()> {
        let Opened {
            params,
            fds: backend_fds,
        } = opened;
        let backend = ipc::Backend {
            kind: kind.name().to_owned(),
            params,
            fds: u8::try_from(backend_fds.len()).context("too many backend fds")?,
        };
        let started = start_device(
            self.spawner.as_ref(),
            mode_for(kind.as_ref(), self.mode),
            name,
            kind.clone(),
            self.sandbox,
        )?;
        let (pid, thread) = (started.pid, started.thread);
        let remote = greet(
            name,
            (started.chan, pid),
            kind.as_ref(),
            (&backend, &backend_fds),
            &self.memory,
        )?;
        let index = u32::try_from(self.devices.len()).unwrap_or(u32::MAX);
        let bar = crate::layout::bar_slot(index).context("too many devices")?;
        let transport = VirtioPci::new(kind.host(remote), kind.pci_class(), bar, routes.clone())
            .with_context(|| format!("device {name}"))?;
        let transport = Arc::new(Mutex::new(transport));
        if bus.add(transport.clone()).is_none() {
            bail!("{name}: the PCI bus is full");
        }
        match pid {
            Some(p) => log::debug(&format!("device {name} started (pid {p})")),
            None => log::debug(&format!("device {name} started (thread)")),
        }
        self.devices.push(Device {
            name: name.to_owned(),
            kind,
            backend,
            backend_fds,
            pid,
            transport,
            thread,
            failed: false,
            paused: false,
            restarts: 0,
            recent_restarts: VecDeque::new(),
        });
        Ok(())
    }

    /// Starts a new instance of device `i` and puts it in place of the
    /// current one, which is gone or stopped: it carries on from `saved`,
    /// or (`None`, the old one died unsaved) from what the transport knows.
    /// Returns the new process's pid and how long the restore took.
    fn respawn(
        &mut self,
        i: usize,
        saved: Option<DeviceState>,
    ) -> Result<(Option<libc::pid_t>, Duration)> {
        let d = self.devices.get_mut(i).context("no such device")?;
        if let Some(t) = d.thread.take() {
            let _ = t.join();
        }
        let started = start_device(
            self.spawner.as_ref(),
            mode_for(d.kind.as_ref(), self.mode),
            &d.name,
            d.kind.clone(),
            self.sandbox,
        )?;
        let remote = greet(
            &d.name,
            (started.chan, started.pid),
            d.kind.as_ref(),
            (&d.backend, &d.backend_fds),
            &self.memory,
        )?;
        d.pid = started.pid;
        d.thread = started.thread;
        d.failed = false;
        d.paused = false;
        d.restarts = d.restarts.saturating_add(1);
        let (restored, events) = {
            let mut t = lock(&d.transport);
            let restore_start = Instant::now();
            let mut old = t.swap_backend(d.kind.host(remote))?;
            carry_on(&mut t, saved)?;
            let restored = restore_start.elapsed();
            old.remote_mut().shutdown();
            (restored, t.backend_mut().remote_mut().poll_events())
        };
        // What the new instance said while it was restored (a configuration
        // that moved on from its hello: virtio-mem's plugged size).
        for ev in events {
            if let Some(ExitReason::Fatal(msg)) = self.device_event(i, ev) {
                log::error(&msg);
            }
        }
        Ok((pid_of(self.devices.get(i)), restored))
    }

    /// Whether device `i` may be restarted once more now (at most
    /// `restart_limit` times in any minute); counts the restart if so.
    fn restart_allowed(&mut self, i: usize) -> bool {
        let limit = usize::try_from(self.restart_limit).unwrap_or(usize::MAX);
        let Some(d) = self.devices.get_mut(i) else {
            return false;
        };
        let now = Instant::now();
        while d
            .recent_restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
        {
            d.recent_restarts.pop_front();
        }
        if d.recent_restarts.len() >= limit {
            return false;
        }
        d.recent_restarts.push_back(now);
        true
    }

    fn index_of(&self, name: &str) -> Result<usize> {
        self.devices
            .iter()
            .position(|d| d.name == name)
            .with_context(|| {
                let names: Vec<&str> = self.devices.iter().map(|d| d.name.as_str()).collect();
                format!("no device {name} (devices: {})", names.join(", "))
            })
    }

    /// Replaces running device `name` by a new instance: pause and save,
    /// stop, start a new one (a new process with its own sandbox), restore.
    /// The guest sees a pause of its I/O on that device and nothing else.
    pub fn restart(&mut self, name: &str) -> Result<RestartTimes> {
        let i = self.index_of(name)?;
        let d = &mut self.devices[i];
        if d.failed {
            bail!("device {name} has failed; the guest must reset it");
        }
        let start = Instant::now();
        let saved = {
            let mut t = lock(&d.transport);
            let saved = pause(&mut t).with_context(|| format!("device {name}: cannot save"))?;
            t.backend_mut().remote_mut().shutdown();
            saved
        };
        let saved_at = Instant::now();
        // The old process may still be on its way out; its exit report then
        // names a pid no device has and is ignored.
        let respawned = self.respawn(i, saved);
        let done = Instant::now();
        let (pid, restore) = match respawned {
            Ok(r) => r,
            Err(e) => {
                let d = &mut self.devices[i];
                d.failed = true;
                lock(&d.transport).device_failed();
                return Err(e.context(format!(
                    "device {name}: cannot restart; the guest sees it as needing a reset"
                )));
            }
        };
        log::info(&format!(
            "device {name} replaced by a new instance{}",
            pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
        ));
        Ok(RestartTimes {
            save: saved_at - start,
            spawn: (done - saved_at).saturating_sub(restore),
            restore,
            pid,
        })
    }

    /// Changes the parameters of device `name`, for its next instance.
    pub fn set_params(&mut self, name: &str, params: Vec<u8>) -> Result<()> {
        let i = self.index_of(name)?;
        self.devices[i].backend.params = params;
        Ok(())
    }

    /// Replaces every running device by a new instance over the current
    /// memory (a new process and sandbox in process mode), `last` after all
    /// others. Returns each device's times; a device that cannot be
    /// restarted is marked failed and reported, the others go on.
    pub fn rebuild_all(&mut self, last: &str) -> (Vec<(String, RestartTimes)>, Vec<String>) {
        let mut names: Vec<String> = self
            .devices
            .iter()
            .filter(|d| !d.failed)
            .map(|d| d.name.clone())
            .collect();
        names.sort_by_key(|n| n == last);
        let mut done = Vec::with_capacity(names.len());
        let mut errors = Vec::new();
        for name in names {
            match self.restart(&name) {
                Ok(t) => done.push((name, t)),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        (done, errors)
    }

    /// Pauses every running device (their kicks wait in the eventfds).
    pub fn pause_all(&mut self) -> Result<()> {
        for d in self.devices.iter_mut().filter(|d| !d.failed && !d.paused) {
            let mut t = lock(&d.transport);
            if pause(&mut t)
                .with_context(|| format!("device {}: cannot pause", d.name))?
                .is_some()
            {
                d.paused = true;
            }
        }
        Ok(())
    }

    /// Lets every paused device serve its queues again.
    pub fn resume_all(&mut self) -> Result<()> {
        for d in self.devices.iter_mut().filter(|d| d.paused) {
            d.paused = false;
            let mut t = lock(&d.transport);
            if t.is_active() {
                t.backend_mut()
                    .remote_mut()
                    .resume()
                    .with_context(|| format!("device {}: cannot resume", d.name))?;
            }
        }
        Ok(())
    }

    /// Each device's pid, state, restarts and resident memory.
    pub fn status(&self) -> Vec<DeviceStatus> {
        self.devices
            .iter()
            .map(|d| DeviceStatus {
                name: d.name.clone(),
                pid: d.pid,
                state: if d.failed {
                    "failed"
                } else if d.paused {
                    "paused"
                } else {
                    "running"
                },
                restarts: d.restarts,
                rss_kib: d.pid.and_then(rss_kib),
                queues: lock(&d.transport)
                    .driver_state()
                    .map(|s| s.queues)
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// Fds the main loop polls for [`DeviceHost::service`].
    pub fn poll_fds(&self) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = self
            .spawner
            .iter()
            .map(|s| s.events_fd().as_raw_fd())
            .collect();
        for d in self.devices.iter().filter(|d| !d.failed) {
            fds.push(lock(&d.transport).backend().remote().channel().as_raw_fd());
        }
        fds
    }

    /// Handles device exits and unsolicited device messages; returns a
    /// reason when the VM must stop.
    pub fn service(&mut self) -> Option<ExitReason> {
        let exits: Vec<spawner::Exited> = self
            .spawner
            .as_ref()
            .map(|s| std::iter::from_fn(|| s.next_exit()).collect())
            .unwrap_or_default();
        for e in exits {
            if let Some(reason) = self.device_exited(e) {
                return Some(reason);
            }
        }
        for i in 0..self.devices.len() {
            let events = {
                let d = &self.devices[i];
                let mut t = lock(&d.transport);
                t.backend_mut().remote_mut().poll_events()
            };
            for ev in events {
                if let Some(reason) = self.device_event(i, ev) {
                    return Some(reason);
                }
            }
        }
        None
    }

    fn device_exited(&mut self, e: spawner::Exited) -> Option<ExitReason> {
        // Exits of replaced instances name no device any more.
        let i = self.devices.iter().position(|d| d.pid == Some(e.pid))?;
        let d = &mut self.devices[i];
        let how = describe_status(e.status);
        let msg = format!("device {} (pid {}) {how}", d.name, e.pid);
        d.failed = true;
        d.pid = None;
        lock(&d.transport).backend_mut().remote_mut().mark_dead();
        let by_seccomp = libc::WIFSIGNALED(e.status) && libc::WTERMSIG(e.status) == libc::SIGSYS;
        let on_failure = self.on_failure;
        let why_not = match on_failure {
            OnFailure::Exit => return Some(ExitReason::Fatal(msg)),
            OnFailure::Reset => None,
            OnFailure::Restart if by_seccomp => Some(
                "not restarted: a device its seccomp filter killed may be compromised".to_owned(),
            ),
            OnFailure::Restart if !self.restart_allowed(i) => Some(format!(
                "not restarted: {} restarts within a minute (--restart-limit)",
                self.restart_limit
            )),
            OnFailure::Restart => {
                let started = Instant::now();
                match self.respawn(i, None) {
                    Ok((pid, _)) => {
                        log::warn(&format!(
                            "{msg}; restarted it{} in {:.2} ms",
                            pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
                            started.elapsed().as_secs_f64() * 1000.0
                        ));
                        return None;
                    }
                    Err(e) => Some(format!("cannot restart it: {e:#}")),
                }
            }
        };
        let d = &mut self.devices[i];
        d.failed = true;
        let why = why_not.map(|w| format!("; {w}")).unwrap_or_default();
        log::error(&format!("{msg}{why}; the guest sees it as needing a reset"));
        lock(&d.transport).device_failed();
        None
    }

    fn device_event(&mut self, i: usize, ev: DeviceEvent) -> Option<ExitReason> {
        let d = self.devices.get_mut(i)?;
        let mut t = lock(&d.transport);
        match ev {
            DeviceEvent::ConfigChanged(cfg) => t.config_changed(cfg),
            DeviceEvent::ForbiddenSyscall(_) => {}
            DeviceEvent::NeedsReset(reason) => {
                let msg = format!("device {} needs a reset: {reason}", d.name);
                if self.on_failure == OnFailure::Exit {
                    return Some(ExitReason::Fatal(msg));
                }
                log::error(&msg);
                t.device_failed();
            }
        }
        None
    }

    /// Asks every device to exit and waits for device threads.
    pub fn shutdown(&mut self) {
        for d in &mut self.devices {
            lock(&d.transport).backend_mut().remote_mut().shutdown();
            if let Some(t) = d.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// Says hello to a device of `kind` just started on `chan` (process
/// `pid`), handing it its backend; kills the process if the hello fails.
pub fn greet(
    name: &str,
    (chan, pid): (Channel, Option<libc::pid_t>),
    kind: &dyn DeviceKind,
    (backend, fds): (&ipc::Backend, &[OwnedFd]),
    memory: &DeviceMemory,
) -> Result<RemoteDevice> {
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
    let expected = Expected {
        device_type: kind.virtio_id(),
    };
    let connected = RemoteDevice::connect(
        name,
        (chan, pid),
        expected,
        (backend, &borrowed),
        memory.clone(),
    );
    if connected.is_err() {
        if let Some(p) = pid {
            // SAFETY: kill has no memory effects; p is the device process
            // just started, which failed its hello.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
    connected.with_context(|| format!("device {name}"))
}

/// The pid of device `d`'s current instance.
fn pid_of(d: Option<&Device>) -> Option<libc::pid_t> {
    d.and_then(|d| d.pid)
}

/// VmRSS of process `pid`, in KiB.
fn rss_kib(pid: libc::pid_t) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A process's wait status in words: "was killed by signal 9 (SIGKILL)".
pub fn describe_status(status: libc::c_int) -> String {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        format!("was killed by signal {sig} ({})", signal_name(sig))
    } else if libc::WIFEXITED(status) {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else {
        format!("ended (wait status {status:#x})")
    }
}

fn signal_name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGSYS => "SIGSYS, a forbidden syscall",
        libc::SIGABRT => "SIGABRT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGBUS => "SIGBUS",
        _ => "signal",
    }
}

/// A device just started: the VMM's end of its control channel and where it
/// runs.
pub struct Started {
    /// The control channel.
    pub chan: Channel,
    /// The device process (process mode).
    pub pid: Option<libc::pid_t>,
    /// The device thread (thread mode).
    pub thread: Option<JoinHandle<()>>,
}

/// Starts device `name` of `kind` in a process through `spawner` (process
/// mode) or in a thread of this process. A process gets its namespaces;
/// where the host refuses them, `sandbox.degraded` decides between an
/// error and a warning.
pub fn start_device(
    spawner: Option<&Spawner>,
    mode: DeviceMode,
    name: &str,
    kind: Arc<dyn DeviceKind>,
    sandbox: SandboxOpts,
) -> Result<Started> {
    let (vmm_end, device_end) = Channel::pair().context("cannot create control socket")?;
    let (Some(s), DeviceMode::Process, Some(c)) = (spawner, mode, kind.confinement()) else {
        return Ok(Started {
            chan: vmm_end,
            pid: None,
            thread: Some(start_thread(name, kind, device_end)?),
        });
    };
    let control = OwnedFd::from(device_end);
    let copy = control
        .try_clone()
        .context("cannot duplicate control socket")?;
    let full = jail::for_kind(&c, sandbox, true);
    let pid = match s.spawn(name, kind.name(), control, &full) {
        Ok(pid) => pid,
        Err(e) if sandbox.degraded == Degraded::Allow && full.namespaces.is_some() => {
            log::warn(&format!(
                "device {name}: {e:#}; running it WITHOUT namespaces or its \
                 empty root (--sandbox-degraded allow): seccomp, no capabilities and \
                 rlimits only"
            ));
            let degraded = jail::for_kind(&c, sandbox, false);
            s.spawn(name, kind.name(), copy, &degraded)
                .with_context(|| format!("device {name}: cannot start"))?
        }
        Err(e) => {
            return Err(e.context(format!(
                "device {name}: cannot be confined on this host (a container?); \
                 `skvm sandbox check` shows what works, and --sandbox-degraded allow \
                 runs devices without namespaces"
            )))
        }
    };
    Ok(Started {
        chan: vmm_end,
        pid: Some(pid),
        thread: None,
    })
}

fn start_thread(name: &str, kind: Arc<dyn DeviceKind>, chan: Channel) -> Result<JoinHandle<()>> {
    let label = name.to_owned();
    std::thread::Builder::new()
        .name(format!("skvm-dev-{name}"))
        .spawn(move || {
            if let Err(e) = worker::serve(&chan, kind.as_ref(), &label, || Ok(())) {
                log::error(&format!("device {label}: {e}"));
            }
        })
        .with_context(|| format!("{name}: cannot start device thread"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_are_described() {
        assert!(describe_status(9).contains("SIGKILL"));
        assert_eq!(describe_status(3 << 8), "exited with status 3");
    }
}
