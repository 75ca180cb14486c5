//! Adaptive polling of a device's queues (`--device-poll-us`).
//!
//! A device that sleeps between kicks is woken by the next one; where the
//! host's idle cores halt (a nested VM whose guest halt polling is off, as
//! here), that wake-up costs tens of microseconds, more than the request.
//! After serving a kick the worker can look at its queues' available rings
//! in guest memory, with no system call, for a window before it sleeps:
//! the driver's next request is then served at once. The window is
//! bounded (at most `--device-poll-us`, itself at most
//! [`ipc::MAX_POLL_US`]), spent only right after work (an idle queue costs
//! nothing), halves after a look that found nothing (down to none), and
//! grows back when a kick comes soon after the device went to sleep, as
//! KVM's halt polling does for a vCPU. Polling that finds nothing may take
//! at most a quarter of the wall time (over each 10 ms): a device whose
//! driver's requests keep coming just too late for its window (a console
//! whose host peer sleeps) wastes a bounded share of a core, not one spin
//! per request.

use std::time::{Duration, Instant};

/// Below this fraction of the longest window, the window closes.
const CLOSE_BELOW: u32 = 16;
/// A window that reopens starts at this fraction of the longest.
const REOPEN_AT: u32 = 8;
/// Polling that found nothing may take at most a `VAIN_SHARE`th of each
/// `PERIOD` of wall time.
const PERIOD: Duration = Duration::from_millis(10);
const VAIN_SHARE: u32 = 4;

/// One device's polling state.
#[derive(Debug)]
pub struct Poller {
    /// The longest window (`--device-poll-us`); zero: never poll.
    max: Duration,
    /// The current window.
    window: Duration,
    /// When the device last went to sleep, while polling is on.
    slept: Option<Instant>,
    /// The current period's start, and how long polling spent in it on
    /// spins that found nothing.
    period: Instant,
    vain: Duration,
}

impl Poller {
    /// Polling for up to `poll_us` microseconds (0: off).
    pub fn new(poll_us: u32) -> Self {
        let max = Duration::from_micros(u64::from(poll_us));
        Self {
            max,
            window: max,
            slept: None,
            period: Instant::now(),
            vain: Duration::ZERO,
        }
    }

    /// Whether polling is on at all.
    pub fn on(&self) -> bool {
        !self.max.is_zero()
    }

    /// Looks for work with `probe` (which returns a mask of queues that
    /// have some, 0 for none) until it finds some or the window passes;
    /// returns the last mask. Finding work widens the window, finding
    /// none halves it. Once this period's vain polling reached its share,
    /// it does not look until the next period.
    pub fn spin(&mut self, mut probe: impl FnMut() -> u64) -> u64 {
        if self.window.is_zero() {
            return 0;
        }
        let start = Instant::now();
        if start.duration_since(self.period) >= PERIOD {
            self.period = start;
            self.vain = Duration::ZERO;
        }
        if self.vain >= PERIOD / VAIN_SHARE {
            return 0;
        }
        let deadline = start + self.window;
        loop {
            let found = probe();
            if found != 0 {
                self.window = (self.window * 2).min(self.max);
                return found;
            }
            let now = Instant::now();
            if now >= deadline {
                self.vain += now - start;
                self.window /= 2;
                if self.window < self.max / CLOSE_BELOW {
                    self.window = Duration::ZERO;
                }
                return 0;
            }
            std::hint::spin_loop();
        }
    }

    /// The device is about to sleep until something wakes it.
    pub fn sleeping(&mut self) {
        if self.on() {
            self.slept = Some(Instant::now());
        }
    }

    /// It woke; `kicked`: a queue's kick woke it. A kick within the
    /// longest window of the sleep would have been caught by polling: the
    /// window opens again.
    pub fn woken(&mut self, kicked: bool) {
        let Some(slept) = self.slept.take() else {
            return;
        };
        if kicked && slept.elapsed() < self.max {
            self.window = (self.window * 2).max(self.max / REOPEN_AT).min(self.max);
        }
    }

    /// The current window (for tests).
    #[cfg(test)]
    fn window(&self) -> Duration {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_off_poller_never_looks() {
        let mut p = Poller::new(0);
        let mut looked = false;
        assert_eq!(
            p.spin(|| {
                looked = true;
                1
            }),
            0
        );
        assert!(!looked);
        p.sleeping();
        p.woken(true);
        assert_eq!(p.window(), Duration::ZERO);
    }

    #[test]
    fn work_found_keeps_the_window_and_none_found_closes_it() {
        let mut p = Poller::new(100);
        assert_eq!(p.spin(|| 0b10), 0b10);
        assert_eq!(p.window(), Duration::from_micros(100));
        // Each look that finds nothing halves it, then it closes.
        let mut windows = Vec::new();
        for _ in 0..6 {
            p.spin(|| 0);
            windows.push(p.window().as_micros());
        }
        assert_eq!(windows, [50, 25, 12, 6, 0, 0]);
        // A kick soon after a sleep opens it again, then work widens it.
        p.sleeping();
        p.woken(true);
        assert_eq!(p.window().as_micros(), 12);
        assert_eq!(p.spin(|| 1), 1);
        assert_eq!(p.window().as_micros(), 25);
    }

    #[test]
    fn a_long_sleep_or_a_control_wake_leaves_it_closed() {
        let mut p = Poller::new(20);
        for _ in 0..5 {
            p.spin(|| 0);
        }
        assert_eq!(p.window(), Duration::ZERO);
        p.sleeping();
        p.woken(false);
        assert_eq!(p.window(), Duration::ZERO);
        p.sleeping();
        std::thread::sleep(Duration::from_millis(1));
        p.woken(true);
        assert_eq!(p.window(), Duration::ZERO);
    }

    #[test]
    fn vain_polling_takes_at_most_its_share_of_a_period() {
        // Every spin finds nothing, and every sleep ends in a kick soon
        // enough to reopen the window: without the share, polling would
        // take most of the time. The clock is the wall's and this test
        // may be descheduled on a loaded host, mid-spin (a spin outlasts
        // its window) or between spins (a new period starts early): the
        // bounds hold per period and allow one spin's overrun.
        let mut p = Poller::new(200);
        let start = Instant::now();
        // Per period: its start, the time spent spinning, the longest spin.
        let mut periods: Vec<(Instant, Duration, Duration)> = Vec::new();
        while start.elapsed() < PERIOD * 8 / 10 {
            let (t, mut looked) = (Instant::now(), false);
            p.spin(|| {
                looked = true;
                0
            });
            if looked {
                let took = t.elapsed();
                if periods.last().map(|l| l.0) != Some(p.period) {
                    periods.push((p.period, Duration::ZERO, Duration::ZERO));
                }
                let last = periods.last_mut().unwrap();
                last.1 += took;
                last.2 = last.2.max(took);
            }
            p.sleeping();
            p.woken(true);
        }
        let share = PERIOD / VAIN_SHARE;
        // It stops looking once a period's share is spent: at most one
        // spin beyond it.
        for (_, spinning, longest) in &periods {
            assert!(
                *spinning <= share + *longest,
                "{spinning:?} in one period, the longest spin {longest:?}: {periods:?}"
            );
        }
        // Until then every pass of the loop spins, so less than the share
        // in all means this thread spent the rest of the 8 ms off its core.
        let spinning: Duration = periods.iter().map(|p| p.1).sum();
        let outside = start.elapsed().saturating_sub(spinning);
        assert!(
            spinning >= share || outside >= PERIOD * 8 / 10 - share,
            "{spinning:?} spinning, {outside:?} outside: it did not poll"
        );
    }

    #[test]
    fn a_spin_lasts_about_its_window() {
        let mut p = Poller::new(1000);
        let start = Instant::now();
        assert_eq!(p.spin(|| 0), 0);
        let took = start.elapsed();
        assert!(took >= Duration::from_micros(1000), "{took:?}");
        assert!(took < Duration::from_millis(500), "{took:?}");
    }
}
