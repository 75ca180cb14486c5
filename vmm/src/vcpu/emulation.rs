//! Recovery from the emulation failures an emulating host's KVM leaves to
//! userspace (KVM_EXIT_INTERNAL_ERROR, suberror 1).
//!
//! On hosts where KVM runs guest kernel code through its instruction emulator
//! (see docs/ARCHITECTURE.md, "Emulating hosts"), a few instructions are not
//! emulated. skvm completes them itself:
//! - `int3`: advance RIP past it and inject #BP, so the guest's handler runs;
//! - `clac` / `stac`: clear / set RFLAGS.AC;
//! - `fwait`: a no-op without pending x87 exceptions;
//! - `ldmxcsr m32` / `stmxcsr m32`: MXCSR through KVM_GET/SET_FPU, with the
//!   memory operand decoded here and accessed through the guest page tables.
//!
//! Anything else is reported with RIP and the instruction bytes.

use kvm_bindings::kvm_vcpu_events;
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const RFLAGS_AC: u64 = 1 << 18;
const BP_VECTOR: u8 = 3;
/// MXCSR bits a guest may set (the rest would #GP on hardware).
const MXCSR_VALID: u32 = 0xffff;
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
    /// `ldmxcsr m32`: load MXCSR from memory.
    LoadMxcsr(MemOperand, u8),
    /// `stmxcsr m32`: store MXCSR to memory.
    StoreMxcsr(MemOperand, u8),
}

impl Recovery {
    /// The instruction's length in bytes.
    pub fn length(self) -> u64 {
        match self {
            Recovery::Breakpoint | Recovery::Skip => 1,
            Recovery::SetAc(_) => 3,
            Recovery::LoadMxcsr(_, len) | Recovery::StoreMxcsr(_, len) => u64::from(len),
        }
    }
}

/// A segment override on a memory operand (only FS and GS have a base in
/// 64-bit mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegBase {
    /// No base.
    Flat,
    /// FS base.
    Fs,
    /// GS base.
    Gs,
}

/// A decoded 64-bit-mode memory operand: seg + base + index*scale + disp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemOperand {
    /// Base register number (0 = rax .. 15 = r15), if any.
    pub base: Option<u8>,
    /// Index register number and scale, if any.
    pub index: Option<(u8, u8)>,
    /// Sign-extended displacement.
    pub disp: i64,
    /// RIP-relative (disp is from the next instruction).
    pub rip_relative: bool,
    /// Segment base to add.
    pub seg: SegBase,
    /// 0x67 prefix: the address is truncated to 32 bits.
    pub addr32: bool,
}

impl MemOperand {
    /// The linear address, given the registers (in kvm_regs order), RIP of
    /// the next instruction and the FS/GS bases.
    pub fn linear(&self, gpr: &[u64; 16], next_rip: u64, fs: u64, gs: u64) -> u64 {
        let reg = |r: u8| gpr.get(usize::from(r)).copied().unwrap_or(0);
        let mut a = self.disp.cast_unsigned();
        if self.rip_relative {
            a = a.wrapping_add(next_rip);
        }
        if let Some(b) = self.base {
            a = a.wrapping_add(reg(b));
        }
        if let Some((i, scale)) = self.index {
            a = a.wrapping_add(reg(i).wrapping_mul(u64::from(scale)));
        }
        if self.addr32 {
            a &= 0xffff_ffff;
        }
        match self.seg {
            SegBase::Flat => a,
            SegBase::Fs => a.wrapping_add(fs),
            SegBase::Gs => a.wrapping_add(gs),
        }
    }
}

/// Decodes the instructions skvm knows how to complete.
pub fn decode(bytes: &[u8]) -> Option<Recovery> {
    match bytes {
        [0xcc, ..] => return Some(Recovery::Breakpoint),
        [0x9b, ..] => return Some(Recovery::Skip),
        [0x0f, 0x01, 0xca, ..] => return Some(Recovery::SetAc(false)),
        [0x0f, 0x01, 0xcb, ..] => return Some(Recovery::SetAc(true)),
        _ => {}
    }
    decode_0fae(bytes)
}

/// `[prefixes] [REX] 0f ae /2` (ldmxcsr) and `/3` (stmxcsr) with a memory
/// operand.
fn decode_0fae(bytes: &[u8]) -> Option<Recovery> {
    let mut pos = 0usize;
    let mut seg = SegBase::Flat;
    let mut addr32 = false;
    loop {
        match *bytes.get(pos)? {
            0x64 => seg = SegBase::Fs,
            0x65 => seg = SegBase::Gs,
            0x67 => addr32 = true,
            0x26 | 0x2e | 0x36 | 0x3e => {}
            _ => break,
        }
        pos += 1;
    }
    let rex = match *bytes.get(pos)? {
        r @ 0x40..=0x4f => {
            pos += 1;
            r
        }
        _ => 0,
    };
    if bytes.get(pos..pos + 2)? != [0x0f, 0xae] {
        return None;
    }
    pos += 2;
    let (mut op, reg, len) = decode_modrm(bytes.get(pos..)?, rex)?;
    op.seg = seg;
    op.addr32 = addr32;
    let total = u8::try_from(pos + len).ok()?;
    match reg {
        2 => Some(Recovery::LoadMxcsr(op, total)),
        3 => Some(Recovery::StoreMxcsr(op, total)),
        _ => None,
    }
}

/// Decodes ModRM (+SIB, +displacement) for a memory operand; returns the
/// operand, the ModRM reg field and the bytes consumed.
fn decode_modrm(bytes: &[u8], rex: u8) -> Option<(MemOperand, u8, usize)> {
    let modrm = *bytes.first()?;
    let (md, reg, rm) = (modrm >> 6, (modrm >> 3) & 7, modrm & 7);
    if md == 3 {
        return None; // register operand: not a memory access
    }
    let rex_b = (rex & 1) << 3;
    let rex_x = (rex & 2) << 2;
    let mut len = 1;
    let mut op = MemOperand {
        base: None,
        index: None,
        disp: 0,
        rip_relative: false,
        seg: SegBase::Flat,
        addr32: false,
    };
    let mut disp_len = match md {
        1 => 1,
        2 => 4,
        _ => 0,
    };
    if rm == 4 {
        let sib = *bytes.get(1)?;
        len += 1;
        let (scale, index, base) = (1u8 << (sib >> 6), ((sib >> 3) & 7) | rex_x, sib & 7);
        if index != 4 {
            op.index = Some((index, scale));
        }
        if base == 5 && md == 0 {
            disp_len = 4;
        } else {
            op.base = Some(base | rex_b);
        }
    } else if rm == 5 && md == 0 {
        op.rip_relative = true;
        disp_len = 4;
    } else {
        op.base = Some(rm | rex_b);
    }
    op.disp = match disp_len {
        1 => i64::from(bytes.get(len)?.cast_signed()),
        4 => {
            let d: [u8; 4] = bytes.get(len..len + 4)?.try_into().ok()?;
            i64::from(i32::from_le_bytes(d))
        }
        _ => 0,
    };
    Some((op, reg, len + disp_len))
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

/// Why guest memory could not be read or written for an instruction.
#[derive(Debug, thiserror::Error)]
pub(super) enum Access {
    /// KVM could not translate the address.
    #[error("cannot translate {addr:#x}: {source}")]
    Translate {
        /// The guest virtual address.
        addr: u64,
        /// Cause.
        source: kvm_ioctls::Error,
    },
    /// The guest's page tables do not map it.
    #[error("operand at {0:#x} is not mapped")]
    Unmapped(u64),
    /// A page split past the buffer (cannot happen).
    #[error("operand out of range")]
    Range,
    /// It maps outside guest memory.
    #[error("operand at {addr:#x}: {source}")]
    Memory {
        /// The guest virtual address.
        addr: u64,
        /// Cause.
        source: vm_memory::GuestMemoryError,
    },
    /// Not one instruction byte could be read.
    #[error("instruction bytes unreadable")]
    Unreadable,
}

/// Reads up to 15 bytes at the guest's current RIP through its page tables.
fn fetch(vcpu: &VcpuFd, mem: &GuestMemoryMmap, rip: u64) -> Result<Vec<u8>, Access> {
    let mut out = Vec::with_capacity(MAX_INSN);
    let mut addr = rip;
    while out.len() < MAX_INSN {
        let t = vcpu
            .translate_gva(addr)
            .map_err(|source| Access::Translate { addr, source })?;
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
        return Err(Access::Unreadable);
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

/// Copies between guest virtual memory and `buf`, page by page through the
/// guest's page tables. `write` selects the direction.
pub(super) fn access_virt(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    gva: u64,
    buf: &mut [u8],
    write: bool,
) -> Result<(), Access> {
    let mut done = 0usize;
    while done < buf.len() {
        let addr = gva.wrapping_add(done as u64);
        let t = vcpu
            .translate_gva(addr)
            .map_err(|source| Access::Translate { addr, source })?;
        if t.valid == 0 {
            return Err(Access::Unmapped(addr));
        }
        let in_page = usize::try_from(0x1000 - (addr & 0xfff)).unwrap_or(1);
        let n = (buf.len() - done).min(in_page);
        let chunk = buf.get_mut(done..done + n).ok_or(Access::Range)?;
        let gpa = GuestAddress(t.physical_address);
        let r = if write {
            mem.write_slice(chunk, gpa)
        } else {
            mem.read_slice(chunk, gpa)
        };
        r.map_err(|source| Access::Memory { addr, source })?;
        done += n;
    }
    Ok(())
}

/// Completes the instruction at RIP if skvm knows it; returns what it did.
pub fn recover(vcpu: &VcpuFd, mem: &GuestMemoryMmap) -> Result<Recovery, EmulationError> {
    let mut regs = vcpu.get_regs().map_err(kvm_err("get regs"))?;
    let rip = regs.rip;
    let bytes = fetch(vcpu, mem, rip).map_err(|e| EmulationError::Unhandled {
        rip,
        bytes: e.to_string(),
    })?;
    let action = decode(&bytes).ok_or_else(|| EmulationError::Unhandled {
        rip,
        bytes: hex(&bytes),
    })?;
    let next = rip.wrapping_add(action.length());
    let unhandled = |e: Access| EmulationError::Unhandled {
        rip,
        bytes: format!("{} ({e})", hex(&bytes)),
    };
    match action {
        Recovery::SetAc(true) => regs.rflags |= RFLAGS_AC,
        Recovery::SetAc(false) => regs.rflags &= !RFLAGS_AC,
        Recovery::Breakpoint | Recovery::Skip => {}
        Recovery::LoadMxcsr(op, _) | Recovery::StoreMxcsr(op, _) => {
            let sregs = vcpu.get_sregs().map_err(kvm_err("get sregs"))?;
            let gpr = [
                regs.rax, regs.rcx, regs.rdx, regs.rbx, regs.rsp, regs.rbp, regs.rsi, regs.rdi,
                regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
            ];
            let addr = op.linear(&gpr, next, sregs.fs.base, sregs.gs.base);
            let mut fpu = vcpu.get_fpu().map_err(kvm_err("get fpu"))?;
            let mut val = fpu.mxcsr.to_le_bytes();
            if matches!(action, Recovery::LoadMxcsr(..)) {
                access_virt(vcpu, mem, addr, &mut val, false).map_err(unhandled)?;
                fpu.mxcsr = u32::from_le_bytes(val) & MXCSR_VALID;
                vcpu.set_fpu(&fpu).map_err(kvm_err("set fpu"))?;
            } else {
                access_virt(vcpu, mem, addr, &mut val, true).map_err(unhandled)?;
            }
        }
    }
    regs.rip = next;
    vcpu.set_regs(&regs).map_err(kvm_err("set regs"))?;
    if action == Recovery::Breakpoint {
        inject_exception(vcpu, BP_VECTOR).map_err(kvm_err("set events"))?;
    }
    Ok(action)
}

/// Delivers exception `vector` (one without an error code) to the guest at
/// its next entry, through KVM_GET/SET_VCPU_EVENTS.
pub(super) fn inject_exception(vcpu: &VcpuFd, vector: u8) -> Result<(), kvm_ioctls::Error> {
    let mut events: kvm_vcpu_events = vcpu.get_vcpu_events()?;
    events.exception.injected = 1;
    events.exception.pending = 0;
    events.exception.nr = vector;
    events.exception.has_error_code = 0;
    events.exception.error_code = 0;
    events.exception_has_payload = 0;
    events.flags = 0;
    vcpu.set_vcpu_events(&events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int3_is_a_one_byte_breakpoint() {
        assert_eq!(decode(&[0xcc, 0x90]), Some(Recovery::Breakpoint));
        assert_eq!(Recovery::Breakpoint.length(), 1);
    }

    #[test]
    fn clac_and_stac_flip_ac() {
        assert_eq!(decode(&[0x0f, 0x01, 0xca]), Some(Recovery::SetAc(false)));
        assert_eq!(decode(&[0x0f, 0x01, 0xcb]), Some(Recovery::SetAc(true)));
        assert_eq!(Recovery::SetAc(true).length(), 3);
    }

    #[test]
    fn fwait_is_skipped() {
        assert_eq!(decode(&[0x9b]), Some(Recovery::Skip));
    }

    fn gpr() -> [u64; 16] {
        let mut g = [0u64; 16];
        for (i, r) in g.iter_mut().enumerate() {
            *r = 0x1000 * (i as u64 + 1);
        }
        g
    }

    #[test]
    fn ldmxcsr_rsp_disp8_decodes() {
        // ldmxcsr 0x4(%rsp): 0f ae 54 24 04
        let r = decode(&[0x0f, 0xae, 0x54, 0x24, 0x04, 0x83]).unwrap();
        let Recovery::LoadMxcsr(op, len) = r else {
            panic!("{r:?}")
        };
        assert_eq!(len, 5);
        assert_eq!(op.linear(&gpr(), 0, 0, 0), 0x5000 + 4);
    }

    #[test]
    fn stmxcsr_rip_relative_decodes() {
        // stmxcsr 0x10(%rip): 0f ae 1d 10 00 00 00
        let r = decode(&[0x0f, 0xae, 0x1d, 0x10, 0, 0, 0]).unwrap();
        let Recovery::StoreMxcsr(op, len) = r else {
            panic!("{r:?}")
        };
        assert_eq!(len, 7);
        assert_eq!(op.linear(&gpr(), 0x100, 0, 0), 0x110);
    }

    #[test]
    fn ldmxcsr_with_rex_gs_and_index_decodes() {
        // ldmxcsr %gs:-8(%r9,%r10,4): 65 43 0f ae 54 91 f8
        let r = decode(&[0x65, 0x43, 0x0f, 0xae, 0x54, 0x91, 0xf8]).unwrap();
        let Recovery::LoadMxcsr(op, len) = r else {
            panic!("{r:?}")
        };
        assert_eq!(len, 7);
        let g = gpr();
        assert_eq!(
            op.linear(&g, 0, 0, 0x7000_0000),
            0x7000_0000 + g[9] + g[10] * 4 - 8
        );
    }

    #[test]
    fn register_form_and_truncated_bytes_are_rejected() {
        // lfence (0f ae e8) is a register form; truncated SIB/disp.
        assert_eq!(decode(&[0x0f, 0xae, 0xe8]), None);
        assert_eq!(decode(&[0x0f, 0xae, 0x54, 0x24]), None);
        assert_eq!(decode(&[0x0f, 0xae, 0x15, 0x00]), None);
        assert_eq!(decode(&[0x65, 0x65, 0x65]), None);
    }

    #[test]
    fn other_instructions_are_not_recovered() {
        // lock cmpxchg16b (%rsi), xrstor (%rdi), truncated clac
        assert_eq!(decode(&[0xf0, 0x48, 0x0f, 0xc7, 0x0e]), None);
        assert_eq!(decode(&[0x0f, 0xae, 0x2f]), None);
        assert_eq!(decode(&[0x0f, 0x01]), None);
        assert_eq!(decode(&[]), None);
    }
}
