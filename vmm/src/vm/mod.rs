//! Building and running a VM, in phases whose order the types keep:
//!
//! 1. [`check_host`]: KVM is there and can take the configuration
//!    ([`HostChecked`]);
//! 2. [`HostChecked::spawn`]: the spawner is forked, which needs the
//!    process to have a single thread: it takes the [`SingleThreaded`]
//!    token only the start of `main` can make ([`Spawned`]);
//! 3. [`Spawned::open`]: guest memory, the boot images and every device's
//!    backend (images, taps) are opened; then, still with a single thread,
//!    the VMM gives up every privilege: its own mount namespace with an
//!    empty read-only root, an unprivileged user, no capabilities
//!    ([`Opened`]; see `sandbox::jail::confine_vmm`);
//! 4. [`Opened::build`]: guest memory's memslots, the boot images (loaded
//!    in a thread meanwhile), the KVM VM, every device attached, the legacy
//!    devices and the vCPUs ([`Built`]);
//! 5. [`Built::confine`]: the vCPU threads start and each installs its
//!    allowlist, then wait; once every thread of the VMM shows a filter
//!    (device threads installed theirs after their hello), the main thread
//!    installs its own ([`Confined`]; see `vmm_sandbox`);
//! 6. [`Confined::start`]: the vCPUs go, the terminal and the control
//!    socket ([`Running`]);
//! 7. [`Running::wait`]: the main thread's loop until an exit reason, then
//!    the teardown.
//!
//! [`run`] is the straight line through them; a program that adds a step
//! calls them itself. Phase 4 is in `build`, the vCPU threads' start and
//! stop in `vcpus`, the main thread's loop in `main_loop`, what a run
//! reports in `report`.

use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kvm_ioctls::{Kvm, VmFd};

use crate::boot;
use crate::config::{HostQuirks, VmConfig};
use crate::console::{backend::Console, RawTerminal, TerminalInput};
use crate::ctl::{Control, CtlServer, PrivateSocket};
use crate::device_host::spawner::SingleThreaded;
use crate::device_host::{Degraded, DeviceHost, DeviceMode};
use crate::exit::{ExitReason, ExitSignal};
use crate::hotplug::Hotplug;
use crate::irq::IrqRouter;
use crate::legacy::power_button::PowerButton;
use crate::legacy::serial::PanicRecord;
use crate::legacy::LegacyDevices;
use crate::memory::{GuestRam, Memory};
use crate::pci::PciBus;
use crate::snapshot::state::MachineInfo;
use crate::snapshot::take::SnapshotSource;
use crate::vcpu::{self, PauseGate, Vcpu, VcpuStats};
use crate::vmm_sandbox;
use crate::{host, log};

mod backends;
mod build;
mod main_loop;
mod report;
mod vcpus;

use backends::{bind_device_sockets, open_backends, take_terminal};
use main_loop::{lock_panic, main_loop, Powerdown};
use report::{debug_summary, profile_file, write_profile};
use vcpus::{every_other_thread_filtered, spawn_sampler, spawn_vcpus, stop_vcpus, StartGate};

/// Creates the VM, boots it, and runs it until it stops. Call it at the
/// start of the program, while it has a single thread.
pub fn run(cfg: &VmConfig) -> Result<ExitReason> {
    let single = SingleThreaded::claim()?;
    let mut setup = Timeline::start();
    let checked = setup.mark("host check", check_host(cfg))?;
    let spawned = setup.mark("spawner", checked.spawn(single))?;
    let opened = setup.mark("memory, backends, jail", spawned.open())?;
    let built = setup.mark("machine", opened.build())?;
    let confined = setup.mark("filters", built.confine())?;
    let running = setup.mark("start", confined.start())?;
    log::debug(&format!("setup: {setup}"));
    Ok(running.wait())
}

/// How long each phase of [`run`] took, for `--debug` (and
/// scripts/bench-boot.sh, which reads the total).
struct Timeline {
    last: Instant,
    phases: Vec<(&'static str, Duration)>,
}

impl Timeline {
    fn start() -> Self {
        Timeline {
            last: Instant::now(),
            phases: Vec::new(),
        }
    }

    /// Records the time since the last mark as `phase`'s; `result` back.
    fn mark<T>(&mut self, phase: &'static str, result: T) -> T {
        let now = Instant::now();
        self.phases.push((phase, now - self.last));
        self.last = now;
        result
    }
}

impl std::fmt::Display for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (phase, d) in &self.phases {
            write!(f, "{phase} {:.2} ms, ", ms(*d))?;
        }
        let total: Duration = self.phases.iter().map(|(_, d)| *d).sum();
        write!(f, "total {:.2} ms", ms(total))
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Phase 1: the host's KVM can run this configuration.
pub struct HostChecked<'a> {
    cfg: &'a VmConfig,
    kvm: Kvm,
    quirks: bool,
}

/// Opens KVM and checks the configuration against it and the host.
pub fn check_host(cfg: &VmConfig) -> Result<HostChecked<'_>> {
    let kvm = host::open_kvm()?;
    if let Some((uid, gid)) = cfg.user {
        // SAFETY: geteuid cannot fail.
        let euid = unsafe { libc::geteuid() };
        if euid != 0 && (uid, gid) != sandbox::jail::outside_ids() {
            bail!("--user {uid}:{gid}: only root can run skvm as another user");
        }
        sandbox::jail::set_outside_ids(uid, gid).with_context(|| format!("--user {uid}:{gid}"))?;
    }
    check_limits(&kvm, cfg)?;
    cfg.vmm_sandbox.prepare(cfg.sandbox.seccomp);
    let quirks = match cfg.host_quirks {
        HostQuirks::On => true,
        HostQuirks::Off => false,
        HostQuirks::Auto => host::is_emulating_host(),
    };
    if quirks {
        log::debug("emulating host: completing int3/clac/stac/fwait, xsave/xrstor and user-mode SYSCALL, adding guest quirks");
    }
    Ok(HostChecked { cfg, kvm, quirks })
}

/// Phase 2: the spawner exists (process mode); still one thread.
pub struct Spawned<'a> {
    checked: HostChecked<'a>,
    host: DeviceHost,
    ctl: Option<CtlServer>,
    console: Console,
    /// The sockets devices listen on, one slot per configured device.
    device_sockets: Vec<Option<PrivateSocket>>,
    single: SingleThreaded,
}

impl<'a> HostChecked<'a> {
    /// Forks the spawner of device processes (which is why it takes the
    /// proof that this process has one thread) and opens the control
    /// socket.
    pub fn spawn(self, single: SingleThreaded) -> Result<Spawned<'a>> {
        let cfg = self.cfg;
        // Bound first: the spawner removes the socket when the VMM ends
        // (or, if the spawner cannot start, the CtlServer on its drop).
        let mut ctl = cfg.ctl.as_deref().map(CtlServer::bind).transpose()?;
        let mut console = Console::open(&cfg.serial)?;
        if let Some(path) = console.pty_path() {
            log::info(&format!("serial console on {}", path.display()));
        }
        let mut device_sockets = bind_device_sockets(cfg)?;
        let sockets = ctl
            .iter()
            .map(|c| c.file().clone())
            .chain(console.socket_file())
            .chain(device_sockets.iter().flatten().map(|s| s.file().clone()));
        let mut host = DeviceHost::new(
            cfg.device_mode,
            (cfg.on_device_failure, cfg.restart_limit),
            cfg.sandbox,
            (&single, sockets.collect()),
        )?;
        host.set_poll_us(cfg.device_poll_us);
        if cfg.event_idx == crate::config::EventIdx::Off {
            host.withhold_features(1 << devices::virtio::VIRTIO_F_RING_EVENT_IDX);
        }
        if let Some(c) = ctl.as_mut() {
            c.hand_off();
        }
        console.hand_off();
        device_sockets
            .iter_mut()
            .flatten()
            .for_each(PrivateSocket::hand_off);
        Ok(Spawned {
            checked: self,
            host,
            ctl,
            console,
            device_sockets,
            single,
        })
    }
}

/// Phase 4: the machine, ready to run.
pub struct Built<'a> {
    cfg: &'a VmConfig,
    host: DeviceHost,
    ctl: Option<CtlServer>,
    console: Arc<Console>,
    /// skvm's terminal, when a virtio console has it.
    terminal: Option<TerminalInput>,
    memory: Arc<Mutex<Memory>>,
    vm: Arc<VmFd>,
    router: Arc<IrqRouter>,
    pci: Arc<PciBus>,
    legacy: Arc<LegacyDevices>,
    power_button: Arc<PowerButton>,
    panic: Arc<Mutex<Option<PanicRecord>>>,
    exit: Arc<ExitSignal>,
    stats: Arc<VcpuStats>,
    profile: Option<Arc<vcpu::Profile>>,
    /// Where the profile goes, created before the filters (which have no
    /// open for writing).
    profile_out: Option<(std::path::PathBuf, std::fs::File)>,
    gate: Arc<PauseGate>,
    vcpus: Vec<Vcpu>,
    hotplug: Option<Hotplug>,
    /// /proc/self/status for the `--debug` memory figures at exit.
    own_status: Option<host::SelfStatus>,
    /// /proc/self/task, to check every thread's filter.
    threads: host::Threads,
    /// What a snapshot needs from KVM itself, read before confinement:
    /// the MSRs to save and the vCPU state size.
    snapshot_host: (Vec<u32>, u32),
    quirks: bool,
}

/// Phase 3: what the VM needs from the host is open and the VMM holds no
/// privilege; threads may start now.
pub struct Opened<'a> {
    checked: HostChecked<'a>,
    host: DeviceHost,
    ctl: Option<CtlServer>,
    console: Console,
    /// skvm's terminal, when a virtio console has it.
    terminal: Option<TerminalInput>,
    memory: Memory,
    /// The boot RAM's mapping and ranges, for the loader.
    boot_ram: (vm_memory::GuestMemoryMmap, Vec<crate::memory::RamRange>),
    /// What the guest starts from: its kernel, or a snapshot's memory.
    start: Start,
    backends: Vec<crate::kinds::Opened>,
    hotplug_room: Option<(u64, u64)>,
    profile_out: Option<(std::path::PathBuf, std::fs::File)>,
    own_status: Option<host::SelfStatus>,
    threads: host::Threads,
}

impl<'a> Spawned<'a> {
    /// Creates guest memory and opens the boot images, every device's
    /// backend and the files the VMM reads later; then gives up every
    /// privilege (unless `--sandbox off`).
    pub fn open(self) -> Result<Opened<'a>> {
        let Spawned {
            checked,
            host,
            ctl,
            console,
            device_sockets,
            single,
        } = self;
        let cfg = checked.cfg;
        let ram = GuestRam::new(cfg.mem, cfg.hugepages).context("cannot create guest memory")?;
        let boot_ram = (ram.mem.clone(), ram.ranges.clone());
        let start = match &cfg.restore {
            Some(r) => Start::Restore(crate::snapshot::files::open_memory(&r.dir)?),
            None => Start::Boot(
                boot::BootFile::kernel(&cfg.kernel)?,
                cfg.initrd
                    .as_deref()
                    .map(boot::BootFile::initrd)
                    .transpose()?,
            ),
        };
        let memory = Memory::new(ram);
        let (mut backends, hotplug_room) = open_backends(cfg, &memory, device_sockets, &single)?;
        let terminal = take_terminal(&console, &mut backends)?;
        let opened = Opened {
            checked,
            host,
            ctl,
            console,
            terminal,
            memory,
            boot_ram,
            start,
            backends,
            hotplug_room,
            profile_out: profile_file()?,
            own_status: host::SelfStatus::open(),
            threads: host::Threads::open().context("cannot list the VMM's threads")?,
        };
        drop_privileges(cfg, single)?;
        Ok(opened)
    }
}

/// What the guest starts from.
enum Start {
    /// A kernel (and initrd) to load and boot.
    Boot(boot::BootFile, Option<boot::BootFile>),
    /// A snapshot (`--restore`): its memory file, opened before the VMM
    /// gives up its view of the host's files.
    Restore(std::fs::File),
}

/// Gives up every privilege the VMM has (`sandbox::jail::confine_vmm`),
/// unless `--sandbox off`. Where the host refuses namespaces and
/// `--sandbox-degraded allow` was given, the VMM keeps the host's root and
/// drops the rest.
fn drop_privileges(cfg: &VmConfig, single: SingleThreaded) -> Result<()> {
    if !cfg.vmm_sandbox.on {
        log::debug("--sandbox off: the VMM keeps its privileges");
        return Ok(());
    }
    let (uid, gid) = sandbox::jail::outside_ids();
    let what = || format!("cannot drop the VMM's privileges (to {uid}:{gid})");
    // SAFETY: `single` proves this process had one thread at the start of
    // `run`; forking the spawner, binding the control socket and opening
    // files started none.
    let identity = match unsafe { sandbox::jail::confine_vmm(uid, gid, true) } {
        Ok(id) => id,
        Err(e) if cfg.sandbox.degraded == Degraded::Allow => {
            log::warn(&format!(
                "the VMM keeps the host's file system: {e} (--sandbox-degraded allow)"
            ));
            // SAFETY: as above.
            unsafe { sandbox::jail::confine_vmm(uid, gid, false) }.with_context(what)?
        }
        Err(e) => return Err(anyhow::Error::new(e).context(what())),
    };
    let _ = single; // threads may start from here on
    log::debug(&format!(
        "VMM now {}:{}{}, no capabilities, empty root",
        identity.uid,
        identity.gid,
        if identity.own_user_namespace {
            " in its own user namespace"
        } else {
            ""
        }
    ));
    Ok(())
}

impl<'a> Built<'a> {
    /// Phase 5: the vCPU threads start, install their allowlist and wait;
    /// every thread must then show a seccomp filter; the main thread
    /// installs its own last. With `--sandbox off`, the threads just wait.
    pub fn confine(mut self) -> Result<Confined<'a>> {
        let sb = self.cfg.vmm_sandbox;
        let mode = self.cfg.sandbox.seccomp;
        let what = || format!("cannot confine the VMM (--sandbox {sb})");
        let (vcpu_policy, main_policy) = (sb.vcpu_policy(), sb.main_policy(&self.device_threads()));
        let vcpu_filter = sb
            .program(&vcpu_policy, mode)
            .with_context(what)?
            .map(Arc::new);
        let main_filter = sb.program(&main_policy, mode).with_context(what)?;
        let gate = Arc::new(StartGate::default());
        let vcpus = std::mem::take(&mut self.vcpus);
        let count = vcpus.len();
        let (ready, confirmations) = mpsc::channel();
        let handles = spawn_vcpus(vcpus, vcpu_filter, &gate, &ready)?;
        drop(ready);
        let confined = Confined {
            built: self,
            handles: Arc::new(handles),
            gate,
        };
        for _ in 0..count {
            match confirmations.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(confined.abort(anyhow::anyhow!(e).context(what()))),
                Err(_) => return Err(confined.abort(anyhow::anyhow!("a vCPU thread ended"))),
            }
        }
        if let Some(prog) = main_filter {
            if let Err(e) = every_other_thread_filtered(&confined.built.threads) {
                return Err(confined.abort(e.context(what())));
            }
            if let Err(e) = vmm_sandbox::install_on_this_thread(&prog) {
                return Err(confined.abort(anyhow::Error::new(e).context(what())));
            }
            if log::debug_enabled() {
                log::debug(&format!(
                    "VMM seccomp filters (--sandbox {sb}): main {}, vcpu {}, device threads \
                     their kind's",
                    main_policy.syscalls().len(),
                    vcpu_policy.syscalls().len()
                ));
            }
        }
        Ok(confined)
    }

    /// What a snapshot of this VM reads besides its devices.
    fn snapshot_source(&self) -> SnapshotSource {
        let (msrs, xsave_size) = self.snapshot_host.clone();
        SnapshotSource {
            vm: self.vm.clone(),
            memory: self.memory.clone(),
            pci: self.pci.clone(),
            legacy: self.legacy.clone(),
            info: MachineInfo {
                cpus: self.cfg.cpus,
                mem: self.cfg.mem,
                quirks: self.quirks,
                xsave_size,
                hotplugged: Vec::new(),
            },
            msrs,
        }
    }

    /// The confinement of each device that is served in a VMM thread, which
    /// the main thread may have to start again (restarts, mem-add).
    fn device_threads(&self) -> Vec<Option<crate::kinds::Confinement>> {
        self.cfg
            .devices
            .iter()
            .map(|d| d.kind.confinement())
            .filter(|c| c.is_none() || self.cfg.device_mode == DeviceMode::Thread)
            .collect()
    }
}

/// Phase 5 done: every VMM thread is confined; the vCPUs wait.
pub struct Confined<'a> {
    built: Built<'a>,
    handles: Arc<Vec<JoinHandle<()>>>,
    gate: Arc<StartGate>,
}

/// Phase 6: the guest runs.
pub struct Running<'a> {
    built: Built<'a>,
    handles: Arc<Vec<JoinHandle<()>>>,
    sampler: Option<JoinHandle<()>>,
    raw: Option<RawTerminal>,
    control: Option<Control>,
}

impl<'a> Confined<'a> {
    /// Stops the waiting vCPU threads and the devices; `e` back.
    fn abort(self, e: anyhow::Error) -> anyhow::Error {
        let Confined {
            mut built,
            handles,
            gate,
        } = self;
        built.exit.request(ExitReason::Fatal(format!("{e:#}")));
        gate.open();
        stop_vcpus(Arc::try_unwrap(handles).unwrap_or_default());
        built.host.shutdown();
        e
    }

    /// Lets the vCPUs run, puts the terminal in raw mode and serves the
    /// control socket.
    pub fn start(self) -> Result<Running<'a>> {
        let Confined {
            mut built,
            handles,
            gate,
        } = self;
        gate.open();
        let sampler = built
            .profile
            .as_ref()
            .map(|_| spawn_sampler(handles.clone(), built.exit.clone()));
        let raw = if built.console.is_stdio() || built.terminal.is_some() {
            RawTerminal::enable(libc::STDIN_FILENO)
        } else {
            None
        };
        let control = built.ctl.take().map(|server| {
            Control::new(
                server,
                built.gate.clone(),
                handles.clone(),
                built.hotplug.take(),
                built.power_button.clone(),
                built.snapshot_source(),
                built.console.clone(),
            )
        });
        Ok(Running {
            built,
            handles,
            sampler,
            raw,
            control,
        })
    }
}

impl Running<'_> {
    /// Serves the console, devices and control socket until the VM stops,
    /// then tears it down; why it stopped.
    pub fn wait(self) -> ExitReason {
        let Running {
            mut built,
            handles,
            sampler,
            raw,
            mut control,
        } = self;
        main_loop(
            &built.exit,
            (&built.legacy, &built.console, built.terminal.as_mut()),
            &built.panic,
            &mut built.host,
            control.as_mut(),
            &Powerdown {
                button: &built.power_button,
                timeout: built.cfg.stop_timeout,
            },
        );
        drop(control);
        if let Some(s) = sampler {
            let _ = s.join();
        }
        stop_vcpus(Arc::try_unwrap(handles).unwrap_or_default());
        built.host.shutdown();
        if let (Some(p), Some((path, file))) = (&built.profile, built.profile_out.take()) {
            write_profile(p, &path, file);
        }
        drop(raw);
        if log::debug_enabled() {
            debug_summary(&built.stats, built.own_status.as_ref());
        }
        let Built {
            host,
            pci,
            router,
            vm,
            memory,
            exit,
            panic,
            ..
        } = built;
        // The VM goes before the memory its memslots point into.
        drop(host);
        drop(pci);
        drop(router);
        drop(vm);
        drop(memory);
        let reason = exit.reason().unwrap_or(ExitReason::Poweroff);
        match reason {
            ExitReason::Reboot | ExitReason::Poweroff => match lock_panic(&panic).clone() {
                Some(p) => ExitReason::GuestPanic(p.message),
                None => reason,
            },
            other => other,
        }
    }
}

fn check_limits(kvm: &Kvm, cfg: &VmConfig) -> Result<()> {
    let max = kvm.get_max_vcpus();
    if usize::from(cfg.cpus) > max {
        bail!(
            "--cpus {} is more than this host's KVM allows ({max})",
            cfg.cpus
        );
    }
    if let Some(total) = host::host_mem_total() {
        if cfg.mem > total {
            bail!(
                "--mem {} MiB is more than this host has ({} MiB)",
                cfg.mem >> 20,
                total >> 20
            );
        }
    }
    Ok(())
}
