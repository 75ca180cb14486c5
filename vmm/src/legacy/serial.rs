//! The 8250 UART on COM1 (0x3f8, IRQ 4), wired to the terminal.
//!
//! The register model is vm-superio's; this file connects it to an irqfd and
//! to a console writer that also watches for guest kernel panics.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vm_superio::{serial::NoEvents, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// COM1's base I/O port.
pub const COM1_BASE: u16 = 0x3f8;
/// COM1's ISA IRQ.
pub const COM1_IRQ: u32 = 4;

/// Raises the UART's interrupt through a KVM irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// A guest kernel panic seen on the console.
#[derive(Debug, Clone)]
pub struct PanicRecord {
    /// The panic line, e.g. "Kernel panic - not syncing: VFS: ...".
    pub message: String,
    /// When it was seen.
    pub at: Instant,
}

/// Where guest console output goes.
pub struct ConsoleOut {
    out: Box<dyn Write + Send>,
    line: Vec<u8>,
    panic: Arc<Mutex<Option<PanicRecord>>>,
}

const PANIC_MARKER: &[u8] = b"Kernel panic - not syncing";
const MAX_LINE: usize = 1024;

impl ConsoleOut {
    /// Writes guest output to `out` and records panics in `panic`.
    pub fn new(out: Box<dyn Write + Send>, panic: Arc<Mutex<Option<PanicRecord>>>) -> Self {
        Self {
            out,
            line: Vec::new(),
            panic,
        }
    }

    fn scan(&mut self, byte: u8) {
        if byte == b'\n' {
            if let Some(pos) = find(&self.line, PANIC_MARKER) {
                let text = String::from_utf8_lossy(self.line.get(pos..).unwrap_or_default());
                let mut p = self.panic.lock().unwrap_or_else(|e| e.into_inner());
                if p.is_none() {
                    *p = Some(PanicRecord {
                        message: text.trim_end().to_owned(),
                        at: Instant::now(),
                    });
                }
            }
            self.line.clear();
        } else if self.line.len() < MAX_LINE {
            self.line.push(byte);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            self.scan(b);
        }
        // The console must never stop the guest: a closed stdout drops output.
        let _ = self.out.write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.out.flush();
        Ok(())
    }
}

/// The UART as skvm uses it.
pub type SerialDevice = Serial<IrqTrigger, NoEvents, ConsoleOut>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_line_is_recorded_once() {
        let rec = Arc::new(Mutex::new(None));
        let mut c = ConsoleOut::new(Box::new(std::io::sink()), rec.clone());
        c.write_all(b"[ 1.0] Kernel panic - not syncing: No init found\r\n")
            .unwrap();
        c.write_all(b"Kernel panic - not syncing: second\n")
            .unwrap();
        let msg = rec.lock().unwrap().clone().unwrap().message;
        assert_eq!(msg, "Kernel panic - not syncing: No init found");
    }

    #[test]
    fn ordinary_output_records_nothing() {
        let rec = Arc::new(Mutex::new(None));
        let mut c = ConsoleOut::new(Box::new(std::io::sink()), rec.clone());
        c.write_all(b"hello\nKernel panic\n").unwrap();
        assert!(rec.lock().unwrap().is_none());
    }
}
