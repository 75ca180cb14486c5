//! Supervision: the devices of a VM behind their transports, restarted
//! when their process dies (`--on-device-failure`), replaced on request,
//! paused and saved, and restored into new instances: what the transport
//! must not do.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ipc::DeviceState;

use super::handover;
use super::spawner::{self, SingleThreaded, Spawner};
use super::{
    describe_status, greet, start_device, with_early_end, DeviceMode, Launch, OnFailure,
    SandboxOpts,
};
use crate::ctl::SocketFile;
use sandbox::process::Pidfd;

use crate::exit::ExitReason;
use crate::irq::Routes;
use crate::kinds::{DeviceKind, Opened};
use crate::log;
use crate::pci::PciBus;
use crate::remote::{DeviceEvent, DeviceMemory, Hosted};
use crate::virtio_pci::VirtioPci;

/// The transport of a hosted device.
type Transport = VirtioPci<Box<dyn Hosted>>;

struct Device {
    name: String,
    kind: Arc<dyn DeviceKind>,
    /// What the device serves, for new instances.
    backend: ipc::Backend,
    /// The backend's fds (a disk image: holding it keeps its lock).
    backend_fds: Vec<OwnedFd>,
    /// The size of the file it writes, as opened: every instance's
    /// file-size limit.
    file_size: u64,
    /// Its process's root: empty, or its share.
    root: ipc::Root,
    /// Where its backend is, for `skvm ctl status` (a JSON object).
    backend_status: Option<String>,
    pid: Option<libc::pid_t>,
    transport: Arc<Mutex<Transport>>,
    thread: Option<JoinHandle<()>>,
    failed: bool,
    paused: bool,
    /// What the device saved when it was paused (`paused`), for a
    /// snapshot.
    saved: Option<DeviceState>,
    /// Its device number on PCI bus 0.
    slot: usize,
    /// Instances started (or tried) after the first.
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
    /// Adaptive polling window of the devices it starts, microseconds.
    poll_us: u32,
    /// Features no device offers the driver (`withhold_features`).
    withheld: u64,
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
    /// Instances started (or tried) after the first.
    pub restarts: u32,
    /// Resident memory of its process, KiB.
    pub rss_kib: Option<u64>,
    /// The rings of each queue the driver runs.
    pub queues: Vec<crate::virtio_pci::QueueLayout>,
    /// Where its backend is, for kinds that say (a JSON object).
    pub backend: Option<String>,
}

/// A device as a snapshot keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedDevice {
    /// "rng0", "blk0", ...
    pub name: String,
    /// Its kind's name ("rng", "blk", ...).
    pub kind: String,
    /// Its kind's parameters for new instances.
    pub params: Vec<u8>,
    /// The size of the file it serves (a disk image), 0 for none.
    pub file_size: u64,
    /// Its device number on PCI bus 0.
    pub slot: usize,
    /// Whether it had failed (the guest must reset it).
    pub failed: bool,
    /// Its transport's registers.
    pub transport: crate::virtio_pci::TransportState,
    /// What it saved when paused; `None` when the driver had not started
    /// it.
    pub state: Option<DeviceState>,
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

/// What a paused device saved: its state, and its bulk state's memfd if
/// it has one (for the next instance only, never kept in a snapshot).
type Saved = (DeviceState, Option<OwnedFd>);

/// Stops a running device between requests and returns what it saved;
/// `None` when it is not running (nothing to save).
fn pause(t: &mut Transport) -> Result<Option<Saved>> {
    if !t.is_active() {
        return Ok(None);
    }
    Ok(Some(t.backend_mut().remote_mut().pause()?))
}

/// Brings a new instance of device `name`, just put in place, to where
/// the old one was: `saved` if it matches what the transport knows, or
/// else (the old instance died unsaved, or its state is refused: see
/// [`handover`]) what the transport knows, with the indices from the used
/// rings. On failure the transport is left as it was.
fn carry_on(t: &mut Transport, name: &str, saved: Option<Saved>) -> Result<()> {
    let Some(driver) = t.driver_state() else {
        return Ok(());
    };
    let (saved, bulk) = saved.map_or((None, None), |(s, b)| (Some(s), b));
    let (state, recover) = handover::for_successor(name, saved, &driver);
    // A recovering instance starts afresh: the bulk state goes with the
    // state it belonged to.
    let bulk = bulk.as_ref().filter(|_| !recover).map(AsFd::as_fd);
    let (backend, events) = t.backend_and_events();
    // A failed restore leaves the transport as it was: the caller tries
    // again or tells the guest the device needs a reset.
    backend
        .remote_mut()
        .restore((&state, bulk), recover, events)
        .map_err(|e| anyhow::Error::new(e).context("restore failed"))
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DeviceHost {
    /// Sets up device hosting. In process mode, or when there are sockets
    /// to remove at exit (`sockets`: the control socket, a console's), this
    /// forks the spawner, which `single` proves safe.
    pub fn new(
        mode: DeviceMode,
        (on_failure, restart_limit): (OnFailure, u32),
        sandbox: SandboxOpts,
        (single, sockets): (&SingleThreaded, Vec<SocketFile>),
    ) -> Result<Self> {
        let spawner = if mode == DeviceMode::Process || !sockets.is_empty() {
            Some(Spawner::start(single, &sandbox, sockets)?)
        } else {
            None
        };
        Ok(Self {
            mode,
            on_failure,
            restart_limit,
            sandbox,
            spawner,
            memory: Vec::new(),
            devices: Vec::new(),
            poll_us: 0,
            withheld: 0,
        })
    }

    /// How long devices started from now on poll their queues after a
    /// kick, in microseconds (`--device-poll-us`; 0: not at all).
    pub fn set_poll_us(&mut self, poll_us: u32) {
        self.poll_us = poll_us;
    }

    /// Features devices started from now on do not offer the driver
    /// (`--event-idx off`: VIRTIO_F_RING_EVENT_IDX), whatever they offer.
    pub fn withhold_features(&mut self, features: u64) {
        self.withheld = features;
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
            file_size,
            root,
            status: backend_status,
            // Taken by the VM before its devices are added (see
            // `console::TerminalInput`); none is left here.
            terminal: _,
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
            Launch {
                fds: &backend_fds,
                file_size,
                root,
            },
        )?;
        let pid = started.process.as_ref().map(Pidfd::pid);
        let (hello, hello_fds) = started.hello(&backend, &backend_fds);
        let thread = started.thread;
        let remote = greet(
            name,
            (started.chan, started.process),
            kind.as_ref(),
            (&hello, hello_fds),
            &self.memory,
            self.poll_us,
        )
        .map_err(|e| with_early_end(e, self.spawner.as_ref(), pid))?
        .withholding(self.withheld);
        let index = u32::try_from(self.devices.len()).unwrap_or(u32::MAX);
        let bar = crate::layout::bar_slot(index).context("too many devices")?;
        let transport = VirtioPci::new(kind.host(remote), kind.pci_class(), bar, routes.clone())
            .with_context(|| format!("device {name}"))?;
        let transport = Arc::new(Mutex::new(transport));
        let Some(slot) = bus.add(transport.clone()) else {
            bail!("{name}: the PCI bus is full");
        };
        match pid {
            Some(p) => log::debug(&format!("device {name} started (pid {p})")),
            None => log::debug(&format!("device {name} started (thread)")),
        }
        self.devices.push(Device {
            name: name.to_owned(),
            kind,
            backend,
            backend_fds,
            file_size,
            root,
            backend_status,
            pid,
            transport,
            thread,
            failed: false,
            paused: false,
            saved: None,
            slot,
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
        saved: Option<Saved>,
    ) -> Result<(Option<libc::pid_t>, Duration)> {
        let d = self.devices.get_mut(i).context("no such device")?;
        if let Some(t) = d.thread.take() {
            let _ = t.join();
        }
        // Every attempt counts, whether or not its instance lives to serve.
        d.restarts = d.restarts.saturating_add(1);
        let started = start_device(
            self.spawner.as_ref(),
            mode_for(d.kind.as_ref(), self.mode),
            &d.name,
            d.kind.clone(),
            self.sandbox,
            Launch {
                fds: &d.backend_fds,
                file_size: d.file_size,
                root: d.root,
            },
        )?;
        let pid = started.process.as_ref().map(Pidfd::pid);
        let (hello, hello_fds) = started.hello(&d.backend, &d.backend_fds);
        let remote = greet(
            &d.name,
            (started.chan, started.process),
            d.kind.as_ref(),
            (&hello, hello_fds),
            &self.memory,
            self.poll_us,
        )?
        .withholding(self.withheld);
        d.pid = pid;
        d.thread = started.thread;
        d.failed = false;
        d.paused = false;
        d.saved = None;
        let (restored, events) = {
            let mut t = lock(&d.transport);
            let restore_start = Instant::now();
            let mut old = t.swap_backend(d.kind.host(remote))?;
            carry_on(&mut t, &d.name, saved)?;
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
            // The same instance resumes: a bulk state is not needed.
            d.saved = pause(&mut t)
                .with_context(|| format!("device {}: cannot pause", d.name))?
                .map(|(state, _)| state);
            d.paused = d.saved.is_some();
        }
        Ok(())
    }

    /// Every device as a snapshot keeps it, once [`DeviceHost::pause_all`]
    /// has paused them: its kind, PCI slot, transport and saved state.
    pub fn snapshot(&self) -> Vec<SavedDevice> {
        self.devices
            .iter()
            .map(|d| {
                let t = lock(&d.transport);
                SavedDevice {
                    name: d.name.clone(),
                    kind: d.kind.name().to_owned(),
                    params: d.backend.params.clone(),
                    file_size: d.file_size,
                    slot: d.slot,
                    failed: d.failed,
                    transport: t.save_transport(),
                    state: d.saved.clone(),
                }
            })
            .collect()
    }

    /// Brings every device, just added for a restored VM, to where the
    /// snapshot had it: its transport's registers, then its new instance
    /// restored from the saved state (checked against the transport, as
    /// after a restart); a device that had failed stays failed.
    pub fn restore(&mut self, saved: &[SavedDevice]) -> Result<()> {
        if saved.len() != self.devices.len() {
            bail!(
                "{} devices saved, {} given",
                saved.len(),
                self.devices.len()
            );
        }
        for (d, s) in self.devices.iter_mut().zip(saved) {
            if d.slot != s.slot || d.name != s.name {
                bail!("device {} is not where the snapshot had {}", d.name, s.name);
            }
            let mut t = lock(&d.transport);
            t.restore_transport(&s.transport)
                .with_context(|| format!("device {}: the snapshot's transport", d.name))?;
            if s.failed {
                d.failed = true;
                t.device_failed();
                continue;
            }
            carry_on(&mut t, &d.name, s.state.clone().map(|s| (s, None)))
                .with_context(|| format!("device {}: cannot restore", d.name))?;
        }
        Ok(())
    }

    /// Lets every paused device serve its queues again.
    pub fn resume_all(&mut self) -> Result<()> {
        for d in self.devices.iter_mut().filter(|d| d.paused) {
            d.paused = false;
            d.saved = None;
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
            .map(|d| {
                // One lock for both (a second lock() in the same expression
                // would wait on the first's guard).
                let transport = lock(&d.transport);
                DeviceStatus {
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
                    rss_kib: transport.backend().remote().rss_kib(),
                    queues: transport
                        .driver_state()
                        .map(|s| s.queues)
                        .unwrap_or_default(),
                    backend: d.backend_status.clone(),
                }
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
            OnFailure::Restart => match self.restart_after_death(i, &msg) {
                Ok(()) => return None,
                Err(why) => Some(why),
            },
        };
        let d = &mut self.devices[i];
        d.failed = true;
        let why = why_not.map(|w| format!("; {w}")).unwrap_or_default();
        log::error(&format!("{msg}{why}; the guest sees it as needing a reset"));
        lock(&d.transport).device_failed();
        None
    }

    /// Starts a new instance of device `i`, whose process died (`msg` says
    /// how), and restores it, if the restart limit allows. An instance that
    /// dies before it serves (killed during its restore, say) is another
    /// death: it is tried again as long as the limit allows, each attempt
    /// counted. The reason it stays down otherwise.
    fn restart_after_death(&mut self, i: usize, msg: &str) -> Result<(), String> {
        // Why the last attempt failed, once one has.
        let mut failed: Option<String> = None;
        while self.restart_allowed(i) {
            if let Some(why) = &failed {
                log::warn(&format!("{msg}; {why}; trying again"));
            }
            let started = Instant::now();
            match self.respawn(i, None) {
                Ok((pid, _)) => {
                    log::warn(&format!(
                        "{msg}; restarted it{} in {:.2} ms",
                        pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
                        started.elapsed().as_secs_f64() * 1000.0
                    ));
                    return Ok(());
                }
                Err(e) => {
                    // Its exit, when the spawner reports it, names no device.
                    if let Some(d) = self.devices.get_mut(i) {
                        d.pid = None;
                    }
                    failed = Some(format!("cannot restart it: {e:#}"));
                }
            }
        }
        let limit = format!(
            "{} restarts within a minute (--restart-limit)",
            self.restart_limit
        );
        Err(match failed {
            None => format!("not restarted: {limit}"),
            Some(why) => format!("{why}; not restarted again: {limit}"),
        })
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

    /// Asks every device to exit, gives their processes one shared
    /// [`crate::remote::EXIT_GRACE`] to do so, kills (through its pidfd,
    /// and says so) each one that ignored the request, and waits for device
    /// threads.
    pub fn shutdown(&mut self) {
        for d in &mut self.devices {
            lock(&d.transport).backend_mut().remote_mut().shutdown();
        }
        let deadline = Instant::now() + crate::remote::EXIT_GRACE;
        for d in &mut self.devices {
            lock(&d.transport).backend_mut().remote_mut().end(deadline);
            if let Some(t) = d.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// The pid of device `d`'s current instance.
fn pid_of(d: Option<&Device>) -> Option<libc::pid_t> {
    d.and_then(|d| d.pid)
}
