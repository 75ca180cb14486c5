//! Legacy PC devices on the I/O port bus: the COM1 UART, the i8042 reset
//! line, a CMOS RTC, and the ACPI power-management ports; and the ACPI
//! power button, which is an interrupt rather than a port.

pub mod acpi_pm;
pub mod cmos;
pub mod power_button;
pub mod serial;

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
