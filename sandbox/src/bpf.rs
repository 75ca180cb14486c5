//! A classic-BPF interpreter for seccomp programs, so that tests can ask a
//! compiled filter what it answers to a given syscall without installing it.
//!
//! It runs the instructions seccomp filters are made of (loads from
//! `seccomp_data`, the ALU, conditional and unconditional jumps, returns)
//! with the kernel's rules: a load must be aligned and inside the 64-byte
//! `seccomp_data`, a jump must land inside the program, and a program that
//! runs off its end is invalid. [`stacked`] combines several filters as the
//! kernel does for a process that installed more than one.

use seccompiler::sock_filter;

// Instruction fields, from the kernel's uapi bpf_common.h.
const CLASS: u16 = 0x07;
const LD: u16 = 0x00;
const LDX: u16 = 0x01;
const ALU: u16 = 0x04;
const JMP: u16 = 0x05;
const RET: u16 = 0x06;
const MISC: u16 = 0x07;
const SIZE: u16 = 0x18;
const W: u16 = 0x00;
const MODE: u16 = 0xe0;
const IMM: u16 = 0x00;
const ABS: u16 = 0x20;
const OP: u16 = 0xf0;
const SRC: u16 = 0x08;
const X: u16 = 0x08;

/// What a syscall looks like to a seccomp filter (`struct seccomp_data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeccompData {
    /// The syscall number, with the x32 bit if the caller set it.
    pub nr: i32,
    /// The calling convention's AUDIT_ARCH_* value.
    pub arch: u32,
    /// The instruction pointer at the call.
    pub ip: u64,
    /// The six arguments.
    pub args: [u64; 6],
}

/// AUDIT_ARCH_X86_64: EM_X86_64 with the 64-bit and little-endian flags.
pub const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
/// AUDIT_ARCH_I386 (the int 0x80 entry).
pub const AUDIT_ARCH_I386: u32 = 3 | 0x4000_0000;
/// The bit that marks an x32 syscall number.
pub const X32_SYSCALL_BIT: i32 = 0x4000_0000;

impl SeccompData {
    /// A native x86_64 call of `nr` with `args`.
    pub fn x86_64(nr: i64, args: [u64; 6]) -> Self {
        Self {
            nr: i32::try_from(nr).unwrap_or(i32::MAX),
            arch: AUDIT_ARCH_X86_64,
            ip: 0,
            args,
        }
    }

    /// The 32-bit word at byte `offset`, as a load sees it (the layout of
    /// `struct seccomp_data` on a little-endian machine).
    fn word(&self, offset: u32) -> Option<u32> {
        if !offset.is_multiple_of(4) {
            return None;
        }
        let low = |v: u64| u32::try_from(v & 0xffff_ffff).ok();
        let high = |v: u64| u32::try_from(v >> 32).ok();
        match offset {
            0 => Some(self.nr.cast_unsigned()),
            4 => Some(self.arch),
            8 => low(self.ip),
            12 => high(self.ip),
            16..=63 => {
                let arg = *self.args.get((offset as usize - 16) / 8)?;
                if offset % 8 == 4 {
                    high(arg)
                } else {
                    low(arg)
                }
            }
            _ => None,
        }
    }
}

/// Why a program could not be run to a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BpfError {
    /// The program has no instructions or more than the kernel accepts.
    #[error("program length {0} is out of range")]
    Length(usize),
    /// An instruction the interpreter (and seccomp) does not accept.
    #[error("instruction {at} has unsupported code {code:#06x}")]
    Unsupported {
        /// Its index.
        at: usize,
        /// Its code.
        code: u16,
    },
    /// A load outside `seccomp_data` or not aligned.
    #[error("instruction {at} loads from bad offset {offset}")]
    Load {
        /// Its index.
        at: usize,
        /// The offset it names.
        offset: u32,
    },
    /// A jump past the end of the program, or falling off its end.
    #[error("instruction {at} leaves the program")]
    OutOfBounds {
        /// Its index.
        at: usize,
    },
}

/// The most instructions a filter may have (BPF_MAXINSNS).
const MAX_INSNS: usize = 4096;

/// Runs `prog` on `data` and returns its verdict (SECCOMP_RET_*, with its
/// data bits).
pub fn run(prog: &[sock_filter], data: &SeccompData) -> Result<u32, BpfError> {
    if prog.is_empty() || prog.len() > MAX_INSNS {
        return Err(BpfError::Length(prog.len()));
    }
    let (mut a, mut x) = (0u32, 0u32);
    let mut pc = 0usize;
    while let Some(ins) = prog.get(pc) {
        let code = ins.code;
        let unsupported = BpfError::Unsupported { at: pc, code };
        let mut next = pc + 1;
        match code & CLASS {
            LD | LDX if code & SIZE == W => {
                let v = match code & MODE {
                    ABS if code & CLASS == LD => data.word(ins.k).ok_or(BpfError::Load {
                        at: pc,
                        offset: ins.k,
                    })?,
                    IMM => ins.k,
                    _ => return Err(unsupported),
                };
                if code & CLASS == LD {
                    a = v;
                } else {
                    x = v;
                }
            }
            ALU => {
                let operand = if code & SRC == X { x } else { ins.k };
                a = alu(code & OP, a, operand).ok_or(unsupported)?;
            }
            JMP => {
                let operand = if code & SRC == X { x } else { ins.k };
                let offset = match code & OP {
                    0x00 => ins.k as usize,
                    op => {
                        let taken = match op {
                            0x10 => a == operand,
                            0x20 => a > operand,
                            0x30 => a >= operand,
                            0x40 => a & operand != 0,
                            _ => return Err(unsupported),
                        };
                        usize::from(if taken { ins.jt } else { ins.jf })
                    }
                };
                next = next
                    .checked_add(offset)
                    .filter(|n| *n < prog.len())
                    .ok_or(BpfError::OutOfBounds { at: pc })?;
            }
            RET => {
                return match code & 0x18 {
                    0x00 => Ok(ins.k),
                    0x10 => Ok(a),
                    _ => Err(unsupported),
                }
            }
            MISC => match code & 0xf8 {
                0x00 => x = a,
                0x80 => a = x,
                _ => return Err(unsupported),
            },
            _ => return Err(unsupported),
        }
        pc = next;
    }
    Err(BpfError::OutOfBounds { at: prog.len() - 1 })
}

fn alu(op: u16, a: u32, v: u32) -> Option<u32> {
    Some(match op {
        0x00 => a.wrapping_add(v),
        0x10 => a.wrapping_sub(v),
        0x20 => a.wrapping_mul(v),
        0x30 => a.checked_div(v)?,
        0x40 => a | v,
        0x50 => a & v,
        0x60 => a.checked_shl(v)?,
        0x70 => a.checked_shr(v)?,
        0x80 => a.wrapping_neg(),
        0x90 => a.checked_rem(v)?,
        0xa0 => a ^ v,
        _ => return None,
    })
}

/// How severe an action is, as the kernel ranks them when several filters
/// answer: the action bits read as a signed number, lowest wins
/// (KILL_PROCESS < KILL_THREAD < TRAP < ERRNO < ... < LOG < ALLOW).
fn severity(verdict: u32) -> i32 {
    (verdict & libc::SECCOMP_RET_ACTION_FULL).cast_signed()
}

/// The verdict of several stacked filters: every filter runs and the most
/// severe answer wins (the first of equally severe ones, as in the kernel,
/// which runs the newest filter first).
pub fn stacked(progs: &[&[sock_filter]], data: &SeccompData) -> Result<u32, BpfError> {
    let mut verdict = libc::SECCOMP_RET_ALLOW;
    for prog in progs.iter().rev() {
        let v = run(prog, data)?;
        if severity(v) < severity(verdict) {
            verdict = v;
        }
    }
    Ok(verdict)
}

/// The action of a verdict without its data bits.
pub fn action(verdict: u32) -> u32 {
    verdict & libc::SECCOMP_RET_ACTION_FULL
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stmt(code: u16, k: u32) -> sock_filter {
        sock_filter {
            code,
            jt: 0,
            jf: 0,
            k,
        }
    }

    fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
        sock_filter { code, jt, jf, k }
    }

    /// Allows getpid when its first argument's low word is 7, else ERRNO 1.
    fn sample() -> Vec<sock_filter> {
        vec![
            stmt(LD | W | ABS, 0),
            jump(JMP | 0x10, u32::try_from(libc::SYS_getpid).unwrap(), 0, 3),
            stmt(LD | W | ABS, 16),
            jump(JMP | 0x10, 7, 0, 1),
            stmt(RET, libc::SECCOMP_RET_ALLOW),
            stmt(RET, libc::SECCOMP_RET_ERRNO | 1),
        ]
    }

    #[test]
    fn loads_compare_and_return() {
        let p = sample();
        let ok = SeccompData::x86_64(libc::SYS_getpid, [7, 0, 0, 0, 0, 0]);
        assert_eq!(run(&p, &ok), Ok(libc::SECCOMP_RET_ALLOW));
        let wrong_arg = SeccompData::x86_64(libc::SYS_getpid, [7 | 1 << 32, 0, 0, 0, 0, 0]);
        assert_eq!(run(&p, &wrong_arg), Ok(libc::SECCOMP_RET_ALLOW));
        let other = SeccompData::x86_64(libc::SYS_getppid, [7, 0, 0, 0, 0, 0]);
        assert_eq!(run(&p, &other), Ok(libc::SECCOMP_RET_ERRNO | 1));
    }

    #[test]
    fn the_high_word_of_an_argument_is_at_offset_plus_four() {
        let d = SeccompData::x86_64(0, [0, 0x1122_3344_5566_7788, 0, 0, 0, 0]);
        assert_eq!(d.word(24), Some(0x5566_7788));
        assert_eq!(d.word(28), Some(0x1122_3344));
        assert_eq!(d.word(64), None);
        assert_eq!(d.word(2), None);
    }

    #[test]
    fn bad_programs_are_errors_not_verdicts() {
        let d = SeccompData::x86_64(0, [0; 6]);
        assert_eq!(run(&[], &d), Err(BpfError::Length(0)));
        let off_end = [stmt(LD | W | ABS, 0)];
        assert_eq!(run(&off_end, &d), Err(BpfError::OutOfBounds { at: 0 }));
        let far_jump = [stmt(JMP, 5), stmt(RET, 0)];
        assert_eq!(run(&far_jump, &d), Err(BpfError::OutOfBounds { at: 0 }));
        let bad_load = [stmt(LD | W | ABS, 66), stmt(RET, 0)];
        assert_eq!(
            run(&bad_load, &d),
            Err(BpfError::Load { at: 0, offset: 66 })
        );
        let div0 = [stmt(ALU | 0x30, 0), stmt(RET, 0)];
        assert!(matches!(run(&div0, &d), Err(BpfError::Unsupported { .. })));
    }

    #[test]
    fn the_most_severe_of_stacked_filters_wins() {
        let allow = [stmt(RET, libc::SECCOMP_RET_ALLOW)];
        let errno = [stmt(RET, libc::SECCOMP_RET_ERRNO | 38)];
        let log = [stmt(RET, libc::SECCOMP_RET_LOG)];
        let kill = [stmt(RET, libc::SECCOMP_RET_KILL_PROCESS)];
        let d = SeccompData::x86_64(0, [0; 6]);
        assert_eq!(
            stacked(&[&allow, &errno, &log], &d),
            Ok(libc::SECCOMP_RET_ERRNO | 38)
        );
        assert_eq!(
            stacked(&[&errno, &kill], &d),
            Ok(libc::SECCOMP_RET_KILL_PROCESS)
        );
        assert_eq!(stacked(&[], &d), Ok(libc::SECCOMP_RET_ALLOW));
    }
}
