//! Phase 4 of a run, [`Opened::build`]: the machine from what phase 3
//! opened. Guest memory's memslots and the in-kernel irqchip, every device
//! attached to the PCI bus, the legacy devices and the vCPUs; the kernel
//! and initrd load meanwhile in a thread, and only the boot vCPU's
//! registers wait for them. A restore puts back memory, the machine's and
//! the devices' state instead.

use std::fs::File;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kvm_bindings::{
    kvm_enable_cap, kvm_pit_config, KVM_CAP_EXCEPTION_PAYLOAD, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use vmm_sys_util::eventfd::EventFd;

use super::backends::attach_devices;
use super::main_loop::install_signals;
use super::{ms, Built, HostChecked, Opened, Start};
use crate::boot::{self, BootSpec};
use crate::console::backend::Console;
use crate::exit::ExitSignal;
use crate::hotplug::Hotplug;
use crate::irq::IrqRouter;
use crate::legacy::power_button::PowerButton;
use crate::legacy::serial::{ConsoleOut, IrqTrigger, PanicRecord, SerialDevice, COM1_IRQ};
use crate::legacy::vmgenid;
use crate::legacy::LegacyDevices;
use crate::memory::Memory;
use crate::pci::PciBus;
use crate::snapshot::restore::Times;
use crate::snapshot::state::VmSnapshot;
use crate::vcpu::{self, setup, PauseGate, Vcpu, VcpuStats};
use crate::{layout, log};

/// The boot images' loader thread: what it loaded and how long it took.
type Loader = JoinHandle<Result<(boot::BootInfo, Duration)>>;

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
        // Whether skvm can complete the guest kernel's XSAVE/XRSTOR decides
        // whether the kernel may use them.
        let xsave = if quirks { xsave_layout(&kvm) } else { None };
        let snapshot_host = snapshot_host(&kvm)?;
        let restore = cfg.restore.as_ref().map(|r| &*r.snapshot);
        // Reading the kernel and initrd into fresh guest pages is most of
        // the setup time (page allocation, ~2 ms per MiB on kvm_pvm hosts):
        // it runs in a thread while the VM, its memslots and the devices
        // are set up.
        let (loader, memory_file) = match start {
            Start::Boot(kernel, initrd) => {
                let spec = boot_spec(cfg, kernel, initrd, (quirks, xsave.is_some()));
                (Some(start_loader(boot_ram, spec)?), None)
            }
            Start::Restore(file) => (None, Some(file)),
        };
        if let Some(snap) = restore {
            crate::snapshot::restore::check_host(snap, quirks, snapshot_host.1)?;
            crate::snapshot::restore::take_device_options(snap, &mut backends)?;
        }
        let mut times = Times::default();
        let saved = restore.zip(memory_file.as_ref());
        let (vm, added) = machine(&kvm, &mut memory, quirks, saved, hotplug_room, &mut times)?;
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
            built.restore_machine(snap, times)?;
        }
        if let Some(loader) = loader {
            built.boot_vcpu_from(loader)?;
        }
        built.new_generation(restore.is_some())?;
        Ok(built)
    }
}

impl Built<'_> {
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

    /// A restore's last steps: the irqchips, the vCPUs' state and then the
    /// devices'; logs how long each part of the restore took.
    fn restore_machine(&mut self, snap: &VmSnapshot, mut times: Times) -> Result<()> {
        let fds: Vec<&kvm_ioctls::VcpuFd> = self.vcpus.iter().map(|v| &v.fd).collect();
        let t = Instant::now();
        crate::snapshot::restore::machine(snap, &self.vm, &fds)?;
        times.machine = t.elapsed();
        // Devices last: a restored device serves what waits in its queues
        // at once, and the interrupts it raises must land in the restored
        // irqchips and LAPICs, not be overwritten by them.
        let t = Instant::now();
        crate::snapshot::restore::devices(snap, &mut self.host, &self.pci)?;
        self.legacy.reassert_serial_interrupt();
        times.devices = t.elapsed();
        log::info(&format!(
            "restored from {}: {times}",
            self.cfg
                .restore
                .as_ref()
                .map(|r| r.dir.display().to_string())
                .unwrap_or_default()
        ));
        Ok(())
    }

    /// Waits for the boot images and sets the boot vCPU's registers from
    /// where they landed.
    fn boot_vcpu_from(&self, loader: Loader) -> Result<()> {
        let waited = Instant::now();
        let (boot_info, took) = loader
            .join()
            .map_err(|_| anyhow::anyhow!("the boot loader thread panicked"))??;
        log::debug(&format!(
            "boot images loaded in {:.2} ms; the machine waited {:.2} ms for them",
            ms(took),
            ms(waited.elapsed())
        ));
        if let Some(boot) = self.vcpus.first() {
            let memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
            let mem = memory.boot().context("no boot RAM")?;
            setup::set_boot_state(&boot.fd, mem, &boot_info)
                .context("cannot set up the boot vcpu")?;
        }
        Ok(())
    }

    /// A new generation ID at each boot and each restore (announced to a
    /// restored guest): two machines restored from one snapshot must not
    /// share their random state.
    fn new_generation(&self, restored: bool) -> Result<()> {
        {
            let memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
            vmgenid::write_new(memory.boot().context("no boot RAM")?)?;
        }
        if restored {
            vmgenid::announce(&self.vm)?;
        }
        Ok(())
    }
}

/// What the loader needs to boot `kernel` (and `initrd`) as `cfg` says,
/// with the emulating host's quirks and XSAVE completion or not.
fn boot_spec(
    cfg: &crate::config::VmConfig,
    kernel: boot::BootFile,
    initrd: Option<boot::BootFile>,
    (quirks, xsave): (bool, bool),
) -> BootSpec {
    let cmdline = cfg.cmdline(quirks, xsave);
    log::debug(&format!("kernel command line: {cmdline}"));
    BootSpec {
        kernel,
        initrd,
        cmdline,
        cpus: cfg.cpus,
        unpack: cfg.decompress == crate::config::Decompress::Skvm,
    }
}

/// The VM, with guest memory's memslots and the in-kernel irqchip; with a
/// snapshot and its memory file, the saved memory put back (hot-plugged
/// regions re-added within `hotplug_room`: how many). The time that took
/// goes into `times`.
fn machine(
    kvm: &Kvm,
    memory: &mut Memory,
    quirks: bool,
    saved: Option<(&VmSnapshot, &File)>,
    hotplug_room: Option<(u64, u64)>,
    times: &mut Times,
) -> Result<(Arc<VmFd>, u64)> {
    let vm = Arc::new(create_vm(kvm)?);
    memory.register(vm.clone())?;
    add_irqchip(&vm, quirks)?;
    let Some((snap, file)) = saved else {
        return Ok((vm, 0));
    };
    let t = Instant::now();
    let added = crate::snapshot::restore::memory(snap, memory, hotplug_room, file)?;
    times.memory = t.elapsed();
    Ok((vm, added))
}

/// Starts the thread that loads the kernel and initrd into boot RAM; it
/// returns how long that took besides.
fn start_loader(
    (mem, ranges): (vm_memory::GuestMemoryMmap, Vec<crate::memory::RamRange>),
    spec: BootSpec,
) -> Result<Loader> {
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
