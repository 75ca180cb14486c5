//! A read-only MC146818 CMOS RTC that reports the host's UTC time in binary,
//! 24-hour mode, so the guest's wall clock starts right.

use std::time::{SystemTime, UNIX_EPOCH};

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_STATUS_A: u8 = 0x0a;
const REG_STATUS_B: u8 = 0x0b;
const REG_STATUS_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;
/// Status B: 24-hour mode, binary (not BCD) values.
const STATUS_B_24H_BINARY: u8 = 0x02 | 0x04;
/// Status D: the CMOS battery is good.
const STATUS_D_VALID: u8 = 0x80;

/// The RTC's register file (index latch only; time is read live).
#[derive(Default)]
pub struct Cmos {
    index: u8,
}

impl Cmos {
    /// A fresh RTC.
    pub fn new() -> Self {
        Self::default()
    }

    /// The selected register (a snapshot keeps it).
    pub fn index(&self) -> u8 {
        self.index
    }

    /// An RTC whose selected register is `index` (bit 7 dropped).
    pub fn with_index(index: u8) -> Self {
        Self {
            index: index & 0x7f,
        }
    }

    /// Reads port 0x70 (the index) or 0x71 (the selected register).
    pub fn read(&self, port: u16) -> u8 {
        if port == 0x70 {
            return self.index;
        }
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        register(self.index, secs)
    }

    /// Writes the index (bit 7 is the NMI mask, ignored); data writes are
    /// ignored: the guest cannot set the host's clock.
    pub fn write(&mut self, port: u16, value: u8) {
        if port == 0x70 {
            self.index = value & 0x7f;
        }
    }
}

/// The value of register `index` at `secs` seconds since the Unix epoch.
fn register(index: u8, secs: u64) -> u8 {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let v = match index {
        REG_SECONDS => rem % 60,
        REG_MINUTES => (rem / 60) % 60,
        REG_HOURS => rem / 3600,
        REG_WEEKDAY => (days + 4) % 7 + 1,
        REG_DAY => day,
        REG_MONTH => month,
        REG_YEAR => year % 100,
        REG_CENTURY => year / 100,
        REG_STATUS_A => 0,
        REG_STATUS_B => u64::from(STATUS_B_24H_BINARY),
        REG_STATUS_D => u64::from(STATUS_D_VALID),
        _ => 0,
    };
    u8::try_from(v).unwrap_or(0)
}

/// Gregorian (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Howard Hinnant's days-to-civil algorithm, restricted to dates >= 1970.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_date_decodes() {
        // 2026-11-23 12:34:56 UTC
        let secs = 1_795_437_296;
        assert_eq!(register(REG_YEAR, secs), 26);
        assert_eq!(register(REG_CENTURY, secs), 20);
        assert_eq!(register(REG_MONTH, secs), 11);
        assert_eq!(register(REG_DAY, secs), 23);
        assert_eq!(register(REG_HOURS, secs), 12);
        assert_eq!(register(REG_MINUTES, secs), 34);
        assert_eq!(register(REG_SECONDS, secs), 56);
    }

    #[test]
    fn epoch_is_1970_01_01() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
    }

    #[test]
    fn index_write_masks_nmi_bit() {
        let mut c = Cmos::new();
        c.write(0x70, 0x80 | REG_STATUS_B);
        assert_eq!(c.read(0x70), REG_STATUS_B);
        assert_eq!(c.read(0x71), STATUS_B_24H_BINARY);
    }
}
