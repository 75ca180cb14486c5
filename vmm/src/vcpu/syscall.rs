//! Completing a user-mode SYSCALL for guest kernels that cannot (emulating
//! hosts only).
//!
//! On kvm_pvm, a `syscall` from guest user mode resumes the guest at its
//! LSTAR but still in user mode (docs/ARCHITECTURE.md, "User-mode SYSCALL"):
//! RCX and R11 hold the return address and the user RFLAGS as the
//! instruction defines, but the vCPU is still at CPL 3, so fetching the
//! kernel's entry code faults, and the guest kernel sees a user page fault at
//! LSTAR. The default guest's kernel completes the system call itself
//! (guest/patches/0001); any other kernel kills the process.
//!
//! skvm finishes the instruction from outside instead. Hardware breakpoints
//! do not fire in guest user mode on that host, but they do in guest kernel
//! code, which it emulates. So once the guest has set LSTAR, skvm puts an
//! execute breakpoint (KVM_SET_GUEST_DEBUG) on the guest's page-fault
//! handler, read from its IDT. At every page fault KVM returns to skvm there
//! before the handler's first instruction; if CR2 is LSTAR and the exception
//! frame says user mode at LSTAR, skvm unwinds the exception and leaves the
//! vCPU as SYSCALL would have: at LSTAR in kernel mode, on the user's stack,
//! with RFLAGS = the user's masked by FMASK. The kernel's own entry code then
//! runs as on any other host. Any other page fault goes on untouched.
//!
//! The breakpoint takes DR0 from the guest: while it is set the guest's own
//! hardware breakpoints (ptrace, perf) do not fire. Debug exceptions that are
//! not this breakpoint are handed back to the guest.

use kvm_bindings::{
    kvm_debug_exit_arch, kvm_guest_debug, kvm_msr_entry, kvm_regs, Msrs, KVM_GUESTDBG_BLOCKIRQ,
    KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP,
};
use kvm_ioctls::VcpuFd;
use vm_memory::GuestMemoryMmap;

use super::emulation::{access_virt, inject_exception, PF_VECTOR};
use super::setup::{MSR_LSTAR, MSR_SYSCALL_MASK};

/// DR7: breakpoint 0 enabled (L0 and G0), on execution (R/W0 = 00, LEN0 = 00).
const DR7_BP0_EXEC: u64 = 0b11;
/// DR7 bit 10 always reads as one.
const DR7_FIXED: u64 = 1 << 10;
/// DR6: breakpoint 0 was hit.
const DR6_B0: u64 = 1;
/// DR6: a single step.
const DR6_BS: u64 = 1 << 14;
/// RFLAGS bit 1 always reads as one.
const RFLAGS_FIXED: u64 = 1 << 1;
/// RFLAGS.RF (resume flag).
const RFLAGS_RF: u64 = 1 << 16;
/// The debug exception's vector.
const DB_VECTOR: u8 = 1;

/// Why a user-mode SYSCALL could not be completed: a KVM call failed.
#[derive(Debug, thiserror::Error)]
#[error("KVM {what} failed while completing a guest SYSCALL: {source}")]
pub struct SyscallError {
    /// Which call.
    what: &'static str,
    /// Cause.
    #[source]
    source: kvm_ioctls::Error,
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SyscallError {
    move |source| SyscallError { what, source }
}

/// What a debug exit was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebugOutcome {
    /// A user-mode SYSCALL, now in the kernel's entry code.
    Completed,
    /// Another page fault: it goes on.
    PageFault,
    /// Past the handler's first instruction: the breakpoint is back.
    Stepped,
    /// Something else (a single step, the guest's own breakpoint): given
    /// back to the guest as a debug exception.
    Reinjected,
}

/// One vCPU's breakpoint on the guest's page-fault handler.
#[derive(Debug, Default)]
pub struct SyscallCompletion {
    /// The guest's LSTAR when the breakpoint was set; 0 until then.
    lstar: u64,
    /// The page-fault handler the breakpoint is on.
    pf_entry: u64,
    /// Stepping over the handler's first instruction with the breakpoint
    /// off (KVM takes it again however RF is set).
    stepping: bool,
}

fn read_msrs<const N: usize>(fd: &VcpuFd, index: [u32; N]) -> Result<[u64; N], SyscallError> {
    let entries = index.map(|index| kvm_msr_entry {
        index,
        ..Default::default()
    });
    let mut msrs = Msrs::from_entries(&entries).map_err(|_| SyscallError {
        what: "MSR list",
        source: kvm_ioctls::Error::new(libc::EINVAL),
    })?;
    let n = fd.get_msrs(&mut msrs).map_err(kvm_err("get msrs"))?;
    let mut out = [0u64; N];
    for (o, e) in out.iter_mut().zip(msrs.as_slice().iter().take(n)) {
        *o = e.data;
    }
    Ok(out)
}

/// N little-endian quadwords of guest virtual memory; None where the
/// guest's page tables or memory do not have them.
fn read_u64s<const N: usize>(fd: &VcpuFd, mem: &GuestMemoryMmap, gva: u64) -> Option<[u64; N]> {
    let mut buf = [0u8; 64];
    let bytes = buf.get_mut(..N * 8)?;
    access_virt(fd, mem, gva, bytes, false).ok()?;
    let mut out = [0u64; N];
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
        *o = u64::from_le_bytes(c.try_into().ok()?);
    }
    Some(out)
}

/// The handler address in a 64-bit IDT gate (two little-endian quadwords).
pub fn gate_offset(gate: [u64; 2]) -> u64 {
    let [lo, hi] = gate;
    (lo & 0xffff) | ((lo >> 32) & 0xffff_0000) | ((hi & 0xffff_ffff) << 32)
}

/// RFLAGS after SYSCALL: the user's (saved in R11) masked by FMASK.
pub fn kernel_rflags(user_rflags: u64, fmask: u64) -> u64 {
    (user_rflags & !fmask & !RFLAGS_RF) | RFLAGS_FIXED
}

/// The exception frame a page fault from user mode pushed: error code, RIP,
/// CS, RFLAGS, RSP, SS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultFrame {
    /// Where the fault was.
    pub rip: u64,
    /// Its code segment (the low two bits: its privilege level).
    pub cs: u64,
    /// Its stack pointer.
    pub rsp: u64,
}

impl FaultFrame {
    fn from_words(w: [u64; 6]) -> Self {
        Self {
            rip: w[1],
            cs: w[2],
            rsp: w[4],
        }
    }

    /// Whether this is a user-mode fetch of the system-call entry point: a
    /// SYSCALL the host left in user mode.
    pub fn is_half_done_syscall(&self, lstar: u64) -> bool {
        self.cs & 3 == 3 && self.rip == lstar
    }
}

/// The registers SYSCALL would have left: at LSTAR on the user's stack, with
/// the masked flags (RCX and R11 are already the return address and the user
/// flags).
pub fn completed(regs: &kvm_regs, frame: &FaultFrame, fmask: u64) -> kvm_regs {
    kvm_regs {
        rip: frame.rip,
        rsp: frame.rsp,
        rflags: kernel_rflags(regs.r11, fmask),
        ..*regs
    }
}

impl SyscallCompletion {
    /// Whether the breakpoint is set.
    pub fn armed(&self) -> bool {
        self.lstar != 0
    }

    /// The page-fault handler the breakpoint is on (0: not set).
    pub fn pf_entry(&self) -> u64 {
        self.pf_entry
    }

    /// Sets the breakpoint once the guest has programmed LSTAR (by then its
    /// IDT is in place). Returns true when it is set; false while LSTAR is 0
    /// or the IDT's page-fault gate cannot be read (tried again at the next
    /// exit).
    pub fn arm_if_ready(
        &mut self,
        fd: &VcpuFd,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, SyscallError> {
        let [lstar] = read_msrs(fd, [MSR_LSTAR])?;
        if lstar == 0 {
            return Ok(false);
        }
        let sregs = fd.get_sregs().map_err(kvm_err("get sregs"))?;
        let gate_at = sregs.idt.base.wrapping_add(u64::from(PF_VECTOR) * 16);
        let Some(gate) = read_u64s::<2>(fd, mem, gate_at) else {
            return Ok(false);
        };
        self.pf_entry = gate_offset(gate);
        self.breakpoint(fd)?;
        self.lstar = lstar;
        Ok(true)
    }

    fn breakpoint(&mut self, fd: &VcpuFd) -> Result<(), SyscallError> {
        let mut dbg = kvm_guest_debug {
            control: KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP,
            ..Default::default()
        };
        dbg.arch.debugreg[0] = self.pf_entry;
        dbg.arch.debugreg[7] = DR7_BP0_EXEC | DR7_FIXED;
        fd.set_guest_debug(&dbg)
            .map_err(kvm_err("set guest debug"))?;
        self.stepping = false;
        Ok(())
    }

    /// One instruction with the breakpoint off and interrupts held back.
    fn step(&mut self, fd: &VcpuFd) -> Result<(), SyscallError> {
        let dbg = kvm_guest_debug {
            control: KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP | KVM_GUESTDBG_BLOCKIRQ,
            ..Default::default()
        };
        fd.set_guest_debug(&dbg)
            .map_err(kvm_err("set guest debug"))?;
        self.stepping = true;
        Ok(())
    }

    /// Handles a debug exit.
    pub fn on_debug_exit(
        &mut self,
        fd: &VcpuFd,
        mem: &GuestMemoryMmap,
        exit: &kvm_debug_exit_arch,
    ) -> Result<DebugOutcome, SyscallError> {
        if self.stepping && exit.dr6 & DR6_BS != 0 {
            self.breakpoint(fd)?;
            return Ok(DebugOutcome::Stepped);
        }
        let ours = exit.exception == u32::from(DB_VECTOR)
            && exit.dr6 & DR6_B0 != 0
            && exit.pc == self.pf_entry;
        if !ours {
            reinject_debug(fd, exit.dr6)?;
            return Ok(DebugOutcome::Reinjected);
        }
        let sregs = fd.get_sregs().map_err(kvm_err("get sregs"))?;
        if sregs.cr2 == self.lstar {
            let regs = fd.get_regs().map_err(kvm_err("get regs"))?;
            // A frame that cannot be read is not a SYSCALL's: the guest's
            // handler deals with it.
            let frame = read_u64s::<6>(fd, mem, regs.rsp)
                .map(FaultFrame::from_words)
                .filter(|f| f.is_half_done_syscall(self.lstar));
            if let Some(frame) = frame {
                let [fmask] = read_msrs(fd, [MSR_SYSCALL_MASK])?;
                fd.set_regs(&completed(&regs, &frame, fmask))
                    .map_err(kvm_err("set regs"))?;
                return Ok(DebugOutcome::Completed);
            }
        }
        self.step(fd)?;
        Ok(DebugOutcome::PageFault)
    }
}

/// Hands a debug exception KVM stopped for skvm back to the guest: its DR6
/// (what caused it: a single step, one of the guest's own breakpoints)
/// first, then the exception.
fn reinject_debug(fd: &VcpuFd, dr6: u64) -> Result<(), SyscallError> {
    let mut dr = fd.get_debug_regs().map_err(kvm_err("get debug regs"))?;
    dr.dr6 = dr6 & !DR6_B0;
    fd.set_debug_regs(&dr).map_err(kvm_err("set debug regs"))?;
    inject_exception(fd, DB_VECTOR).map_err(kvm_err("set vcpu events"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_offset_is_split_over_three_fields() {
        // asm_exc_page_fault at 0xffffffff81400b00, selector 0x10, present
        // interrupt gate.
        let lo = 0x0b00 | (0x10 << 16) | (0x8e00u64 << 32) | (0x8140u64 << 48);
        let hi = 0xffff_ffffu64;
        assert_eq!(gate_offset([lo, hi]), 0xffff_ffff_8140_0b00);
    }

    #[test]
    fn rflags_are_masked_and_keep_the_fixed_bit() {
        // Linux's FMASK clears TF, DF, IF, IOPL, AC, NT.
        let fmask = 0x4_7700;
        let user = 0x246 | 0x100 | RFLAGS_RF; // IF, ZF, PF, TF, RF
        let k = kernel_rflags(user, fmask);
        assert_eq!(k & 0x300, 0, "IF and TF cleared");
        assert_eq!(k & 0x46, 0x46, "arithmetic flags kept");
        assert_eq!(k & RFLAGS_RF, 0, "RF cleared");
    }

    #[test]
    fn only_a_user_mode_fault_at_lstar_is_a_syscall() {
        let lstar = 0xffff_ffff_8140_0040;
        let f = |rip, cs| FaultFrame {
            rip,
            cs,
            rsp: 0x7ffe_0000,
        };
        assert!(f(lstar, 0x33).is_half_done_syscall(lstar));
        assert!(!f(lstar, 0x10).is_half_done_syscall(lstar), "kernel mode");
        assert!(!f(lstar + 1, 0x33).is_half_done_syscall(lstar));
    }

    #[test]
    fn completing_keeps_the_return_state_and_takes_the_users_stack() {
        let regs = kvm_regs {
            rip: 0xffff_ffff_8140_0b00,
            rsp: 0xffff_fe00_0000_1f58,
            rcx: 0x40_1234,
            r11: 0x246,
            rax: 39,
            rflags: 0x86,
            ..Default::default()
        };
        let frame = FaultFrame {
            rip: 0xffff_ffff_8140_0040,
            cs: 0x33,
            rsp: 0x7ffe_1000,
        };
        let r = completed(&regs, &frame, 0x4_7700);
        assert_eq!((r.rip, r.rsp), (frame.rip, frame.rsp));
        assert_eq!((r.rcx, r.r11, r.rax), (0x40_1234, 0x246, 39));
        assert_eq!(r.rflags, 0x46 | 2);
    }
}
