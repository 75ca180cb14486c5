//! The power-management ports that the FADT (ACPI 6.5, 5.2.9) points the
//! guest at: the hardware-reduced sleep control and sleep status registers
//! (chapter 4, "Sleep Control and Status Registers"; chapter 16) and the
//! reset register at the classic reset control port 0xCF9.
//!
//! Pure logic: a guest write becomes a [`PowerEvent`] for the VMM to act on.
//! The port numbers and the S5 sleep type come from [`crate::boot::acpi`], so
//! the tables and this device cannot disagree.

use crate::boot::acpi::{RESET_PORT, RESET_VALUE, S5_SLEEP_TYPE, SLEEP_CONTROL_PORT};

/// Sleep control register: SLP_EN, "enter the state in SLP_TYP now".
const SLP_EN: u8 = 1 << 5;
/// Sleep control register: SLP_TYP is bits 2..=4.
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111;
/// Reset control port: RST_CPU. Setting it resets the machine, whatever the
/// other bits ask for (0x06 warm, 0x0E cold); a write without it (0x02,
/// "get ready") does nothing.
const RST_CPU: u8 = 1 << 2;

// The value the FADT tells the guest to write must reset it.
const _: () = assert!(RESET_VALUE & RST_CPU != 0);

/// What the guest asked the machine to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerEvent {
    /// Power off (S5).
    Shutdown,
    /// Reset the machine.
    Reboot,
}

/// The sleep control, sleep status and reset registers.
///
/// They hold no state: the sleep control register's fields are write-only,
/// the sleep status register never reports a wake (the guest only sleeps
/// to power off), and the reset register acts on the write itself.
#[derive(Debug, Default)]
pub struct AcpiPm {
    _private: (),
}

impl AcpiPm {
    /// The registers at power-on.
    pub fn new() -> Self {
        Self::default()
    }

    /// An `in` from one of the ports: every register reads as zero.
    pub fn read(&mut self, _port: u16, data: &mut [u8]) {
        data.fill(0);
    }

    /// An `out` to the absolute I/O port `port`. Returns the power event the
    /// write asks for, if any.
    ///
    /// The registers are 8 bits wide: a wider write lands its first byte on
    /// `port`, like a write to byte registers side by side. An empty write,
    /// a write to the sleep status register (its only writable bit, WAK_STS,
    /// is never set) and a write to any other port do nothing.
    pub fn write(&mut self, port: u16, data: &[u8]) -> Option<PowerEvent> {
        let value = *data.first()?;
        match port {
            SLEEP_CONTROL_PORT => sleep_control(value),
            RESET_PORT => reset(value),
            _ => None,
        }
    }
}

/// Decodes a sleep control write: SLP_EN with SLP_TYP = S5 powers off. Other
/// sleep states are not offered (the DSDT has only `\_S5_`), so are ignored.
fn sleep_control(value: u8) -> Option<PowerEvent> {
    let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
    (value & SLP_EN != 0 && sleep_type == S5_SLEEP_TYPE).then_some(PowerEvent::Shutdown)
}

/// Decodes a reset control write.
fn reset(value: u8) -> Option<PowerEvent> {
    (value & RST_CPU != 0).then_some(PowerEvent::Reboot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::acpi::SLEEP_STATUS_PORT;

    /// SLP_EN | SLP_TYP=5, what Linux writes to power off.
    const S5_WRITE: u8 = 0x34;

    #[test]
    fn slp_en_with_s5_type_shuts_down() {
        let mut pm = AcpiPm::new();

        let event = pm.write(SLEEP_CONTROL_PORT, &[S5_WRITE]);

        assert_eq!(event, Some(PowerEvent::Shutdown));
    }

    #[test]
    fn s5_type_without_slp_en_is_ignored() {
        let mut pm = AcpiPm::new();

        let event = pm.write(SLEEP_CONTROL_PORT, &[S5_WRITE & !SLP_EN]);

        assert_eq!(event, None);
    }

    #[test]
    fn slp_en_with_other_sleep_types_is_ignored() {
        let mut pm = AcpiPm::new();

        for sleep_type in (0..=7u8).filter(|t| *t != S5_SLEEP_TYPE) {
            let event = pm.write(
                SLEEP_CONTROL_PORT,
                &[SLP_EN | (sleep_type << SLP_TYP_SHIFT)],
            );

            assert_eq!(event, None, "sleep type {sleep_type}");
        }
    }

    #[test]
    fn wider_sleep_control_write_uses_its_first_byte() {
        let mut pm = AcpiPm::new();

        let event = pm.write(SLEEP_CONTROL_PORT, &[S5_WRITE, 0, 0, 0]);

        assert_eq!(event, Some(PowerEvent::Shutdown));
    }

    #[test]
    fn reset_value_reboots() {
        let mut pm = AcpiPm::new();

        let event = pm.write(RESET_PORT, &[RESET_VALUE]);

        assert_eq!(event, Some(PowerEvent::Reboot));
    }

    #[test]
    fn cold_reset_value_reboots() {
        let mut pm = AcpiPm::new();

        let event = pm.write(RESET_PORT, &[0x0E]);

        assert_eq!(event, Some(PowerEvent::Reboot));
    }

    #[test]
    fn reset_write_without_rst_cpu_is_ignored() {
        let mut pm = AcpiPm::new();

        let event = pm.write(RESET_PORT, &[0x02]);

        assert_eq!(event, None);
    }

    #[test]
    fn sleep_status_writes_are_ignored() {
        let mut pm = AcpiPm::new();

        let event = pm.write(SLEEP_STATUS_PORT, &[0xFF]);

        assert_eq!(event, None);
    }

    #[test]
    fn writes_to_other_ports_are_ignored() {
        let mut pm = AcpiPm::new();

        for port in [0u16, 0x5FF, 0x602, 0xCF8, 0xCFA, 0xFFFF] {
            assert_eq!(pm.write(port, &[S5_WRITE]), None, "port {port:#x}");
            assert_eq!(pm.write(port, &[RESET_VALUE]), None, "port {port:#x}");
        }
    }

    #[test]
    fn empty_writes_are_ignored() {
        let mut pm = AcpiPm::new();

        for port in [SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT, RESET_PORT] {
            assert_eq!(pm.write(port, &[]), None, "port {port:#x}");
        }
    }

    #[test]
    fn reads_return_zeros_of_any_length() {
        let mut pm = AcpiPm::new();

        for port in [SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT, RESET_PORT, 0x1234] {
            for len in 0..=8 {
                let mut data = vec![0xAA; len];
                pm.read(port, &mut data);
                assert!(data.iter().all(|b| *b == 0), "port {port:#x} len {len}");
            }
        }
    }

    #[test]
    fn every_byte_value_decodes_as_specified() {
        let mut pm = AcpiPm::new();

        for port in [SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT, RESET_PORT] {
            for value in 0..=u8::MAX {
                let event = pm.write(port, &[value]);
                let expected = match port {
                    SLEEP_CONTROL_PORT if value & 0x3C == S5_WRITE & 0x3C => {
                        Some(PowerEvent::Shutdown)
                    }
                    RESET_PORT if value & RST_CPU != 0 => Some(PowerEvent::Reboot),
                    _ => None,
                };
                assert_eq!(event, expected, "port {port:#x} value {value:#x}");
            }
        }
    }
}
