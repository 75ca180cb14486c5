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
//! calls them itself. The vCPU threads' start and stop are in `vcpus`, the
//! main thread's loop in `main_loop`, what a run reports in `report`.

use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kvm_bindings::{
    kvm_enable_cap, kvm_pit_config, KVM_CAP_EXCEPTION_PAYLOAD, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::{self, BootSpec};
use crate::config::{HostQuirks, VmConfig};
use crate::console::{backend::Console, RawTerminal, TerminalInput};
use crate::ctl::{Control, CtlServer, PrivateSocket};
use crate::device_host::spawner::SingleThreaded;
use crate::device_host::{Degraded, DeviceHost, DeviceMode};
use crate::exit::{ExitReason, ExitSignal};
use crate::hotplug::Hotplug;
use crate::irq::IrqRouter;
use crate::legacy::power_button::PowerButton;
use crate::legacy::serial::{ConsoleOut, IrqTrigger, PanicRecord, SerialDevice, COM1_IRQ};
use crate::legacy::vmgenid;
use crate::legacy::LegacyDevices;
use crate::memory::{GuestRam, Memory};
use crate::pci::PciBus;
use crate::snapshot::state::MachineInfo;
use crate::snapshot::take::SnapshotSource;
use crate::vcpu::{self, setup, PauseGate, Vcpu, VcpuStats};
use crate::vmm_sandbox;
use crate::{host, layout, log};

mod backends;
mod main_loop;
mod report;
mod vcpus;

use backends::{attach_devices, bind_device_sockets, open_backends, take_terminal};
use main_loop::{install_signals, lock_panic, main_loop, Powerdown};
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

/// Phase 3: the machine, ready to run.
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

impl<'a> Opened<'a> {
    /// Builds the machine: the memslots, the boot images, the VM, its
    /// devices, legacy devices and vCPUs.
    pub fn build(self) -> Result<Built<'a>> {
        let Opened {
            checked: HostChecked { cfg, kvm, quirks },
            mut host,
            ctl,
            console,
            terminal,
            mut memory,
            boot_ram,
            start,
            mut backends,
            hotplug_room,
            profile_out,
            own_status,
            threads,
        } = self;
        // Reading the kernel and initrd into fresh guest pages is most of
        // the setup time (page allocation, ~2 ms per MiB on kvm_pvm hosts):
        // it runs in a thread while the VM, its memslots and the devices
        // are set up.
        // Whether skvm can complete the guest kernel's XSAVE/XRSTOR decides
        // whether the kernel may use them.
        let xsave = if quirks { xsave_layout(&kvm) } else { None };
        let snapshot_host = snapshot_host(&kvm)?;
        let restore = cfg.restore.as_ref().map(|r| &*r.snapshot);
        let (loader, memory_file) = match start {
            Start::Boot(kernel, initrd) => {
                let cmdline = cfg.cmdline(quirks, xsave.is_some());
                log::debug(&format!("kernel command line: {cmdline}"));
                let spec = BootSpec {
                    kernel,
                    initrd,
                    cmdline,
                    cpus: cfg.cpus,
                    unpack: cfg.decompress == crate::config::Decompress::Skvm,
                };
                (Some(start_loader(boot_ram, spec)?), None)
            }
            Start::Restore(file) => (None, Some(file)),
        };
        if let Some(snap) = restore {
            crate::snapshot::restore::check_host(snap, quirks, snapshot_host.1)?;
            crate::snapshot::restore::take_device_options(snap, &mut backends)?;
        }
        let vm = Arc::new(create_vm(&kvm)?);
        memory.register(vm.clone())?;
        add_irqchip(&vm, quirks)?;
        let mut added = 0;
        let mut times = crate::snapshot::restore::Times::default();
        if let (Some(snap), Some(file)) = (restore, &memory_file) {
            let t = Instant::now();
            added = crate::snapshot::restore::memory(snap, &mut memory, hotplug_room, file)?;
            times.memory = t.elapsed();
        }
        let router = Arc::new(IrqRouter::new(vm.clone()));
        let mut pci = PciBus::new();
        let t = Instant::now();
        attach_devices(cfg, backends, &mut host, &memory, &mut pci, &router)?;
        times.spawn = t.elapsed();
        let memory = Arc::new(Mutex::new(memory));
        let hotplug = hotplug_room.map(|room| Hotplug::new(memory.clone(), room).with_added(added));
        let exit = Arc::new(ExitSignal::new().context("cannot create exit eventfd")?);
        install_signals(&exit)?;
        let panic = Arc::new(Mutex::new(None));
        let legacy = Arc::new(legacy_devices(
            &vm,
            (&panic, &console),
            restore.map(|snap| &snap.legacy),
        )?);
        let power_button = Arc::new(PowerButton::new(&vm)?);
        let mut built = Built {
            cfg,
            host,
            ctl,
            console: Arc::new(console),
            terminal,
            memory,
            vm,
            router,
            pci: Arc::new(pci),
            legacy,
            power_button,
            panic,
            exit,
            stats: Arc::new(VcpuStats::default()),
            profile: std::env::var_os("SKVM_PROFILE").map(|_| Arc::new(vcpu::Profile::new())),
            profile_out,
            gate: Arc::new(PauseGate::default()),
            vcpus: Vec::new(),
            hotplug,
            own_status,
            threads,
            snapshot_host,
            quirks,
        };
        // vCPUs are created and configured while the loader runs; only the
        // boot vCPU's registers wait for it.
        built.vcpus = built.create_vcpus(&kvm, quirks, xsave.as_ref())?;
        if let Some(snap) = restore {
            let fds: Vec<&kvm_ioctls::VcpuFd> = built.vcpus.iter().map(|v| &v.fd).collect();
            let t = Instant::now();
            crate::snapshot::restore::machine(snap, &built.vm, &fds)?;
            times.machine = t.elapsed();
            // Devices last: a restored device serves what waits in its
            // queues at once, and the interrupts it raises must land in
            // the restored irqchips and LAPICs, not be overwritten by them.
            let t = Instant::now();
            crate::snapshot::restore::devices(snap, &mut built.host, &built.pci)?;
            built.legacy.reassert_serial_interrupt();
            times.devices = t.elapsed();
            log::info(&format!(
                "restored from {}: {times}",
                cfg.restore
                    .as_ref()
                    .map(|r| r.dir.display().to_string())
                    .unwrap_or_default()
            ));
        }
        if let Some(loader) = loader {
            let waited = Instant::now();
            let (boot_info, took) = loader
                .join()
                .map_err(|_| anyhow::anyhow!("the boot loader thread panicked"))??;
            log::debug(&format!(
                "boot images loaded in {:.2} ms; the machine waited {:.2} ms for them",
                ms(took),
                ms(waited.elapsed())
            ));
            if let Some(boot) = built.vcpus.first() {
                let memory = built.memory.lock().unwrap_or_else(|e| e.into_inner());
                let mem = memory.boot().context("no boot RAM")?;
                setup::set_boot_state(&boot.fd, mem, &boot_info)
                    .context("cannot set up the boot vcpu")?;
            }
        }
        // A new generation ID at each boot and each restore: two machines
        // restored from one snapshot must not share their random state.
        {
            let memory = built.memory.lock().unwrap_or_else(|e| e.into_inner());
            vmgenid::write_new(memory.boot().context("no boot RAM")?)?;
        }
        if restore.is_some() {
            vmgenid::announce(&built.vm)?;
        }
        Ok(built)
    }
}

/// Starts the thread that loads the kernel and initrd into boot RAM; it
/// returns how long that took besides.
fn start_loader(
    (mem, ranges): (vm_memory::GuestMemoryMmap, Vec<crate::memory::RamRange>),
    spec: BootSpec,
) -> Result<JoinHandle<Result<(boot::BootInfo, Duration)>>> {
    std::thread::Builder::new()
        .name("boot-loader".into())
        .spawn(move || {
            let start = Instant::now();
            let info = boot::load(&mem, &ranges, spec)?;
            Ok((info, start.elapsed()))
        })
        .context("cannot start the boot loader thread")
}

/// The 8250 on the console (its interrupt an irqfd), CMOS, i8042 and the
/// ACPI ports; as `saved` has them when the VM is restored.
fn legacy_devices(
    vm: &VmFd,
    (panic, console): (&Arc<Mutex<Option<PanicRecord>>>, &Console),
    saved: Option<&crate::legacy::LegacyState>,
) -> Result<LegacyDevices> {
    let serial_evt = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
        .context("cannot create serial irq eventfd")?;
    vm.register_irqfd(&serial_evt, COM1_IRQ)
        .context("cannot register serial irqfd")?;
    let trigger = IrqTrigger(serial_evt);
    let out = ConsoleOut::new(Box::new(console.writer()), panic.clone());
    Ok(match saved {
        None => LegacyDevices::new(SerialDevice::new(trigger, out)),
        Some(s) => LegacyDevices::restored(
            SerialDevice::from_state(&s.serial, trigger, vm_superio::serial::NoEvents, out)
                .map_err(|e| anyhow::anyhow!("the snapshot's serial port: {e:?}"))?,
            s.cmos_index,
        ),
    })
}

impl<'a> Built<'a> {
    fn create_vcpus(
        &self,
        kvm: &Kvm,
        quirks: bool,
        xsave: Option<&Arc<crate::vcpu::xsave::Layout>>,
    ) -> Result<Vec<Vcpu>> {
        let cpus = self.cfg.cpus;
        let supported = setup::supported_cpuid(kvm)?;
        let vcpu_mem = self
            .memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .for_vcpus();
        let mut vcpus = Vec::with_capacity(usize::from(cpus));
        for index in 0..cpus {
            let fd = self
                .vm
                .create_vcpu(u64::from(index))
                .with_context(|| format!("cannot create vcpu{index}"))?;
            let cpuid = setup::cpuid(&supported, index, cpus, quirks);
            setup::configure(&fd, &cpuid)
                .with_context(|| format!("cannot configure vcpu{index}"))?;
            vcpus.push(Vcpu {
                index,
                fd,
                mem: vcpu_mem.clone(),
                legacy: self.legacy.clone(),
                retry_rip: 0,
                retries: 0,
                pci: self.pci.clone(),
                exit: self.exit.clone(),
                quirks,
                stats: self.stats.clone(),
                profile: self.profile.clone(),
                gate: self.gate.clone(),
                syscall: quirks.then(crate::vcpu::syscall::SyscallCompletion::default),
                xsave: xsave.cloned(),
            });
        }
        Ok(vcpus)
    }

    /// Phase 4: the vCPU threads start, install their allowlist and wait;
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

/// Phase 4 done: every VMM thread is confined; the vCPUs wait.
pub struct Confined<'a> {
    built: Built<'a>,
    handles: Arc<Vec<JoinHandle<()>>>,
    gate: Arc<StartGate>,
}

/// Phase 5: the guest runs.
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

/// KVM's list of MSRs a vCPU's state includes, and its vCPU state size
/// (KVM_CAP_XSAVE2, 0 without): what a snapshot records. Read while
/// /dev/kvm's system calls are still allowed.
fn snapshot_host(kvm: &Kvm) -> Result<(Vec<u32>, u32)> {
    let msrs = kvm
        .get_msr_index_list()
        .context("cannot read KVM's MSR list")?
        .as_slice()
        .to_vec();
    let size = u32::try_from(kvm.check_extension_int(kvm_ioctls::Cap::Xsave2)).unwrap_or(0);
    Ok((msrs, size))
}

/// The host's XSAVE layout, if skvm can complete XSAVE/XRSTOR with it: the
/// state must fit KVM_GET_XSAVE's 4 KiB (KVM_CAP_XSAVE2 gives the size).
fn xsave_layout(kvm: &Kvm) -> Option<Arc<crate::vcpu::xsave::Layout>> {
    let size = kvm.check_extension_int(kvm_ioctls::Cap::Xsave2);
    let fits = crate::vcpu::xsave::fits_kvm_xsave(size);
    let layout = crate::vcpu::xsave::Layout::host().filter(|_| fits || size == 0);
    if layout.is_none() {
        log::warn(&format!(
            "skvm cannot complete XSAVE on this host (vector state {size} bytes): the \
             guest kernel runs with noxsave, and its processes may see each other's \
             AVX registers (docs/ARCHITECTURE.md, \"Vector state of guest processes\")"
        ));
    }
    layout.map(Arc::new)
}

fn create_vm(kvm: &Kvm) -> Result<VmFd> {
    let vm = kvm.create_vm().context("cannot create KVM VM")?;
    vm.set_tss_address(usize::try_from(layout::KVM_TSS_ADDR).context("TSS address")?)
        .context("cannot set TSS address")?;
    vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDR)
        .context("cannot set identity map address")?;
    Ok(vm)
}

/// Adds the in-kernel irqchip and PIT to `vm`, whose guest RAM is
/// registered: a VM's first memslot takes ~6 ms when the irqchip exists
/// (on kvm_pvm hosts, measured), ~0.1 ms before it.
fn add_irqchip(vm: &VmFd, quirks: bool) -> Result<()> {
    vm.create_irq_chip()
        .context("cannot create in-kernel irqchip")?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).context("cannot create in-kernel PIT")?;
    if quirks {
        // The page faults that skvm's XSAVE/XRSTOR completion raises carry
        // their address (CR2) as the exception's payload.
        let cap = kvm_enable_cap {
            cap: KVM_CAP_EXCEPTION_PAYLOAD,
            args: [1, 0, 0, 0],
            ..Default::default()
        };
        vm.enable_cap(&cap)
            .context("cannot enable KVM_CAP_EXCEPTION_PAYLOAD (--host-quirks)")?;
    }
    Ok(())
}
