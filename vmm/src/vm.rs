//! Building and running a VM: KVM VM with in-kernel irqchip and PIT, guest
//! RAM memslots, the boot images, legacy devices, vCPU threads, and the main
//! thread's console and exit loop.

use std::os::fd::AsRawFd;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::{self, BootSpec};
use crate::config::{HostQuirks, VmConfig};
use crate::console::{EscapeParser, RawTerminal};
use crate::ctl::{Control, CtlServer};
use crate::device_host::DeviceHost;
use crate::disk;
use crate::exit::{ExitReason, ExitSignal};
use crate::irq::IrqRouter;
use crate::legacy::serial::{ConsoleOut, IrqTrigger, PanicRecord, SerialDevice, COM1_IRQ};
use crate::legacy::LegacyDevices;
use crate::memory::GuestRam;
use crate::pci::PciBus;
use crate::tap;
use crate::vcpu::{self, setup, PauseGate, Vcpu, VcpuStats};
use crate::{host, hotplug, layout, log};

/// How long a panicked guest may take to reboot itself before skvm stops it.
const PANIC_GRACE: Duration = Duration::from_secs(5);

/// The eventfd a termination signal writes to (-1 until set).
static SIGNAL_EVENT_FD: AtomicI32 = AtomicI32::new(-1);
static SIGNAL_NUMBER: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_terminate(sig: libc::c_int) {
    SIGNAL_NUMBER.store(sig, Ordering::SeqCst);
    let fd = SIGNAL_EVENT_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; the buffer is 8 valid bytes.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

extern "C" fn on_kick(_: libc::c_int) {}

fn install_handler(sig: libc::c_int, handler: extern "C" fn(libc::c_int)) -> Result<()> {
    // SAFETY: sigaction is plain data; zeroed is a valid starting value.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = handler as usize;
    // No SA_RESTART: KVM_RUN must return EINTR when kicked.
    act.sa_flags = 0;
    // SAFETY: installs a handler that only does async-signal-safe work.
    if unsafe { libc::sigaction(sig, &act, std::ptr::null_mut()) } != 0 {
        bail!("cannot install handler for signal {sig}");
    }
    Ok(())
}

/// A device's name (test builds may make it an escape device).
fn device_name(base: String) -> String {
    #[cfg(feature = "escape-test")]
    let base = crate::device_host::escape::run_device_name(base);
    base
}

/// Creates the VM, boots it, and runs it until it stops.
pub fn run(cfg: &VmConfig, debug: bool) -> Result<ExitReason> {
    let kvm = host::open_kvm()?;
    check_limits(&kvm, cfg)?;
    let quirks = match cfg.host_quirks {
        HostQuirks::On => true,
        HostQuirks::Off => false,
        HostQuirks::Auto => host::is_emulating_host(),
    };
    if quirks {
        log::debug("emulating host: completing int3/clac/stac/fwait and adding guest quirks");
    }

    // Device processes come from a spawner forked now, while skvm still has
    // a single thread.
    let mut host = DeviceHost::new(
        cfg.device_mode,
        (cfg.on_device_failure, cfg.restart_limit),
        cfg.sandbox,
    )?;
    let ctl_server = cfg.ctl.as_deref().map(CtlServer::bind).transpose()?;
    let ram = GuestRam::new(cfg.mem).context("cannot create guest memory")?;
    // Reading the kernel and initrd into fresh guest pages is most of the
    // setup time (page allocation, ~2 ms per MiB on kvm_pvm hosts): it runs
    // in a thread while the VM, its memslots and the devices are set up.
    let cmdline = cfg.cmdline(quirks);
    log::debug(&format!("kernel command line: {cmdline}"));
    let loader = {
        let mem = ram.mem.clone();
        let ranges = ram.ranges.clone();
        let (kernel, initrd, cpus) = (cfg.kernel.clone(), cfg.initrd.clone(), cfg.cpus);
        let cmdline = cmdline.clone();
        std::thread::Builder::new()
            .name("boot-loader".into())
            .spawn(move || {
                boot::load(
                    &mem,
                    &ranges,
                    &BootSpec {
                        kernel: &kernel,
                        initrd: initrd.as_deref(),
                        cmdline: &cmdline,
                        cpus,
                    },
                )
            })
            .context("cannot start the boot loader thread")?
    };
    let vm = Arc::new(create_vm(&kvm, &ram)?);
    let router = Arc::new(IrqRouter::new(vm.clone()));
    let mut pci = PciBus::new();
    for (i, spec) in cfg.disks.iter().enumerate() {
        let disk = disk::open(spec)?;
        let backend = ipc::Backend::Block {
            sectors: disk.sectors,
            read_only: spec.read_only,
            direct: spec.direct,
            serial: spec.serial.clone().unwrap_or_default().into_bytes(),
        };
        host.add(
            &device_name(format!("blk{i}")),
            (backend, vec![disk.fd]),
            &mut pci,
            &ram,
            &vm,
            &router,
        )?;
    }
    if cfg.rng {
        host.add(
            &device_name("rng0".to_owned()),
            (ipc::Backend::None, Vec::new()),
            &mut pci,
            &ram,
            &vm,
            &router,
        )?;
    }
    for (i, spec) in cfg.nets.iter().enumerate() {
        let name = device_name(format!("net{i}"));
        let tap = tap::open(spec).with_context(|| format!("device {name}"))?;
        let mac = spec
            .mac
            .unwrap_or_else(|| tap::default_mac(&cfg.name, &name));
        if tap.created {
            log::info(&format!(
                "device {name}: created tap {} (removed when skvm exits)",
                tap.name
            ));
        }
        log::debug(&format!(
            "device {name}: tap {}, MAC {}",
            tap.name,
            tap::format_mac(&mac)
        ));
        host.add(
            &name,
            (ipc::Backend::Net { mac }, vec![tap.fd]),
            &mut pci,
            &ram,
            &vm,
            &router,
        )?;
    }
    // Memory hotplug: virtio-mem last, with nothing usable yet.
    let vcpu_mem = Arc::new(Mutex::new(ram.mem.clone()));
    let hotplug = if cfg.hotplug_mem > 0 {
        let top = ram
            .ranges
            .iter()
            .map(|r| r.guest_addr + r.size)
            .max()
            .unwrap_or(0);
        let addr = layout::hotplug_region(top);
        host.add(
            hotplug::DEVICE,
            (hotplug::backend(addr, cfg.hotplug_mem, 0), Vec::new()),
            &mut pci,
            &ram,
            &vm,
            &router,
        )?;
        let ranges = ram.ranges.iter().map(|r| (*r, ram.memfd.clone())).collect();
        Some(hotplug::Hotplug::new(
            vm.clone(),
            (addr, cfg.hotplug_mem),
            ranges,
            vcpu_mem.clone(),
        ))
    } else {
        None
    };
    let pci = Arc::new(pci);

    let exit = Arc::new(ExitSignal::new().context("cannot create exit eventfd")?);
    SIGNAL_EVENT_FD.store(exit.eventfd().as_raw_fd(), Ordering::SeqCst);
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        install_handler(sig, on_terminate)?;
    }
    install_handler(vcpu::kick_signal(), on_kick)?;

    let panic = Arc::new(Mutex::new(None));
    let serial_evt = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
        .context("cannot create serial irq eventfd")?;
    vm.register_irqfd(&serial_evt, COM1_IRQ)
        .context("cannot register serial irqfd")?;
    let serial = SerialDevice::new(
        IrqTrigger(serial_evt),
        ConsoleOut::new(Box::new(std::io::stdout()), panic.clone()),
    );
    let legacy = Arc::new(LegacyDevices::new(serial));
    let stats = Arc::new(VcpuStats::default());

    let profile = std::env::var_os("SKVM_PROFILE").map(|_| Arc::new(vcpu::Profile::new()));
    // vCPUs are created and configured while the loader runs; only the boot
    // vCPU's registers wait for it.
    let gate = Arc::new(PauseGate::default());
    let supported = setup::supported_cpuid(&kvm)?;
    let mut vcpus = Vec::with_capacity(usize::from(cfg.cpus));
    for index in 0..cfg.cpus {
        let fd = vm
            .create_vcpu(u64::from(index))
            .with_context(|| format!("cannot create vcpu{index}"))?;
        let cpuid = setup::cpuid(&supported, index, cfg.cpus, quirks);
        setup::configure(&fd, &cpuid).with_context(|| format!("cannot configure vcpu{index}"))?;
        vcpus.push(Vcpu {
            index,
            fd,
            mem: vcpu_mem.clone(),
            legacy: legacy.clone(),
            retry_rip: 0,
            retries: 0,
            pci: pci.clone(),
            exit: exit.clone(),
            quirks,
            stats: stats.clone(),
            profile: profile.clone(),
            gate: gate.clone(),
        });
    }
    let boot_info = loader
        .join()
        .map_err(|_| anyhow::anyhow!("the boot loader thread panicked"))??;
    if let Some(boot) = vcpus.first() {
        setup::set_boot_state(&boot.fd, &ram.mem, &boot_info)
            .context("cannot set up the boot vcpu")?;
    }
    // The VMM's own filter, on every thread that exists now (device threads
    // in thread mode) and inherited by the vCPU threads created next.
    #[cfg(feature = "escape-test")]
    let escape = crate::vmm_sandbox::escape::prepare();
    cfg.vmm_sandbox
        .install(cfg.sandbox.seccomp)
        .with_context(|| format!("cannot confine the VMM (--sandbox {})", cfg.vmm_sandbox))?;
    #[cfg(feature = "escape-test")]
    if let Some(e) = escape {
        e.run();
    }
    log::debug(&format!(
        "VMM seccomp filter: --sandbox {}",
        cfg.vmm_sandbox
    ));
    let handles = Arc::new(spawn_vcpus(vcpus)?);
    let sampler = profile
        .as_ref()
        .map(|_| spawn_sampler(handles.clone(), exit.clone()));
    let _raw = RawTerminal::enable(libc::STDIN_FILENO);
    let mut control = ctl_server.map(|server| Control::new(server, gate, handles.clone(), hotplug));
    main_loop(&exit, &legacy, &panic, &mut host, control.as_mut());
    drop(control);
    if let Some(s) = sampler {
        let _ = s.join();
    }
    let handles = Arc::try_unwrap(handles).unwrap_or_default();
    stop_vcpus(handles);
    host.shutdown();
    if let (Some(p), Some(path)) = (&profile, std::env::var_os("SKVM_PROFILE")) {
        write_profile(p, std::path::Path::new(&path));
    }
    drop(_raw);
    if debug {
        log::info(&stats.summary());
        log::info(&format!(
            "first KVM_RUN at unix-ns {}",
            stats
                .first_run_unix_ns
                .load(std::sync::atomic::Ordering::Relaxed)
        ));
        if let Some(m) = host::self_memory() {
            log::info(&format!(
                "memory: peak rss {} KiB, guest ram resident {} KiB, vmm overhead {} KiB",
                m.peak_rss_kib,
                m.shmem_kib,
                m.peak_rss_kib.saturating_sub(m.shmem_kib)
            ));
        }
    }
    drop(host);
    drop(pci);
    drop(router);
    drop(vm);
    let reason = exit.reason().unwrap_or(ExitReason::Poweroff);
    Ok(match reason {
        ExitReason::Reboot | ExitReason::Poweroff => match lock_panic(&panic).clone() {
            Some(p) => ExitReason::GuestPanic(p.message),
            None => reason,
        },
        other => other,
    })
}

fn lock_panic(p: &Mutex<Option<PanicRecord>>) -> std::sync::MutexGuard<'_, Option<PanicRecord>> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kicks every vCPU every 10 ms so it samples its RIP (SKVM_PROFILE).
fn spawn_sampler(handles: Arc<Vec<JoinHandle<()>>>, exit: Arc<ExitSignal>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        while !exit.requested() {
            for h in handles.iter() {
                if !h.is_finished() {
                    // SAFETY: the thread is alive; the handler does nothing.
                    unsafe { libc::pthread_kill(h.as_pthread_t(), vcpu::kick_signal()) };
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

/// Writes the profile's "second rip count" lines to `path`.
fn write_profile(p: &vcpu::Profile, path: &std::path::Path) {
    match std::fs::write(path, p.render()) {
        Ok(()) => log::info(&format!("guest rip profile written to {}", path.display())),
        Err(e) => log::error(&format!("cannot write profile {}: {e}", path.display())),
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

fn create_vm(kvm: &Kvm, ram: &GuestRam) -> Result<VmFd> {
    let vm = kvm.create_vm().context("cannot create KVM VM")?;
    vm.set_tss_address(usize::try_from(layout::KVM_TSS_ADDR).context("TSS address")?)
        .context("cannot set TSS address")?;
    vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDR)
        .context("cannot set identity map address")?;
    vm.create_irq_chip()
        .context("cannot create in-kernel irqchip")?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).context("cannot create in-kernel PIT")?;
    for (slot, r) in ram.ranges.iter().enumerate() {
        let host = ram
            .mem
            .get_host_address(GuestAddress(r.guest_addr))
            .context("guest RAM is not mapped")?;
        let region = kvm_userspace_memory_region {
            slot: u32::try_from(slot).context("too many memslots")?,
            guest_phys_addr: r.guest_addr,
            memory_size: r.size,
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping of guest RAM owned by `ram`,
        // which outlives the VM (the caller drops the VM first).
        unsafe { vm.set_user_memory_region(region) }
            .with_context(|| format!("cannot add memslot {slot}"))?;
    }
    Ok(vm)
}

fn spawn_vcpus(vcpus: Vec<Vcpu>) -> Result<Vec<JoinHandle<()>>> {
    let mut handles = Vec::with_capacity(vcpus.len());
    for v in vcpus {
        let name = format!("skvm-vcpu{}", v.index);
        let h = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || v.run())
            .with_context(|| format!("cannot start thread {name}"))?;
        handles.push(h);
    }
    Ok(handles)
}

/// Kicks each vCPU out of KVM_RUN until its thread ends.
fn stop_vcpus(handles: Vec<JoinHandle<()>>) {
    for h in handles {
        while !h.is_finished() {
            // SAFETY: the thread is alive (not finished and not joined), so
            // its pthread_t is valid; the signal's handler does nothing.
            unsafe { libc::pthread_kill(h.as_pthread_t(), vcpu::kick_signal()) };
            std::thread::sleep(Duration::from_millis(1));
        }
        if h.join().is_err() {
            log::error("a vcpu thread panicked");
        }
    }
}

/// Forwards terminal input to the UART, serves device events and the
/// control socket, and waits for an exit reason.
fn main_loop(
    exit: &ExitSignal,
    legacy: &LegacyDevices,
    panic: &Mutex<Option<PanicRecord>>,
    host: &mut DeviceHost,
    mut control: Option<&mut Control>,
) {
    let mut parser = EscapeParser::default();
    let mut stdin_open = true;
    let mut pending: Vec<u8> = Vec::new();
    loop {
        if exit.requested() {
            return;
        }
        if let Some(p) = lock_panic(panic).as_ref() {
            if p.at.elapsed() > PANIC_GRACE {
                exit.request(ExitReason::GuestPanic(p.message.clone()));
                return;
            }
        }
        if !pending.is_empty() {
            let n = legacy.serial_input(&pending);
            pending.drain(..n.min(pending.len()));
        }
        let stdin_fd = if stdin_open && pending.is_empty() {
            libc::STDIN_FILENO
        } else {
            -1
        };
        let host_fds = host.poll_fds();
        let n_host = host_fds.len();
        let ctl_fd = control.as_ref().map_or(-1, |c| c.fd());
        let mut fds: Vec<libc::pollfd> = [exit.eventfd().as_raw_fd(), stdin_fd]
            .into_iter()
            .chain(host_fds)
            .chain([ctl_fd])
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let timeout = if pending.is_empty() { 250 } else { 5 };
        let nfds = libc::nfds_t::try_from(fds.len()).unwrap_or(2);
        // SAFETY: `fds` is a valid array of `nfds` pollfd structs.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), nfds, timeout) };
        if n < 0 {
            continue;
        }
        if fds.iter().skip(2).take(n_host).any(|f| f.revents != 0) {
            if let Some(reason) = host.service() {
                exit.request(reason);
                return;
            }
        }
        if let Some(c) = control.as_deref_mut() {
            if fds.last().is_some_and(|f| f.revents != 0) {
                c.serve(host, exit);
            }
        }
        if fds[0].revents != 0 {
            if !exit.requested() {
                let sig = SIGNAL_NUMBER.load(Ordering::SeqCst);
                exit.request(ExitReason::Fatal(format!("terminated by signal {sig}")));
            }
            return;
        }
        if fds[1].revents != 0 {
            let mut buf = [0u8; 256];
            // SAFETY: reads into a valid buffer of the given length.
            let r = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
            let Ok(len) = usize::try_from(r) else {
                continue;
            };
            if len == 0 {
                stdin_open = false;
                continue;
            }
            let input = parser.feed(buf.get(..len).unwrap_or_default());
            pending.extend_from_slice(&input.bytes);
            if input.quit {
                exit.request(ExitReason::UserQuit);
                return;
            }
        }
    }
}
