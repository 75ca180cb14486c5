//! The terminal side of the serial console: raw mode while the VM runs
//! (restored on every exit path), input forwarding, and the escape key.
//!
//! Escape: Ctrl-A then `x` quits; Ctrl-A Ctrl-A sends one Ctrl-A.

pub mod backend;

use std::os::fd::RawFd;

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

#[cfg(test)]
mod tests {
    use super::*;

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
