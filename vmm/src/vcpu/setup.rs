//! Initial vCPU state for the Linux 64-bit boot protocol: CPUID, MSRs, FPU,
//! LAPIC LINT pins, a flat GDT, identity-mapped page tables and long mode.

use kvm_bindings::{
    kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::boot::BootInfo;
use crate::layout::{
    BOOT_STACK, GDT_ADDR, IDENTITY_MAP_END, IDT_ADDR, PDPT_ADDR, PD_ADDR, PML4_ADDR,
};

const GDT_ENTRIES: usize = 5;
#[allow(clippy::cast_possible_truncation)] // 39 fits
const GDT_LIMIT: u16 = (GDT_ENTRIES * 8 - 1) as u16;

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

// MSR indices (Intel SDM vol. 4).
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
pub(super) const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
pub(super) const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
pub(crate) const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MTRR_ENABLE_WB_DEFAULT: u64 = (1 << 11) | 6;

// LAPIC register offsets and delivery modes.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

// CPUID bits.
const CPUID1_ECX_CX16: u32 = 1 << 13;
const CPUID1_ECX_HYPERVISOR: u32 = 1 << 31;
const CPUID1_EDX_HTT: u32 = 1 << 28;
/// KVM's paravirtual feature leaf.
const CPUID_KVM_FEATURES: u32 = 0x4000_0001;
/// Paravirtual features that misbehave on emulating hosts: PV_UNHALT (7,
/// pv spinlocks halt with interrupts off and wait for a KICK_CPU
/// hypercall), PV_SEND_IPI (11) and PV_SCHED_YIELD (13) — seen on kvm_pvm
/// with Debian's kernel and 2 vCPUs: one vCPU halted in kvm_wait for good
/// while the other sat on the SEND_IPI `vmcall` that should have woken it —
/// and PV_TLB_FLUSH (9): a flush deferred to a preempted vCPU's next entry
/// is lost there, and freshly exec'd processes on the other vCPU crashed on
/// stale mappings (8 crashes in 64 execs over 4 boots with it, 0 in 64
/// without).
const KVM_PV_HYPERCALL_FEATURES: u32 = (1 << 7) | (1 << 9) | (1 << 11) | (1 << 13);

/// Errors while preparing a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A KVM ioctl failed.
    #[error("KVM {what} failed")]
    Kvm {
        /// Which call.
        what: &'static str,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Writing boot structures into guest memory failed.
    #[error("cannot write {0} into guest memory")]
    GuestWrite(&'static str),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SetupError {
    move |source| SetupError::Kvm { what, source }
}

/// What KVM supports, the base of every vCPU's CPUID (one ioctl, several
/// ms on nested hosts: fetched once).
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, SetupError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("get supported cpuid"))
}

/// vCPU `index`'s CPUID (of `count`), from what KVM supports.
pub fn cpuid(supported: &CpuId, index: u8, count: u8, quirks: bool) -> CpuId {
    let mut cpuid = supported.clone();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(index) << 24) | (u32::from(count) << 16);
                e.ecx |= CPUID1_ECX_HYPERVISOR;
                if count > 1 {
                    e.edx |= CPUID1_EDX_HTT;
                }
                if quirks {
                    // cmpxchg16b is one of the instructions the emulating
                    // host's KVM cannot run; this bit is one it honours.
                    e.ecx &= !CPUID1_ECX_CX16;
                }
            }
            0xb | 0x1f => e.edx = u32::from(index),
            CPUID_KVM_FEATURES if quirks => e.eax &= !KVM_PV_HYPERCALL_FEATURES,
            _ => {}
        }
    }
    cpuid
}

/// Programs CPUID, MSRs, FPU and LAPIC.
pub fn configure(vcpu: &VcpuFd, cpuid: &CpuId) -> Result<(), SetupError> {
    vcpu.set_cpuid2(cpuid).map_err(kvm_err("set cpuid"))?;
    set_msrs(vcpu)?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm_err("set fpu"))?;
    set_lint(vcpu)
}

/// Puts the boot vCPU in long mode at the kernel's entry point with the
/// zero page in RSI (64-bit boot protocol).
pub fn set_boot_state(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    boot: &BootInfo,
) -> Result<(), SetupError> {
    set_long_mode(vcpu, mem)?;
    let regs = kvm_regs {
        rflags: 0x2,
        rip: boot.entry.0,
        rsp: BOOT_STACK,
        rbp: BOOT_STACK,
        rsi: boot.zero_page.0,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm_err("set regs"))
}

fn set_msrs(vcpu: &VcpuFd) -> Result<(), SetupError> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    let entries = [
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        entry(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB_DEFAULT),
    ];
    let msrs = Msrs::from_entries(&entries).map_err(|_| SetupError::GuestWrite("msr list"))?;
    let written = vcpu.set_msrs(&msrs).map_err(kvm_err("set msrs"))?;
    if written != entries.len() {
        // A host that rejects one of these boot MSRs still boots Linux; the
        // kernel programs the syscall MSRs itself.
        crate::log::debug(&format!(
            "KVM accepted {written} of {} boot MSRs",
            entries.len()
        ));
    }
    Ok(())
}

fn set_lint(vcpu: &VcpuFd) -> Result<(), SetupError> {
    let mut lapic = vcpu.get_lapic().map_err(kvm_err("get lapic"))?;
    for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes = lapic
            .regs
            .get_mut(reg..reg + 4)
            .ok_or(SetupError::GuestWrite("lapic"))?;
        let mut raw = [0u8; 4];
        for (d, s) in raw.iter_mut().zip(bytes.iter()) {
            *d = s.cast_unsigned();
        }
        let val = (u32::from_le_bytes(raw) & !0x700) | (mode << 8);
        for (d, s) in bytes.iter_mut().zip(val.to_le_bytes()) {
            *d = s.cast_signed();
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm_err("set lapic"))
}

/// A segment from a GDT entry (base, limit and flags packed as in the SDM).
#[allow(clippy::cast_possible_truncation)] // each field is masked to its width first
fn segment(entry: u64, index: u16) -> kvm_segment {
    let bit = |b: u32| ((entry >> b) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24),
        limit: ((entry & 0xffff) | (((entry >> 48) & 0xf) << 16)) as u32,
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        unusable: u8::from(bit(47) == 0),
        padding: 0,
    }
}

fn gdt_entry(flags: u64, base: u64, limit: u64) -> u64 {
    ((base & 0xff00_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
        | ((limit & 0xf_0000) << 32)
        | ((flags & 0xf0ff) << 40)
}

fn set_long_mode(vcpu: &VcpuFd, mem: &GuestMemoryMmap) -> Result<(), SetupError> {
    // The boot protocol wants __BOOT_CS = 0x10 and __BOOT_DS = 0x18.
    let gdt: [u64; GDT_ENTRIES] = [
        0,
        0,
        gdt_entry(0xa09b, 0, 0xfffff), // 64-bit code
        gdt_entry(0xc093, 0, 0xfffff), // data
        gdt_entry(0x808b, 0, 0xfffff), // TSS
    ];
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_ADDR + 8 * i as u64))
            .map_err(|_| SetupError::GuestWrite("gdt"))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))
        .map_err(|_| SetupError::GuestWrite("idt"))?;
    write_page_tables(mem)?;

    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(kvm_err("get sregs"))?;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = GDT_LIMIT;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    let code = segment(gdt[2], 2);
    let data = segment(gdt[3], 3);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(gdt[4], 4);
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).map_err(kvm_err("set sregs"))
}

/// Identity-maps the first GiB with 2 MiB pages: enough for the kernel, the
/// zero page and the command line, as the 64-bit boot protocol requires.
fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), SetupError> {
    let w = |v: u64, a: u64| {
        mem.write_obj(v, GuestAddress(a))
            .map_err(|_| SetupError::GuestWrite("page tables"))
    };
    w(PDPT_ADDR | 0x03, PML4_ADDR)?;
    w(PD_ADDR | 0x03, PDPT_ADDR)?;
    for i in 0..IDENTITY_MAP_END >> 21 {
        w((i << 21) | 0x83, PD_ADDR + i * 8)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_64bit_present_and_executable() {
        let s = segment(gdt_entry(0xa09b, 0, 0xfffff), 2);
        assert_eq!((s.selector, s.l, s.db, s.present, s.s), (0x10, 1, 0, 1, 1));
        assert_eq!(s.type_, 0xb);
        assert_eq!(s.limit, 0xfffff);
        assert_eq!(s.g, 1);
    }

    #[test]
    fn data_segment_is_flat_read_write() {
        let s = segment(gdt_entry(0xc093, 0, 0xfffff), 3);
        assert_eq!(
            (s.selector, s.type_, s.db, s.l, s.base),
            (0x18, 0x3, 1, 0, 0)
        );
    }

    #[test]
    fn page_tables_identity_map_the_first_gib() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_page_tables(&mem).unwrap();
        let pde: u64 = mem.read_obj(GuestAddress(PD_ADDR + 8 * 8)).unwrap();
        assert_eq!(pde, (8 << 21) | 0x83);
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_ADDR)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPT_ADDR);
    }
}
