//! vCPU threads: the KVM_RUN loop and its exit handling.

pub mod emulation;
pub mod setup;
pub mod syscall;
pub mod xsave;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap};

use crate::exit::{ExitReason, ExitSignal};
use crate::legacy::acpi_pm::PowerEvent;
use crate::legacy::LegacyDevices;
use crate::log;
use crate::snapshot::vcpu::VcpuState;

/// The signal used to kick a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> i32 {
    libc::SIGRTMIN()
}

const KVM_INTERNAL_ERROR_EMULATION: u32 = 1;
const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;

/// Counts of what the vCPUs did, for `--debug` and the benchmarks.
#[derive(Default)]
pub struct VcpuStats {
    /// KVM_RUN returns of any kind.
    pub exits: AtomicU64,
    /// Port I/O exits.
    pub pio: AtomicU64,
    /// MMIO exits.
    pub mmio: AtomicU64,
    /// `int3` completed by skvm.
    pub int3: AtomicU64,
    /// `clac`/`stac` completed by skvm.
    pub ac: AtomicU64,
    /// `fwait` skipped by skvm.
    pub fwait: AtomicU64,
    /// `ldmxcsr`/`stmxcsr` completed by skvm.
    pub mxcsr: AtomicU64,
    /// `xsave`/`xrstor` completed by skvm.
    pub xsave: AtomicU64,
    /// Page faults and #GPs those instructions raised instead.
    pub faults: AtomicU64,
    /// Emulation failures that went away when the instruction was run again.
    pub retries: AtomicU64,
    /// User-mode SYSCALLs completed by skvm.
    pub syscalls: AtomicU64,
    /// Other guest page faults that met skvm's breakpoint.
    pub page_faults: AtomicU64,
    /// Time skvm spent on those debug exits, ns.
    pub debug_exit_ns: AtomicU64,
    /// Wall-clock time of the first KVM_RUN, ns since the Unix epoch (0: not yet).
    pub first_run_unix_ns: AtomicU64,
}

impl VcpuStats {
    /// A one-line summary.
    pub fn summary(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "exits {} (pio {}, mmio {}); emulation recoveries: int3 {}, clac/stac {}, fwait {}, ldmxcsr/stmxcsr {}, xsave/xrstor {} (faulted {}), retried {}; syscalls completed {} (page faults {}, {} us in skvm per syscall or fault)",
            g(&self.exits),
            g(&self.pio),
            g(&self.mmio),
            g(&self.int3),
            g(&self.ac),
            g(&self.fwait),
            g(&self.mxcsr),
            g(&self.xsave),
            g(&self.faults),
            g(&self.retries),
            g(&self.syscalls),
            g(&self.page_faults),
            g(&self.debug_exit_ns)
                .checked_div(g(&self.syscalls) + g(&self.page_faults))
                .unwrap_or(0)
                / 1000
        )
    }
}

/// One vCPU and what its exits need.
pub struct Vcpu {
    /// Index, equal to the APIC ID.
    pub index: u8,
    /// The KVM vCPU.
    pub fd: VcpuFd,
    /// Guest memory, for reading instructions on emulation failures
    /// (replaced when memory is hot-added).
    pub mem: GuestMemoryAtomic<GuestMemoryMmap>,
    /// The port I/O devices.
    pub legacy: Arc<LegacyDevices>,
    /// RIP of the last instruction KVM could not emulate, and how many times
    /// in a row it was retried.
    pub retry_rip: u64,
    /// See `retry_rip`.
    pub retries: u32,
    /// PCI bus 0: config ports and device BARs.
    pub pci: Arc<crate::pci::PciBus>,
    /// Where to report that the VM must stop.
    pub exit: Arc<ExitSignal>,
    /// Whether to complete instructions KVM failed to emulate.
    pub quirks: bool,
    /// The host's XSAVE layout, with which skvm completes the guest
    /// kernel's XSAVE and XRSTOR (emulating hosts); None elsewhere.
    pub xsave: Option<Arc<xsave::Layout>>,
    /// Shared counters.
    pub stats: Arc<VcpuStats>,
    /// Guest RIP samples taken when kicked, if profiling (`SKVM_PROFILE`).
    pub profile: Option<Arc<Profile>>,
    /// Holds the vCPU outside KVM_RUN while the VM is paused.
    pub gate: Arc<PauseGate>,
    /// Completes user-mode SYSCALLs the host left half done (emulating
    /// hosts, `--host-quirks`); None elsewhere.
    pub syscall: Option<syscall::SyscallCompletion>,
}

/// Holds vCPUs outside KVM_RUN while the VM is paused (`skvm ctl pause`).
#[derive(Default)]
pub struct PauseGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    paused: bool,
    parked: usize,
    /// A snapshot's request for every parked vCPU's state.
    capture: Option<Capture>,
}

/// What a snapshot asks of the parked vCPUs: their state, MSRs `msrs`.
struct Capture {
    msrs: Vec<u32>,
    states: Vec<Option<Result<VcpuState, String>>>,
}

/// Reads the state of a parked vCPU: first a KVM_RUN that only completes
/// the instruction of the last exit (an `in` or MMIO read whose data KVM
/// writes back at the next entry; immediate_exit runs no further guest
/// code), so the state is between two instructions.
fn capture_vcpu(fd: &mut VcpuFd, msrs: &[u32]) -> Result<VcpuState, String> {
    fd.set_kvm_immediate_exit(1);
    let completed = match fd.run() {
        Err(e) if e.errno() == libc::EINTR => Ok(()),
        Err(e) => Err(format!("completing the last exit: {e}")),
        Ok(_) => Err("an exit while completing the last one".to_owned()),
    };
    fd.set_kvm_immediate_exit(0);
    completed?;
    VcpuState::capture(fd, msrs).map_err(|e| e.to_string())
}

impl PauseGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by vCPU `index` between two KVM_RUNs: waits while the VM is
    /// paused (and not stopping), giving its state to a snapshot that asks.
    fn park_if_paused(&self, exit: &ExitSignal, index: usize, fd: &mut VcpuFd) {
        let mut s = self.lock();
        if !s.paused {
            return;
        }
        s.parked += 1;
        self.changed.notify_all();
        while s.paused && !exit.requested() {
            if let Some(c) = s.capture.as_mut() {
                if let Some(slot) = c.states.get_mut(index).filter(|slot| slot.is_none()) {
                    *slot = Some(capture_vcpu(fd, &c.msrs));
                    self.changed.notify_all();
                }
            }
            s = self
                .changed
                .wait_timeout(s, Duration::from_millis(100))
                .map_or_else(|e| e.into_inner().0, |(g, _)| g);
        }
        s.parked -= 1;
    }

    /// Pauses: returns once `vcpus` vCPUs are parked, calling `kick` (which
    /// gets them out of KVM_RUN) until they are; false after `timeout`.
    pub fn pause(&self, vcpus: usize, kick: impl Fn(), timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        s.paused = true;
        while s.parked < vcpus {
            if Instant::now() > deadline {
                return false;
            }
            drop(s);
            kick();
            s = self.lock();
            s = self
                .changed
                .wait_timeout(s, Duration::from_millis(1))
                .map_or_else(|e| e.into_inner().0, |(g, _)| g);
        }
        true
    }

    /// The state of each of the `vcpus` vCPUs, parked by [`PauseGate::pause`],
    /// with MSRs `msrs`, by vCPU index; an error names the first vCPU that
    /// could not give it, or says that they did not within `timeout`.
    pub fn capture(
        &self,
        vcpus: usize,
        msrs: Vec<u32>,
        timeout: Duration,
    ) -> Result<Vec<VcpuState>, String> {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        if !s.paused || s.parked < vcpus {
            return Err("the vCPUs are not paused".to_owned());
        }
        s.capture = Some(Capture {
            msrs,
            states: (0..vcpus).map(|_| None).collect(),
        });
        self.changed.notify_all();
        loop {
            let done = s
                .capture
                .as_ref()
                .is_some_and(|c| c.states.iter().all(Option::is_some));
            if done {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                s.capture = None;
                return Err(format!("the vCPUs gave no state within {timeout:?}"));
            }
            s = self
                .changed
                .wait_timeout(s, left.min(Duration::from_millis(10)))
                .map_or_else(|e| e.into_inner().0, |(g, _)| g);
        }
        let states = s.capture.take().map(|c| c.states).unwrap_or_default();
        states
            .into_iter()
            .enumerate()
            .map(|(i, st)| match st {
                Some(Ok(v)) => Ok(v),
                Some(Err(e)) => Err(format!("vcpu{i}: {e}")),
                None => Err(format!("vcpu{i}: no state")),
            })
            .collect()
    }

    /// Lets the vCPUs run again.
    pub fn resume(&self) {
        self.lock().paused = false;
        self.changed.notify_all();
    }
}

/// Guest RIP samples by second since the start (`SKVM_PROFILE`).
pub struct Profile {
    start: std::time::Instant,
    samples: std::sync::Mutex<std::collections::HashMap<(u64, u64), u64>>,
}

impl Profile {
    /// An empty profile whose clock starts now.
    pub fn new() -> Self {
        Self {
            start: std::time::Instant::now(),
            samples: std::sync::Mutex::default(),
        }
    }

    fn record(&self, rip: u64) {
        let sec = self.start.elapsed().as_secs();
        let mut p = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        *p.entry((sec, rip)).or_insert(0) += 1;
    }

    /// "second rip count" lines, in time order.
    pub fn render(&self) -> String {
        let p = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<(&(u64, u64), &u64)> = p.iter().collect();
        v.sort();
        v.iter()
            .map(|((sec, rip), n)| format!("{sec} {rip:#018x} {n}\n"))
            .collect()
    }
}

impl Default for Profile {
    fn default() -> Self {
        Self::new()
    }
}

/// What vCPU 0 calls once, under its filter, after its first return from
/// KVM_RUN (the guest has run): the escape build's attacks on the VMM
/// (`skvm-escape`, `SKVM_ESCAPE_VMM`). skvm itself sets none.
static PROBE: OnceLock<fn()> = OnceLock::new();

/// Sets the probe vCPU 0 calls; false if one is set already.
pub fn set_probe(probe: fn()) -> bool {
    PROBE.set(probe).is_ok()
}

impl Vcpu {
    /// Runs the guest until the VM stops.
    pub fn run(mut self) {
        let mut probe = PROBE.get().filter(|_| self.index == 0);
        while !self.exit.requested() {
            let gate = self.gate.clone();
            gate.park_if_paused(&self.exit, usize::from(self.index), &mut self.fd);
            if self.exit.requested() {
                break;
            }
            if let Err(reason) = self.run_once() {
                self.exit.request(reason);
            }
            if let Some(p) = probe.take() {
                p();
            }
        }
        if log::debug_enabled() {
            // Where each vCPU was when the VM stopped: what tells a guest
            // hang (a vCPU spinning or halted) from a stalled console.
            let where_ = match self.fd.get_regs() {
                Ok(r) => format!("rip {:#x} rflags {:#x}", r.rip, r.rflags),
                Err(e) => format!("registers unreadable: {e}"),
            };
            log::debug(&format!("vcpu{} stopped at {where_}", self.index));
        }
    }

    fn fatal(&self, msg: String) -> ExitReason {
        ExitReason::Fatal(format!("vcpu{}: {msg}", self.index))
    }

    fn run_once(&mut self) -> Result<(), ExitReason> {
        let stats = self.stats.clone();
        if stats.exits.fetch_add(1, Ordering::Relaxed) == 0 {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
            stats.first_run_unix_ns.store(now, Ordering::Relaxed);
        }
        if let Some(sc) = self.syscall.as_mut().filter(|sc| !sc.armed()) {
            let armed = sc
                .arm_if_ready(&self.fd, &self.mem.memory())
                .map_err(|e| ExitReason::Fatal(format!("vcpu{}: {e}", self.index)))?;
            if armed {
                log::debug(&format!(
                    "vcpu{}: breakpoint on the page-fault handler {:#x} completes user-mode SYSCALLs",
                    self.index,
                    sc.pf_entry()
                ));
            }
        }
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.sample_rip();
                return Ok(());
            }
            Err(e) => return Err(self.fatal(format!("KVM_RUN failed: {e}"))),
        };
        match exit {
            VcpuExit::IoIn(port, data) => {
                stats.pio.fetch_add(1, Ordering::Relaxed);
                if !self.pci.pio_read(port, data) {
                    self.legacy.pio_read(port, data);
                }
            }
            VcpuExit::IoOut(port, data) => {
                stats.pio.fetch_add(1, Ordering::Relaxed);
                if !self.pci.pio_write(port, data) {
                    if let Some(ev) = self.legacy.pio_write(port, data) {
                        return Err(power_reason(ev));
                    }
                }
            }
            VcpuExit::MmioRead(addr, data) => {
                stats.mmio.fetch_add(1, Ordering::Relaxed);
                if !self.pci.mmio_read(addr, data) {
                    data.fill(0xff);
                }
            }
            VcpuExit::MmioWrite(addr, data) => {
                stats.mmio.fetch_add(1, Ordering::Relaxed);
                self.pci.mmio_write(addr, data);
            }
            VcpuExit::Hlt => {}
            VcpuExit::Shutdown => {
                log::debug(&format!(
                    "vcpu{}: triple fault, treated as reset",
                    self.index
                ));
                return Err(ExitReason::Reboot);
            }
            VcpuExit::SystemEvent(kind, _) => {
                return Err(match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::Poweroff,
                    KVM_SYSTEM_EVENT_RESET => ExitReason::Reboot,
                    KVM_SYSTEM_EVENT_CRASH => ExitReason::GuestPanic("guest crashed".into()),
                    other => self.fatal(format!("unknown system event {other}")),
                });
            }
            VcpuExit::InternalError => return self.internal_error(),
            VcpuExit::FailEntry(reason, cpu) => {
                return Err(self.fatal(format!(
                    "KVM entry failed: hardware reason {reason:#x} on host cpu {cpu}"
                )));
            }
            VcpuExit::Intr => {}
            VcpuExit::Debug(arch) => return self.debug_exit(&arch),
            other => {
                let what = format!("unexpected KVM exit {other:?}");
                return Err(self.fatal(what));
            }
        }
        Ok(())
    }

    fn debug_exit(&mut self, arch: &kvm_bindings::kvm_debug_exit_arch) -> Result<(), ExitReason> {
        let Some(sc) = &mut self.syscall else {
            return Err(self.fatal(format!(
                "unexpected debug exit at {:#x} (no breakpoint is set)",
                arch.pc
            )));
        };
        let start = Instant::now();
        let outcome = sc.on_debug_exit(&self.fd, &self.mem.memory(), arch);
        let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.stats.debug_exit_ns.fetch_add(ns, Ordering::Relaxed);
        match outcome {
            Ok(syscall::DebugOutcome::Completed) => {
                self.stats.syscalls.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Ok(syscall::DebugOutcome::PageFault) => {
                self.stats.page_faults.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Ok(syscall::DebugOutcome::Stepped) => Ok(()),
            Ok(syscall::DebugOutcome::Reinjected) => {
                log::debug(&format!(
                    "vcpu{}: debug exception at {:#x} handed to the guest",
                    self.index, arch.pc
                ));
                Ok(())
            }
            Err(e) => Err(self.fatal(e.to_string())),
        }
    }

    /// Records the guest RIP in the profile (a debugging aid for hosts where
    /// guest kernel code is emulated and slow).
    fn sample_rip(&self) {
        let Some(profile) = &self.profile else {
            return;
        };
        if let Ok(regs) = self.fd.get_regs() {
            profile.record(regs.rip);
        }
    }

    /// Guest memory as it is now.
    fn memory(&self) -> GuestMemoryLoadGuard<GuestMemoryMmap> {
        self.mem.memory()
    }

    fn internal_error(&mut self) -> Result<(), ExitReason> {
        const EMULATION_RETRIES: u32 = 3;
        // SAFETY: KVM_EXIT_INTERNAL_ERROR means the `internal` union member is
        // the one KVM filled in.
        let suberror = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
        if suberror != KVM_INTERNAL_ERROR_EMULATION {
            return Err(self.fatal(format!("KVM internal error, suberror {suberror}")));
        }
        if !self.quirks {
            let mem = self.memory();
            let detail = match emulation::recover_dry(&self.fd, &mem) {
                Ok(s) => s,
                Err(e) => e.to_string(),
            };
            return Err(self.fatal(format!(
                "KVM could not emulate a guest instruction ({detail}); \
                 try --host-quirks on"
            )));
        }
        match emulation::recover(&self.fd, &self.memory(), self.xsave.as_deref()) {
            Ok(emulation::Completed { action, fault }) => {
                if fault.is_some() {
                    self.stats.faults.fetch_add(1, Ordering::Relaxed);
                }
                let c = match action {
                    emulation::Recovery::Breakpoint => &self.stats.int3,
                    emulation::Recovery::SetAc(_) => &self.stats.ac,
                    emulation::Recovery::Skip => &self.stats.fwait,
                    emulation::Recovery::LoadMxcsr(..) | emulation::Recovery::StoreMxcsr(..) => {
                        &self.stats.mxcsr
                    }
                    emulation::Recovery::Xsave(..) | emulation::Recovery::Xrstor(..) => {
                        &self.stats.xsave
                    }
                };
                c.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e @ emulation::EmulationError::Unhandled { rip, .. }) => {
                // Another vCPU may be patching this very instruction (Linux
                // rewrites kernel text through int3 while other CPUs run it),
                // and KVM's emulator may have fetched it half-written: run it
                // again a few times before giving up.
                if rip == self.retry_rip && self.retries >= EMULATION_RETRIES {
                    return Err(self.fatal(e.to_string()));
                }
                if rip != self.retry_rip {
                    self.retry_rip = rip;
                    self.retries = 0;
                }
                self.retries += 1;
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                std::thread::yield_now();
                Ok(())
            }
            Err(e) => Err(self.fatal(e.to_string())),
        }
    }
}

fn power_reason(ev: PowerEvent) -> ExitReason {
    match ev {
        PowerEvent::Shutdown => ExitReason::Poweroff,
        PowerEvent::Reboot => ExitReason::Reboot,
    }
}
