//! Legacy PC devices on the I/O port bus: the COM1 UART, the i8042 reset
//! line, a CMOS RTC, and the ACPI power-management ports; the ACPI power
//! button, which is an interrupt rather than a port; and the VM generation
//! ID, which is guest memory and an interrupt.

pub mod acpi_pm;
pub mod cmos;
pub mod power_button;
pub mod serial;
pub mod vmgenid;

use std::sync::Mutex;

use acpi_pm::{AcpiPm, PowerEvent};
use cmos::Cmos;
use serial::{SerialDevice, COM1_BASE};

const I8042_DATA: u16 = 0x60;
const I8042_COMMAND: u16 = 0x64;
const I8042_CMD_RESET: u8 = 0xfe;
const CMOS_INDEX: u16 = 0x70;
const CMOS_DATA: u16 = 0x71;

/// Register offset of a COM1 port (the caller checked the range).
fn uart_offset(port: u16) -> u8 {
    u8::try_from(port.wrapping_sub(COM1_BASE) & 7).unwrap_or(0)
}

fn is_pm_port(port: u16) -> bool {
    use crate::boot::acpi::{RESET_PORT, SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT};
    matches!(port, SLEEP_CONTROL_PORT | SLEEP_STATUS_PORT | RESET_PORT)
}

/// The 16550A's receive FIFO, as vm-superio models it.
const UART_FIFO: usize = 64;

/// How long console input may wait in the UART without the guest reading
/// any of it before the UART's interrupt is raised again.
pub const RX_STALL: std::time::Duration = std::time::Duration::from_millis(500);

/// Watches console input for a guest that stopped reading it: a lost
/// receive interrupt. vm-superio signals "data available" on an edge only
/// when its IIR does not already show it, so one edge that never reached
/// the guest (measured here on restored VMs: the last FIFO of a kilobyte
/// typed in stayed unread until a console message rewrote IER) leaves the
/// input waiting for good. A real 8250 keeps its line asserted while data
/// waits; [`RxWatch::check`] asks for the interrupt again instead when the
/// guest has read nothing for [`RX_STALL`].
#[derive(Debug)]
pub struct RxWatch {
    /// What would be unread if the guest had read nothing since `since`.
    expect: usize,
    since: std::time::Instant,
}

impl RxWatch {
    /// Nothing queued yet, at `now`.
    pub fn new(now: std::time::Instant) -> Self {
        Self {
            expect: 0,
            since: now,
        }
    }

    /// `n` more bytes went into the FIFO.
    pub fn queued(&mut self, n: usize) {
        self.expect += n;
    }

    /// With `unread` bytes in the FIFO at `now`: whether to raise the
    /// interrupt again (the guest read nothing for [`RX_STALL`]).
    pub fn check(&mut self, unread: usize, now: std::time::Instant) -> bool {
        if unread == 0 || unread < self.expect {
            // Empty, or the guest read some: it is taking input.
            self.expect = unread;
            self.since = now;
            return false;
        }
        self.expect = unread;
        if now.duration_since(self.since) < RX_STALL {
            return false;
        }
        self.since = now;
        true
    }
}

/// What a snapshot keeps of the legacy devices: the UART's registers and
/// receive buffer, and the RTC's selected register (the power management
/// ports keep nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyState {
    /// The 8250's registers and unread input.
    pub serial: vm_superio::serial::SerialState,
    /// The CMOS index.
    pub cmos_index: u8,
}

/// The legacy devices, each behind its own lock.
pub struct LegacyDevices {
    serial: Mutex<SerialDevice>,
    pm: Mutex<AcpiPm>,
    cmos: Mutex<Cmos>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LegacyDevices {
    /// Wraps the UART; the other devices have no configuration.
    pub fn new(serial: SerialDevice) -> Self {
        Self {
            serial: Mutex::new(serial),
            pm: Mutex::new(AcpiPm::new()),
            cmos: Mutex::new(Cmos::new()),
        }
    }

    /// Wraps a UART restored from a snapshot, and an RTC with its selected
    /// register.
    pub fn restored(serial: SerialDevice, cmos_index: u8) -> Self {
        Self {
            serial: Mutex::new(serial),
            pm: Mutex::new(AcpiPm::new()),
            cmos: Mutex::new(Cmos::with_index(cmos_index)),
        }
    }

    /// Console input in the UART's FIFO that the guest has not read.
    pub fn serial_unread(&self) -> usize {
        UART_FIFO.saturating_sub(lock(&self.serial).fifo_capacity())
    }

    /// After a restore, raises the UART's interrupt again if a cause of it
    /// is pending and enabled (input waiting, or room to transmit), as the
    /// interrupt line of a real 8250 stays asserted while that holds: an
    /// edge the saved UART shows as sent may not have reached the saved
    /// irqchips, and the restored UART would not send it again (for input,
    /// [`RxWatch`] also catches a lost edge later; this covers the
    /// transmitter too). Read IIR (which clears what the UART takes as
    /// signalled), then write IER back unchanged (which signals what is
    /// enabled and pending). Also [`RxWatch`]'s remedy. Not while the
    /// divisor latch is selected: those offsets are the divisor.
    pub fn reassert_serial_interrupt(&self) {
        const IER: u8 = 1;
        const IIR: u8 = 2;
        const LCR: u8 = 3;
        const LCR_DLAB: u8 = 0x80;
        let mut serial = lock(&self.serial);
        if serial.read(LCR) & LCR_DLAB != 0 {
            return;
        }
        let ier = serial.read(IER);
        let _ = serial.read(IIR);
        // An error is a failed eventfd write: nothing more to do than the
        // guest's backup timer will.
        let _ = serial.write(IER, ier);
    }

    /// The devices' state, for a snapshot.
    pub fn save(&self) -> LegacyState {
        LegacyState {
            serial: lock(&self.serial).state(),
            cmos_index: lock(&self.cmos).index(),
        }
    }

    /// Queues console input for the guest; returns how many bytes fit.
    pub fn serial_input(&self, bytes: &[u8]) -> usize {
        lock(&self.serial).enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    /// An `in` from the guest. Ports nobody decodes read as all ones, like an
    /// empty ISA bus.
    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        data.fill(0xff);
        match port {
            p if (COM1_BASE..COM1_BASE + 8).contains(&p) => {
                if let Some(b) = data.first_mut() {
                    *b = lock(&self.serial).read(uart_offset(p));
                }
            }
            I8042_DATA | I8042_COMMAND => data.fill(0),
            CMOS_INDEX | CMOS_DATA => {
                if let Some(b) = data.first_mut() {
                    *b = lock(&self.cmos).read(port);
                }
            }
            p if is_pm_port(p) => lock(&self.pm).read(p, data),
            _ => {}
        }
    }

    /// An `out` from the guest; returns a power event if the guest asked for
    /// one.
    pub fn pio_write(&self, port: u16, data: &[u8]) -> Option<PowerEvent> {
        match port {
            p if (COM1_BASE..COM1_BASE + 8).contains(&p) => {
                if let Some(&b) = data.first() {
                    // The only error is a failed interrupt write, which the
                    // guest's next read of the IIR recovers from.
                    let _ = lock(&self.serial).write(uart_offset(p), b);
                }
                None
            }
            I8042_COMMAND if data.first() == Some(&I8042_CMD_RESET) => Some(PowerEvent::Reboot),
            CMOS_INDEX | CMOS_DATA => {
                if let Some(&b) = data.first() {
                    lock(&self.cmos).write(port, b);
                }
                None
            }
            p if is_pm_port(p) => lock(&self.pm).write(p, data),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn rx_watch_asks_again_only_when_the_guest_reads_nothing_for_a_while() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut w = RxWatch::new(t0);
        // Nothing waiting: never.
        assert!(!w.check(0, at(10_000)));
        // 64 bytes queued, none read: not before RX_STALL, then once per
        // RX_STALL.
        w.queued(64);
        assert!(!w.check(64, at(10_100)));
        assert!(!w.check(64, at(10_400)));
        assert!(w.check(64, at(10_700)));
        assert!(!w.check(64, at(10_800)));
        assert!(w.check(64, at(11_300)));
        // The guest reads some, more is queued: progress, the clock starts
        // again.
        w.queued(10);
        assert!(!w.check(40, at(11_900)));
        assert!(!w.check(40, at(12_300)));
        assert!(w.check(40, at(12_500)));
        // Read to the end: reset.
        assert!(!w.check(0, at(20_000)));
        w.queued(5);
        assert!(!w.check(5, at(20_100)));
    }
}
