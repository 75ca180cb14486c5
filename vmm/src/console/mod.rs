//! The terminal side of the consoles: raw mode while the VM runs (restored
//! on every exit path), input forwarding, and the escape key. skvm's
//! terminal is the 8250's (`--serial stdio`, the default) or a virtio
//! console's (`--console stdio`, [`TerminalInput`]); its input goes through
//! the escape parser either way.
//!
//! Escape: Ctrl-A then `x` quits; Ctrl-A Ctrl-A sends one Ctrl-A.

pub mod backend;

use std::fs::File;
use std::io::Write;
use std::os::fd::{OwnedFd, RawFd};

/// Ctrl-A.
pub const ESCAPE: u8 = 0x01;

/// Puts a terminal in raw mode and restores it when dropped.
pub struct RawTerminal {
    fd: RawFd,
    saved: libc::termios,
}

impl RawTerminal {
    /// Raw mode on `fd` if it is a terminal; `None` otherwise.
    pub fn enable(fd: RawFd) -> Option<Self> {
        // SAFETY: isatty only inspects the fd.
        if unsafe { libc::isatty(fd) } != 1 {
            return None;
        }
        let saved = make_raw(fd).ok()?;
        crate::log::set_raw_terminal(true);
        Some(Self { fd, saved })
    }
}

/// Puts the terminal `fd` (or, on a pty master, its slave) in raw mode, as
/// `cfmakeraw` makes it (output post-processing off too: the guest sends
/// \r\n); its attributes before.
pub fn make_raw(fd: RawFd) -> std::io::Result<libc::termios> {
    // SAFETY: termios is plain data; tcgetattr fills it.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and pointer to a termios.
    if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut raw = saved;
    // SAFETY: cfmakeraw only edits the struct.
    unsafe { libc::cfmakeraw(&mut raw) };
    // SAFETY: valid fd and pointer to a termios.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(saved)
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read in `enable` on the same fd.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
        crate::log::set_raw_terminal(false);
    }
}

/// What a chunk of terminal input means.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Input {
    /// Bytes for the guest.
    pub bytes: Vec<u8>,
    /// The user pressed the quit sequence.
    pub quit: bool,
}

/// Tracks the escape prefix across reads.
#[derive(Debug, Default)]
pub struct EscapeParser {
    pending_escape: bool,
}

impl EscapeParser {
    /// Splits raw terminal bytes into guest input and commands.
    pub fn feed(&mut self, data: &[u8]) -> Input {
        let mut out = Input::default();
        for &b in data {
            if self.pending_escape {
                self.pending_escape = false;
                match b {
                    b'x' | b'X' => {
                        out.quit = true;
                        return out;
                    }
                    ESCAPE => out.bytes.push(ESCAPE),
                    other => {
                        out.bytes.push(ESCAPE);
                        out.bytes.push(other);
                    }
                }
            } else if b == ESCAPE {
                self.pending_escape = true;
            } else {
                out.bytes.push(b);
            }
        }
        out
    }
}

/// Console input on its way to the guest: what the user typed, through
/// the escape parser, waiting until the guest's side takes it. While some
/// waits, or once the input ended, no more is read.
#[derive(Debug)]
pub struct Typed {
    parser: EscapeParser,
    pending: Vec<u8>,
    open: bool,
}

impl Default for Typed {
    fn default() -> Self {
        Self {
            parser: EscapeParser::default(),
            pending: Vec::new(),
            open: true,
        }
    }
}

impl Typed {
    /// Whether more input may be read: the input is open and nothing waits.
    pub fn wants_input(&self) -> bool {
        self.open && self.pending.is_empty()
    }

    /// Takes bytes read from the input; true when they hold the quit
    /// sequence.
    pub fn feed(&mut self, data: &[u8]) -> bool {
        let input = self.parser.feed(data);
        self.pending.extend_from_slice(&input.bytes);
        input.quit
    }

    /// The input ended: nothing more is read.
    pub fn close(&mut self) {
        self.open = false;
    }

    /// What waits for the guest's side.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// The guest's side took the first `n` bytes of what waits.
    pub fn consumed(&mut self, n: usize) {
        self.pending.drain(..n.min(self.pending.len()));
    }
}

/// skvm's terminal given to a virtio console (`--console stdio`): the main
/// thread reads it, through the escape parser, and writes what the user
/// typed into the pipe the device reads. Nothing waits: what the pipe
/// cannot take now stays pending, and the terminal is not read meanwhile.
pub struct TerminalInput {
    sink: File,
    typed: Typed,
}

impl TerminalInput {
    /// Input forwarded into `sink`, the pipe's write end (non-blocking).
    pub fn new(sink: OwnedFd) -> Self {
        Self {
            sink: File::from(sink),
            typed: Typed::default(),
        }
    }

    /// Standard input, while it is open and nothing is pending.
    pub fn poll_fd(&self) -> Option<RawFd> {
        self.typed.wants_input().then_some(libc::STDIN_FILENO)
    }

    /// Reads what the terminal has; true when the user typed the quit
    /// sequence.
    pub fn read(&mut self) -> bool {
        let mut buf = [0u8; 256];
        // SAFETY: reads into a valid buffer of the given length.
        let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
        match usize::try_from(n) {
            Ok(0) => self.typed.close(),
            Ok(n) => return self.typed.feed(buf.get(..n).unwrap_or_default()),
            Err(_) => {}
        }
        false
    }

    /// Writes what is pending into the pipe; whether some is still pending.
    pub fn flush(&mut self) -> bool {
        if !self.typed.pending().is_empty() {
            if let Ok(n) = self.sink.write(self.typed.pending()) {
                self.typed.consumed(n);
            }
        }
        !self.typed.pending().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_input_waits_until_taken_and_is_not_read_meanwhile() {
        let mut t = Typed::default();
        assert!(t.wants_input());
        assert!(!t.feed(b"ls\r"));
        assert!(!t.wants_input());
        t.consumed(1);
        assert_eq!(t.pending(), b"s\r");
        t.consumed(9);
        assert!(t.wants_input());
        assert!(t.feed(&[ESCAPE, b'x']));
        t.close();
        assert!(!t.wants_input());
    }

    #[test]
    fn plain_input_passes_through() {
        let mut p = EscapeParser::default();
        assert_eq!(p.feed(b"ls\r").bytes, b"ls\r");
    }

    #[test]
    fn ctrl_a_x_quits_even_split_across_reads() {
        let mut p = EscapeParser::default();
        assert!(!p.feed(&[b'a', ESCAPE]).quit);
        assert!(p.feed(b"x").quit);
    }

    #[test]
    fn double_ctrl_a_sends_one() {
        let mut p = EscapeParser::default();
        assert_eq!(p.feed(&[ESCAPE, ESCAPE]).bytes, vec![ESCAPE]);
    }

    #[test]
    fn ctrl_a_then_other_key_sends_both() {
        let mut p = EscapeParser::default();
        assert_eq!(p.feed(&[ESCAPE, b'c']).bytes, vec![ESCAPE, b'c']);
    }
}
