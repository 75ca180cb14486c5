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
//!   memory operand decoded here and accessed through the guest page tables;
//! - `xsave64` / `xrstor64` (standard form): the vCPU's extended state
//!   through KVM_GET/SET_XSAVE (`xsave.rs` says why).
//!
//! An operand on a page that is not mapped, or not writable for a store,
//! raises the page fault the instruction would have raised (the guest kernel
//! faults in a signal frame on the user's stack this way), and an XRSTOR
//! from an invalid area raises #GP, so nothing the guest writes there can
//! stop the VM. Anything else is reported with RIP and the instruction
//! bytes.

use std::sync::atomic::{AtomicU64, Ordering};

use kvm_bindings::{kvm_regs, kvm_vcpu_events, KVM_VCPUEVENT_VALID_PAYLOAD};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileMemory};

use super::xsave::{self, Layout};

const RFLAGS_AC: u64 = 1 << 18;
const BP_VECTOR: u8 = 3;
const GP_VECTOR: u8 = 13;
/// The page fault's vector.
pub(super) const PF_VECTOR: u8 = 14;
/// Page-fault error code bits: the page was present; the access was a write.
const PF_PRESENT: u32 = 1;
const PF_WRITE: u32 = 2;
/// XSAVE and XRSTOR need a 64-byte-aligned area.
const XSAVE_ALIGN: u64 = 64;
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
    /// `xsave64 m`: store the extended state components EDX:EAX & XCR0.
    Xsave(MemOperand, u8),
    /// `xrstor64 m`: load them.
    Xrstor(MemOperand, u8),
}

impl Recovery {
    /// The instruction's length in bytes.
    pub fn length(self) -> u64 {
        match self {
            Recovery::Breakpoint | Recovery::Skip => 1,
            Recovery::SetAc(_) => 3,
            Recovery::LoadMxcsr(_, len)
            | Recovery::StoreMxcsr(_, len)
            | Recovery::Xsave(_, len)
            | Recovery::Xrstor(_, len) => u64::from(len),
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
/// operand, and `/4` (xsave) and `/5` (xrstor) in their 64-bit forms
/// (REX.W: the only ones a 64-bit kernel uses).
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
        4 if rex & 8 != 0 => Some(Recovery::Xsave(op, total)),
        5 if rex & 8 != 0 => Some(Recovery::Xrstor(op, total)),
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

/// An exception the instruction raises instead of completing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// #PF at `addr` with `code` (present, write bits).
    Page {
        /// The faulting guest virtual address (CR2).
        addr: u64,
        /// The error code.
        code: u32,
    },
    /// #GP(0).
    General,
}

/// What `recover` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completed {
    /// The instruction.
    pub action: Recovery,
    /// The exception it raised instead of completing, if any.
    pub fault: Option<Fault>,
}

/// The completion's view of the vCPU: its registers and the linear address
/// of the memory operand.
struct Operand {
    addr: u64,
    cr3: u64,
    la57: bool,
}

fn operand(
    vcpu: &VcpuFd,
    regs: &kvm_regs,
    op: MemOperand,
    next: u64,
) -> Result<Operand, EmulationError> {
    let sregs = vcpu.get_sregs().map_err(kvm_err("get sregs"))?;
    let gpr = [
        regs.rax, regs.rcx, regs.rdx, regs.rbx, regs.rsp, regs.rbp, regs.rsi, regs.rdi, regs.r8,
        regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
    ];
    Ok(Operand {
        addr: op.linear(&gpr, next, sregs.fs.base, sregs.gs.base),
        cr3: sregs.cr3,
        la57: sregs.cr4 & CR4_LA57 != 0,
    })
}

/// Completes the instruction at RIP if skvm knows it; returns what it did.
/// `layout` is the host's XSAVE layout (None: XSAVE/XRSTOR not completed).
pub fn recover(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    layout: Option<&Layout>,
) -> Result<Completed, EmulationError> {
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
    let mut fault = None;
    match action {
        Recovery::SetAc(true) => regs.rflags |= RFLAGS_AC,
        Recovery::SetAc(false) => regs.rflags &= !RFLAGS_AC,
        Recovery::Breakpoint | Recovery::Skip => {}
        Recovery::LoadMxcsr(op, _) | Recovery::StoreMxcsr(op, _) => {
            let at = operand(vcpu, &regs, op, next)?;
            let store = matches!(action, Recovery::StoreMxcsr(..));
            fault = check_pages(mem, &at, 4, store).map_err(unhandled)?;
            if fault.is_none() {
                let mut fpu = vcpu.get_fpu().map_err(kvm_err("get fpu"))?;
                let mut val = fpu.mxcsr.to_le_bytes();
                access_virt(vcpu, mem, at.addr, &mut val, store).map_err(unhandled)?;
                if !store {
                    fpu.mxcsr = u32::from_le_bytes(val) & MXCSR_VALID;
                    vcpu.set_fpu(&fpu).map_err(kvm_err("set fpu"))?;
                }
            }
        }
        Recovery::Xsave(op, _) | Recovery::Xrstor(op, _) => {
            let layout = layout.ok_or_else(|| EmulationError::Unhandled {
                rip,
                bytes: hex(&bytes),
            })?;
            let at = operand(vcpu, &regs, op, next)?;
            let requested = (regs.rdx << 32) | (regs.rax & 0xffff_ffff);
            fault = if matches!(action, Recovery::Xsave(..)) {
                xsave_to(vcpu, mem, layout, &at, requested).map_err(|e| e.or(unhandled))?
            } else {
                xrstor_from(vcpu, mem, layout, &at, requested).map_err(|e| e.or(unhandled))?
            };
        }
    }
    match fault {
        None => {
            regs.rip = next;
            vcpu.set_regs(&regs).map_err(kvm_err("set regs"))?;
            if action == Recovery::Breakpoint {
                inject_exception(vcpu, BP_VECTOR).map_err(kvm_err("set events"))?;
            }
        }
        Some(f) => inject_fault(vcpu, f).map_err(kvm_err("set events"))?,
    }
    Ok(Completed { action, fault })
}

/// A failure of an XSAVE or XRSTOR completion: a KVM call, or guest memory.
enum XError {
    Kvm(EmulationError),
    Access(Access),
}

impl XError {
    fn or(self, f: impl FnOnce(Access) -> EmulationError) -> EmulationError {
        match self {
            XError::Kvm(e) => e,
            XError::Access(a) => f(a),
        }
    }
}

fn xkvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> XError {
    move |source| XError::Kvm(EmulationError::Kvm { what, source })
}

/// The vCPU's XCR0 and, from it and EDX:EAX, the requested-feature bitmap.
fn rfbm(vcpu: &VcpuFd, layout: &Layout, requested: u64) -> Result<(u64, u64), XError> {
    let xcrs = vcpu.get_xcrs().map_err(xkvm("get xcrs"))?;
    let count = usize::try_from(xcrs.nr_xcrs).unwrap_or(0);
    let xcr0 = xcrs
        .xcrs
        .iter()
        .take(count)
        .find(|x| x.xcr == 0)
        .map_or(1, |x| x.value);
    Ok((xcr0, xcr0 & requested & layout.supported()))
}

/// What XSAVE and XRSTOR both establish first: the vCPU's XCR0, the
/// requested-feature bitmap and the area's length, or the fault the
/// instruction raises instead (a misaligned area, a page of it not mapped,
/// or not writable for XSAVE).
struct Area {
    xcr0: u64,
    rfbm: u64,
    len: usize,
}

fn area(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    layout: &Layout,
    at: &Operand,
    requested: u64,
    write: bool,
) -> Result<Result<Area, Fault>, XError> {
    if !at.addr.is_multiple_of(XSAVE_ALIGN) {
        return Ok(Err(Fault::General));
    }
    let (xcr0, rfbm) = rfbm(vcpu, layout, requested)?;
    let len = layout.area_len(rfbm);
    if let Some(f) = check_pages(mem, at, len, write).map_err(XError::Access)? {
        return Ok(Err(f));
    }
    Ok(Ok(Area { xcr0, rfbm, len }))
}

fn xsave_to(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    layout: &Layout,
    at: &Operand,
    requested: u64,
) -> Result<Option<Fault>, XError> {
    let Area { rfbm, .. } = match area(vcpu, mem, layout, at, requested, true)? {
        Ok(a) => a,
        Err(f) => return Ok(Some(f)),
    };
    let cur = xsave::area_bytes(&vcpu.get_xsave().map_err(xkvm("get xsave"))?);
    let mut bv = [0u8; 8];
    access_virt(vcpu, mem, at.addr + 512, &mut bv, false).map_err(XError::Access)?;
    for (off, mut piece) in xsave::save(layout, &cur, rfbm, u64::from_le_bytes(bv)) {
        access_virt(vcpu, mem, at.addr + off as u64, &mut piece, true).map_err(XError::Access)?;
    }
    Ok(None)
}

fn xrstor_from(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    layout: &Layout,
    at: &Operand,
    requested: u64,
) -> Result<Option<Fault>, XError> {
    let Area { xcr0, rfbm, len } = match area(vcpu, mem, layout, at, requested, false)? {
        Ok(a) => a,
        Err(f) => return Ok(Some(f)),
    };
    let mut area = vec![0u8; len];
    access_virt(vcpu, mem, at.addr, &mut area, false).map_err(XError::Access)?;
    let mut state = vcpu.get_xsave().map_err(xkvm("get xsave"))?;
    let mut cur = xsave::area_bytes(&state);
    if xsave::restore(layout, &mut cur, &area, rfbm, xcr0).is_err() {
        return Ok(Some(Fault::General));
    }
    xsave::set_area_bytes(&mut state, &cur);
    // SAFETY: the buffer is a whole kvm_xsave, and skvm completes XSAVE
    // only where KVM_CAP_XSAVE2 says the vCPU's state fits in it
    // (`xsave_layout` in vm/mod.rs), so KVM reads no further than the
    // struct.
    if unsafe { vcpu.set_xsave(&state) }.is_err() {
        // KVM checks the state as XRSTOR would; what it refuses, the
        // instruction would have faulted on.
        return Ok(Some(Fault::General));
    }
    Ok(None)
}

/// CR4.LA57: five-level paging.
const CR4_LA57: u64 = 1 << 12;
/// Page-table entry bits.
const PTE_PRESENT: u64 = 1;
const PTE_WRITE: u64 = 1 << 1;
const PTE_ACCESSED: u64 = 1 << 5;
const PTE_DIRTY: u64 = 1 << 6;
const PTE_LARGE: u64 = 1 << 7;
const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;

/// Walks the guest's page tables for `gva` as a supervisor access with
/// CR0.WP set would: Ok(Some(fault)) if the access faults; otherwise marks
/// the leaf accessed (and dirty for a write), as the CPU would.
fn walk(
    mem: &GuestMemoryMmap,
    at: &Operand,
    gva: u64,
    write: bool,
) -> Result<Option<Fault>, Access> {
    let levels: u32 = if at.la57 { 5 } else { 4 };
    let mut table = at.cr3 & PTE_ADDR;
    let not_present = Fault::Page {
        addr: gva,
        code: if write { PF_WRITE } else { 0 },
    };
    for level in (1..=levels).rev() {
        let index = (gva >> (12 + 9 * (level - 1))) & 0x1ff;
        let slot = GuestAddress(table + index * 8);
        let entry: u64 = mem
            .read_obj(slot)
            .map_err(|source| Access::Memory { addr: gva, source })?;
        if entry & PTE_PRESENT == 0 {
            return Ok(Some(not_present));
        }
        if write && entry & PTE_WRITE == 0 {
            return Ok(Some(Fault::Page {
                addr: gva,
                code: PF_PRESENT | PF_WRITE,
            }));
        }
        let leaf = level == 1 || (level <= 3 && entry & PTE_LARGE != 0);
        let bits = PTE_ACCESSED | if leaf && write { PTE_DIRTY } else { 0 };
        if entry & bits != bits {
            let slice = mem
                .get_slice(slot, 8)
                .map_err(|source| Access::Memory { addr: gva, source })?;
            slice
                .get_atomic_ref::<AtomicU64>(0)
                .map_err(|_| Access::Range)?
                .fetch_or(bits, Ordering::SeqCst);
        }
        if leaf {
            return Ok(None);
        }
        table = entry & PTE_ADDR;
    }
    Ok(None)
}

/// Checks every page of `len` bytes at the operand as the instruction's own
/// accesses would (present; writable for a store); the first that is not
/// gives the page fault the instruction raises.
fn check_pages(
    mem: &GuestMemoryMmap,
    at: &Operand,
    len: usize,
    write: bool,
) -> Result<Option<Fault>, Access> {
    let end = at.addr.wrapping_add(len as u64);
    let mut page = at.addr;
    loop {
        if let Some(f) = walk(mem, at, page, write)? {
            return Ok(Some(f));
        }
        let next = (page & !0xfff).wrapping_add(0x1000);
        if next >= end || next <= page {
            return Ok(None);
        }
        page = next;
    }
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

/// Raises `fault` in the guest: #GP(0), or #PF with CR2 as its payload
/// (KVM_CAP_EXCEPTION_PAYLOAD, which the VM enables on emulating hosts).
fn inject_fault(vcpu: &VcpuFd, fault: Fault) -> Result<(), kvm_ioctls::Error> {
    let mut events: kvm_vcpu_events = vcpu.get_vcpu_events()?;
    events.exception.has_error_code = 1;
    events.flags = 0;
    match fault {
        Fault::General => {
            events.exception.injected = 1;
            events.exception.pending = 0;
            events.exception.nr = GP_VECTOR;
            events.exception.error_code = 0;
            events.exception_has_payload = 0;
        }
        Fault::Page { addr, code } => {
            events.exception.injected = 0;
            events.exception.pending = 1;
            events.exception.nr = PF_VECTOR;
            events.exception.error_code = code;
            events.exception_has_payload = 1;
            events.exception_payload = addr;
            events.flags = KVM_VCPUEVENT_VALID_PAYLOAD;
        }
    }
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
    fn xsave64_and_xrstor64_decode_and_their_32_bit_forms_do_not() {
        // xsave64 (%rdi): 48 0f ae 27; xrstor64 0x40(%rbx): 48 0f ae 6b 40
        let r = decode(&[0x48, 0x0f, 0xae, 0x27]).unwrap();
        let Recovery::Xsave(op, 4) = r else {
            panic!("{r:?}")
        };
        assert_eq!(op.linear(&gpr(), 0, 0, 0), gpr()[7]);
        let r = decode(&[0x48, 0x0f, 0xae, 0x6b, 0x40]).unwrap();
        let Recovery::Xrstor(op, 5) = r else {
            panic!("{r:?}")
        };
        assert_eq!(op.linear(&gpr(), 0, 0, 0), gpr()[3] + 0x40);
        // Without REX.W the x87 pointers have another format: not completed.
        assert_eq!(decode(&[0x0f, 0xae, 0x27]), None);
    }

    /// Guest memory with 4-level page tables at 0x1000.. mapping virtual
    /// 0x40_0000 to physical 0x8000 with `flags` in the last level.
    fn mapped(flags: u64) -> (GuestMemoryMmap, Operand) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let gva: u64 = 0x40_0000;
        let tables = [0x1000u64, 0x2000, 0x3000, 0x4000];
        for (level, t) in tables.iter().enumerate() {
            let shift = 12 + 9 * (3 - level as u64);
            let index = (gva >> shift) & 0x1ff;
            let entry = match tables.get(level + 1) {
                Some(next) => next | PTE_PRESENT | PTE_WRITE,
                None => 0x8000 | flags,
            };
            mem.write_obj(entry, GuestAddress(t + index * 8)).unwrap();
        }
        let at = Operand {
            addr: gva,
            cr3: 0x1000,
            la57: false,
        };
        (mem, at)
    }

    #[test]
    fn the_page_walk_faults_as_the_cpu_would_and_marks_the_leaf() {
        let (mem, at) = mapped(PTE_PRESENT | PTE_WRITE);
        assert_eq!(check_pages(&mem, &at, 64, true).unwrap(), None);
        let leaf: u64 = mem.read_obj(GuestAddress(0x4000)).unwrap();
        assert_eq!(leaf & (PTE_ACCESSED | PTE_DIRTY), PTE_ACCESSED | PTE_DIRTY);
        // Read-only (copy-on-write): a store faults with P and W set.
        let (mem, at) = mapped(PTE_PRESENT);
        assert_eq!(check_pages(&mem, &at, 64, false).unwrap(), None);
        assert_eq!(
            check_pages(&mem, &at, 64, true).unwrap(),
            Some(Fault::Page {
                addr: 0x40_0000,
                code: PF_PRESENT | PF_WRITE
            })
        );
        let leaf: u64 = mem.read_obj(GuestAddress(0x4000)).unwrap();
        assert_eq!(leaf & PTE_DIRTY, 0, "no dirty bit without the store");
        // An area running into an unmapped page faults there.
        let (mem, at) = mapped(PTE_PRESENT | PTE_WRITE);
        assert_eq!(
            check_pages(&mem, &at, 0x1000 + 8, false).unwrap(),
            Some(Fault::Page {
                addr: 0x40_1000,
                code: 0
            })
        );
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
