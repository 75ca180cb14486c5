//! One vCPU's architectural state, as KVM gives it and takes it back:
//! general and special registers, the XSAVE area (x87, SSE, AVX and what
//! else the host has), XCR0, debug registers, the local APIC, every MSR
//! KVM saves (TSC, kvmclock, SYSCALL, ...), pending events and the
//! multiprocessing state.
//!
//! The structures are kept as KVM's own (their layout is KVM's ABI) and
//! written as their bytes; reading them back takes any bytes, since every
//! field is an integer. What the guest could not have produced (an MSR KVM
//! refuses, an XSAVE area KVM rejects) is refused by KVM on restore, and
//! the restore fails with the call named.

use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
};
use kvm_ioctls::VcpuFd;

use super::format::{Dec, Enc, FormatError};
use super::pod::{from_bytes, Pod};
use crate::vcpu::xsave::{area_bytes, set_area_bytes};

/// Most MSRs saved per vCPU (KVM's list has a few dozen to a few hundred).
pub const MAX_MSRS: usize = 1024;
/// Bytes of the XSAVE area KVM_GET_XSAVE gives.
const XSAVE_BYTES: usize = 4096;

/// A failed KVM call on a vCPU.
#[derive(Debug, thiserror::Error)]
#[error("vcpu {what}: {source}")]
pub struct VcpuStateError {
    /// The call.
    pub what: String,
    /// KVM's error.
    pub source: kvm_ioctls::Error,
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuStateError {
    move |source| VcpuStateError {
        what: what.into(),
        source,
    }
}

/// One vCPU's state.
#[derive(Clone)]
pub struct VcpuState {
    /// Running, halted, waiting for INIT/SIPI.
    pub mp_state: kvm_mp_state,
    /// General registers, RIP, RFLAGS.
    pub regs: kvm_regs,
    /// Segments, descriptor tables, control registers, EFER, APIC base.
    pub sregs: kvm_sregs,
    /// The XSAVE area, in the host's standard layout.
    pub xsave: Vec<u8>,
    /// The extended control registers (XCR0).
    pub xcrs: kvm_xcrs,
    /// DR0-3, DR6, DR7.
    pub debugregs: kvm_debugregs,
    /// The local APIC's register page.
    pub lapic: kvm_lapic_state,
    /// Every MSR of `indices` KVM could read, as (index, value).
    pub msrs: Vec<(u32, u64)>,
    /// Pending and injected exceptions, interrupts, NMIs, SMIs.
    pub events: kvm_vcpu_events,
}

/// Reads the MSRs of `indices` that KVM gives for this vCPU: in batches;
/// an index KVM cannot read (KVM stops a batch there) is left out.
pub(crate) fn read_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<(u32, u64)>, VcpuStateError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let batch = &rest[..rest.len().min(kvm_bindings::KVM_MAX_MSR_ENTRIES)];
        let entries: Vec<kvm_msr_entry> = batch
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| VcpuStateError {
            what: "msr list".into(),
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        let n = fd.get_msrs(&mut msrs).map_err(kvm("get msrs"))?;
        out.extend(msrs.as_slice().iter().take(n).map(|e| (e.index, e.data)));
        // KVM stops at the first MSR it cannot read: skip that one.
        rest = &rest[(n + 1).min(rest.len())..];
    }
    Ok(out)
}

impl VcpuState {
    /// The saved value of MSR `index`, if KVM gave it.
    pub fn msr(&self, index: u32) -> Option<u64> {
        self.msrs.iter().find(|(i, _)| *i == index).map(|(_, v)| *v)
    }

    /// Reads the state of `fd`, which must not be in KVM_RUN (the VM is
    /// paused); `msrs` are the MSR indices to save (KVM's index list).
    pub fn capture(fd: &VcpuFd, msrs: &[u32]) -> Result<Self, VcpuStateError> {
        let mp_state = fd.get_mp_state().map_err(kvm("get mp state"))?;
        let regs = fd.get_regs().map_err(kvm("get regs"))?;
        let sregs = fd.get_sregs().map_err(kvm("get sregs"))?;
        let xsave = area_bytes(&fd.get_xsave().map_err(kvm("get xsave"))?);
        let xcrs = fd.get_xcrs().map_err(kvm("get xcrs"))?;
        let debugregs = fd.get_debug_regs().map_err(kvm("get debug regs"))?;
        let lapic = fd.get_lapic().map_err(kvm("get lapic"))?;
        let msrs = read_msrs(fd, msrs)?;
        // Last, as Linux's own save order has it: reading the other state
        // does not change the pending events.
        let events = fd.get_vcpu_events().map_err(kvm("get vcpu events"))?;
        Ok(Self {
            mp_state,
            regs,
            sregs,
            xsave,
            xcrs,
            debugregs,
            lapic,
            msrs,
            events,
        })
    }

    /// Gives the state to `fd`, a vCPU created and configured (CPUID) as
    /// the saved one was. The order is the one KVM needs: the special
    /// registers before the XSAVE area and XCRs (CR4.OSXSAVE), the APIC
    /// before the MSRs (the TSC deadline timer), the events last.
    pub fn apply(&self, fd: &VcpuFd) -> Result<(), VcpuStateError> {
        fd.set_mp_state(self.mp_state)
            .map_err(kvm("set mp state"))?;
        fd.set_regs(&self.regs).map_err(kvm("set regs"))?;
        fd.set_sregs(&self.sregs).map_err(kvm("set sregs"))?;
        let mut x = kvm_xsave::default();
        set_area_bytes(&mut x, &self.xsave);
        // SAFETY: `x` is a whole kvm_xsave (4 KiB): skvm restores only
        // where KVM_CAP_XSAVE2 says the state fits in it (checked against
        // the host when the snapshot is opened), so KVM reads no further.
        unsafe { fd.set_xsave(&x) }.map_err(kvm("set xsave"))?;
        fd.set_xcrs(&self.xcrs).map_err(kvm("set xcrs"))?;
        fd.set_debug_regs(&self.debugregs)
            .map_err(kvm("set debug regs"))?;
        fd.set_lapic(&self.lapic).map_err(kvm("set lapic"))?;
        for batch in self.msrs.chunks(kvm_bindings::KVM_MAX_MSR_ENTRIES) {
            let entries: Vec<kvm_msr_entry> = batch
                .iter()
                .map(|&(index, data)| kvm_msr_entry {
                    index,
                    data,
                    ..Default::default()
                })
                .collect();
            let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuStateError {
                what: "msr list".into(),
                source: kvm_ioctls::Error::new(libc::E2BIG),
            })?;
            let n = fd.set_msrs(&msrs).map_err(kvm("set msrs"))?;
            if let Some(&(index, data)) = batch.get(n) {
                return Err(VcpuStateError {
                    what: format!("set msr {index:#x} to {data:#x}"),
                    source: kvm_ioctls::Error::new(libc::EINVAL),
                });
            }
        }
        fd.set_vcpu_events(&self.events)
            .map_err(kvm("set vcpu events"))?;
        Ok(())
    }

    /// Appends the state to a section body.
    pub fn encode(&self, e: &mut Enc) {
        e.raw(self.mp_state.as_bytes())
            .raw(self.regs.as_bytes())
            .raw(self.sregs.as_bytes())
            .bytes(&self.xsave)
            .raw(self.xcrs.as_bytes())
            .raw(self.debugregs.as_bytes())
            .raw(self.lapic.as_bytes())
            .u32(u32::try_from(self.msrs.len()).unwrap_or(u32::MAX));
        for &(index, data) in &self.msrs {
            e.u32(index).u64(data);
        }
        e.raw(self.events.as_bytes());
    }

    /// Reads a state [`VcpuState::encode`] wrote.
    pub fn decode(d: &mut Dec<'_>) -> Result<Self, FormatError> {
        let mp_state = from_bytes(d)?;
        let regs = from_bytes(d)?;
        let sregs = from_bytes(d)?;
        let xsave = d.bytes(XSAVE_BYTES)?.to_vec();
        if xsave.len() != XSAVE_BYTES {
            return Err(FormatError::Bad(
                "vcpu",
                format!("XSAVE area of {} bytes, not {XSAVE_BYTES}", xsave.len()),
            ));
        }
        let xcrs = from_bytes(d)?;
        let debugregs = from_bytes(d)?;
        let lapic = from_bytes(d)?;
        let n = d.count(MAX_MSRS, 12)?;
        let mut msrs = Vec::with_capacity(n);
        for _ in 0..n {
            msrs.push((d.u32()?, d.u64()?));
        }
        let events = from_bytes(d)?;
        Ok(Self {
            mp_state,
            regs,
            sregs,
            xsave,
            xcrs,
            debugregs,
            lapic,
            msrs,
            events,
        })
    }
}

// SAFETY: a `#[repr(C)]` structure of KVM's ABI whose fields are all
// integers or arrays of integers, with its padding as explicit fields (the
// sizes are checked in machine.rs's tests), so any bytes of its size are a
// valid value and every byte of a value is initialised. The same holds for
// the six that follow.
unsafe impl Pod for kvm_mp_state {}
// SAFETY: as above.
unsafe impl Pod for kvm_regs {}
// SAFETY: as above.
unsafe impl Pod for kvm_sregs {}
// SAFETY: as above.
unsafe impl Pod for kvm_xcrs {}
// SAFETY: as above.
unsafe impl Pod for kvm_debugregs {}
// SAFETY: as above.
unsafe impl Pod for kvm_lapic_state {}
// SAFETY: as above.
unsafe impl Pod for kvm_vcpu_events {}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_ioctls::Kvm;

    /// A VM with an irqchip (the LAPIC) and one vCPU, on this host's KVM.
    fn vcpu() -> (kvm_ioctls::VmFd, VcpuFd, Vec<u32>) {
        let kvm = Kvm::new().expect("/dev/kvm");
        let vm = kvm.create_vm().expect("create vm");
        vm.create_irq_chip().expect("irqchip");
        let fd = vm.create_vcpu(0).expect("create vcpu");
        let cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .expect("cpuid");
        fd.set_cpuid2(&cpuid).expect("set cpuid");
        let msrs = kvm.get_msr_index_list().expect("msr list");
        (vm, fd, msrs.as_slice().to_vec())
    }

    #[test]
    fn a_vcpus_state_survives_capture_encoding_and_apply_on_real_kvm() {
        let (_vm, a, msrs) = vcpu();
        let mut regs = a.get_regs().unwrap();
        regs.rax = 0x1122_3344_5566_7788;
        regs.r15 = 42;
        regs.rip = 0x10_0000;
        a.set_regs(&regs).unwrap();
        let mut sregs = a.get_sregs().unwrap();
        sregs.cr2 = 0xdead_b000;
        a.set_sregs(&sregs).unwrap();
        // An MSR every x86 KVM saves: SYSCALL's target.
        const LSTAR: u32 = 0xc000_0082;
        let entries = [kvm_msr_entry {
            index: LSTAR,
            data: 0xffff_ffff_8100_0000,
            ..Default::default()
        }];
        assert_eq!(
            a.set_msrs(&Msrs::from_entries(&entries).unwrap()).unwrap(),
            1
        );

        let saved = VcpuState::capture(&a, &msrs).unwrap();
        assert!(saved.msrs.contains(&(LSTAR, 0xffff_ffff_8100_0000)));
        let mut e = Enc::new();
        saved.encode(&mut e);
        let mut d = Dec::new("vcpu", e.as_bytes());
        let back = VcpuState::decode(&mut d).unwrap();
        d.end().unwrap();

        let (_vm2, b, _) = vcpu();
        back.apply(&b).unwrap();
        let again = VcpuState::capture(&b, &msrs).unwrap();
        assert_eq!(again.regs.rax, 0x1122_3344_5566_7788);
        assert_eq!(again.regs.r15, 42);
        assert_eq!(again.regs.rip, 0x10_0000);
        assert_eq!(again.sregs.cr2, 0xdead_b000);
        assert!(again.msrs.contains(&(LSTAR, 0xffff_ffff_8100_0000)));
        assert_eq!(again.xsave, saved.xsave);
        assert_eq!(again.lapic.regs, saved.lapic.regs);
    }

    #[test]
    fn a_cut_or_padded_vcpu_section_is_refused() {
        let (_vm, a, msrs) = vcpu();
        let saved = VcpuState::capture(&a, &msrs).unwrap();
        let mut e = Enc::new();
        saved.encode(&mut e);
        let bytes = e.as_bytes();
        for cut in [0, 10, bytes.len() / 2, bytes.len() - 1] {
            let mut d = Dec::new("vcpu", &bytes[..cut]);
            assert!(VcpuState::decode(&mut d).is_err(), "cut at {cut}");
        }
        let mut padded = bytes.to_vec();
        padded.push(0);
        let mut d = Dec::new("vcpu", &padded);
        VcpuState::decode(&mut d).unwrap();
        assert!(d.end().is_err());
    }
}
