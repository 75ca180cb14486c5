//! Recovery from the emulation failures an emulating host's KVM leaves to
//! userspace (KVM_EXIT_INTERNAL_ERROR, suberror 1).
//!
//! On hosts where KVM runs guest kernel code through its instruction emulator
//! (see docs/ARCHITECTURE.md, "Emulating hosts"), a few instructions are not
//! emulated. skvm completes them itself:
//! - `int3`: advance RIP past it and inject #BP, so the guest's handler runs;
//! - `clac` / `stac`: clear / set RFLAGS.AC;
//! - `fwait`: a no-op without pending x87 exceptions.
//!
//! Anything else is reported with RIP and the instruction bytes.

use kvm_bindings::kvm_vcpu_events;
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const RFLAGS_AC: u64 = 1 << 18;
const BP_VECTOR: u8 = 3;
/// The longest x86 instruction.
const MAX_INSN: usize = 15;

/// What to do about an instruction KVM could not emulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// `int3`: skip it and inject #BP.
    Breakpoint,
    /// `clac` (false) or `stac` (true).
    SetAc(bool),
    /// `fwait`: skip it.
    Skip,
}

impl Recovery {
    /// The instruction's length in bytes.
    pub fn len(self) -> u64 {
        match self {
            Recovery::Breakpoint | Recovery::Skip => 1,
            Recovery::SetAc(_) => 3,
        }
    }
}

/// Decodes the instructions skvm knows how to complete.
pub fn decode(bytes: &[u8]) -> Option<Recovery> {
    match bytes {
        [0xcc, ..] => Some(Recovery::Breakpoint),
        [0x9b, ..] => Some(Recovery::Skip),
        [0x0f, 0x01, 0xca, ..] => Some(Recovery::SetAc(false)),
        [0x0f, 0x01, 0xcb, ..] => Some(Recovery::SetAc(true)),
        _ => None,
    }
}

/// Errors while recovering.
#[derive(Debug, thiserror::Error)]
pub enum EmulationError {
    /// A KVM ioctl failed.
    #[error("KVM {what} failed")]
    Kvm {
        /// Which call.
        what: &'static str,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The instruction is not one skvm can complete.
    #[error("guest instruction the host's KVM cannot emulate at rip {rip:#x}: {bytes}")]
    Unhandled {
        /// Guest RIP.
        rip: u64,
        /// The instruction bytes, hex, or why they could not be read.
        bytes: String,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> EmulationError {
    move |source| EmulationError::Kvm { what, source }
}

/// Reads up to 15 bytes at the guest's current RIP through its page tables.
fn fetch(vcpu: &VcpuFd, mem: &GuestMemoryMmap, rip: u64) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(MAX_INSN);
    let mut addr = rip;
    while out.len() < MAX_INSN {
        let t = vcpu
            .translate_gva(addr)
            .map_err(|e| format!("cannot translate rip: {e}"))?;
        if t.valid == 0 {
            break;
        }
        let in_page = usize::try_from(0x1000 - (addr & 0xfff)).unwrap_or(MAX_INSN);
        let want = (MAX_INSN - out.len()).min(in_page);
        let mut buf = vec![0u8; want];
        if mem
            .read_slice(&mut buf, GuestAddress(t.physical_address))
            .is_err()
        {
            break;
        }
        out.extend_from_slice(&buf);
        addr += want as u64;
    }
    if out.is_empty() {
        return Err("instruction bytes unreadable".into());
    }
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Describes the instruction at RIP without touching the vCPU.
pub fn recover_dry(vcpu: &VcpuFd, mem: &GuestMemoryMmap) -> Result<String, EmulationError> {
    let regs = vcpu.get_regs().map_err(kvm_err("get regs"))?;
    let bytes = fetch(vcpu, mem, regs.rip).unwrap_or_default();
    Ok(format!("rip {:#x}: {}", regs.rip, hex(&bytes)))
}

/// Completes the instruction at RIP if skvm knows it; returns what it did.
pub fn recover(vcpu: &VcpuFd, mem: &GuestMemoryMmap) -> Result<Recovery, EmulationError> {
    let mut regs = vcpu.get_regs().map_err(kvm_err("get regs"))?;
    let bytes = fetch(vcpu, mem, regs.rip).map_err(|e| EmulationError::Unhandled {
        rip: regs.rip,
        bytes: e,
    })?;
    let action = decode(&bytes).ok_or_else(|| EmulationError::Unhandled {
        rip: regs.rip,
        bytes: hex(&bytes),
    })?;
    regs.rip = regs.rip.wrapping_add(action.len());
    match action {
        Recovery::SetAc(true) => regs.rflags |= RFLAGS_AC,
        Recovery::SetAc(false) => regs.rflags &= !RFLAGS_AC,
        Recovery::Breakpoint | Recovery::Skip => {}
    }
    vcpu.set_regs(&regs).map_err(kvm_err("set regs"))?;
    if action == Recovery::Breakpoint {
        let mut events: kvm_vcpu_events = vcpu.get_vcpu_events().map_err(kvm_err("get events"))?;
        events.exception.injected = 1;
        events.exception.nr = BP_VECTOR;
        events.exception.has_error_code = 0;
        events.exception.error_code = 0;
        events.flags = 0;
        vcpu.set_vcpu_events(&events)
            .map_err(kvm_err("set events"))?;
    }
    Ok(action)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int3_is_a_one_byte_breakpoint() {
        assert_eq!(decode(&[0xcc, 0x90]), Some(Recovery::Breakpoint));
        assert_eq!(Recovery::Breakpoint.len(), 1);
    }

    #[test]
    fn clac_and_stac_flip_ac() {
        assert_eq!(decode(&[0x0f, 0x01, 0xca]), Some(Recovery::SetAc(false)));
        assert_eq!(decode(&[0x0f, 0x01, 0xcb]), Some(Recovery::SetAc(true)));
        assert_eq!(Recovery::SetAc(true).len(), 3);
    }

    #[test]
    fn fwait_is_skipped() {
        assert_eq!(decode(&[0x9b]), Some(Recovery::Skip));
    }

    #[test]
    fn other_instructions_are_not_recovered() {
        // lock cmpxchg16b (%rsi), xrstor, truncated clac
        assert_eq!(decode(&[0xf0, 0x48, 0x0f, 0xc7, 0x0e]), None);
        assert_eq!(decode(&[0x0f, 0xae, 0x2f]), None);
        assert_eq!(decode(&[0x0f, 0x01]), None);
        assert_eq!(decode(&[]), None);
    }
}
