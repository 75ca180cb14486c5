//! Device processes' stderr, as the spawner passes it on to skvm's.
//!
//! A device process is hostile by assumption, and its stderr would
//! otherwise be skvm's terminal or log file: it could flood it, hide lines
//! with escape sequences, or (on a terminal that stops reading) stall
//! whoever writes there. So every device process gets one end of a pipe as
//! its stderr, and the spawner copies what arrives to its own stderr:
//! control characters other than newline and tab become `?`, at most
//! [`LOG_BURST`] bytes at once and [`LOG_BYTES_PER_SECOND`] after that go
//! through (the rest is counted and reported in one line once the budget
//! refills), at most one pipe-full per wake so that a flood cannot keep the
//! spawner from its requests, and only when skvm's stderr can take the
//! bytes without blocking.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Bytes of device log passed on in a burst.
pub const LOG_BURST: u32 = 64 * 1024;
/// Bytes of device log passed on per second after a burst.
pub const LOG_BYTES_PER_SECOND: u32 = 16 * 1024;
/// The most read from the pipe per wake.
const CHUNK: usize = 4096;
/// The most of skvm's own notes held back while its stderr is full.
const OWED_MAX: usize = 1024;

/// A token bucket: `capacity` at once, refilled at `per_second`.
#[derive(Debug, Clone)]
pub struct Bucket {
    capacity: u32,
    per_second: u32,
    tokens: u32,
    since: Instant,
}

impl Bucket {
    /// A full bucket at `now`.
    pub fn new(capacity: u32, per_second: u32, now: Instant) -> Self {
        Self {
            capacity,
            per_second: per_second.max(1),
            tokens: capacity,
            since: now,
        }
    }

    /// An empty bucket that stays empty until `until`.
    #[cfg(test)]
    pub fn empty_until(capacity: u32, per_second: u32, until: Instant) -> Self {
        Self {
            tokens: 0,
            ..Self::new(capacity, per_second, until)
        }
    }

    fn refill(&mut self, now: Instant) {
        let per_token = Duration::from_secs(1) / self.per_second;
        let earned = now.saturating_duration_since(self.since).as_nanos() / per_token.as_nanos();
        let earned = u32::try_from(earned).unwrap_or(u32::MAX);
        if earned > 0 {
            self.tokens = self.tokens.saturating_add(earned).min(self.capacity);
            self.since += per_token * earned;
        }
        if self.tokens == self.capacity {
            self.since = now;
        }
    }

    /// Takes `n` tokens at `now` if the bucket holds them.
    pub fn take(&mut self, n: u32, now: Instant) -> bool {
        self.refill(now);
        if self.tokens < n {
            return false;
        }
        self.tokens -= n;
        true
    }
}

/// `bytes` with every control character but newline and tab (C0, DEL and
/// C1, after decoding as UTF-8) replaced by `?`; bytes that are not UTF-8
/// become U+FFFD.
pub fn sanitize(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                '?'
            } else {
                c
            }
        })
        .collect()
}

/// The pipe device processes log into, and the spawner's copy of it.
pub struct DeviceLog {
    rd: OwnedFd,
    wr: OwnedFd,
    budget: Bucket,
    /// Bytes read and not passed on since the last report.
    dropped: u64,
    /// Over the budget since the last line that went through.
    throttled: bool,
    /// skvm's own notes about the log, not yet written (the output was
    /// full when they were due).
    owed: Vec<u8>,
}

impl DeviceLog {
    /// A new pipe, its read end non-blocking; both ends above fd 9 so that
    /// setting up a device's fds 0-3 cannot overwrite them.
    pub fn new(now: Instant) -> io::Result<Self> {
        let (rd, wr) = sandbox::process::pipe()?;
        let (rd, wr) = (above_stdio(&rd)?, above_stdio(&wr)?);
        // SAFETY: fcntl on an fd we own with valid commands.
        unsafe {
            let flags = libc::fcntl(rd.as_raw_fd(), libc::F_GETFL);
            if flags < 0 || libc::fcntl(rd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Self {
            rd,
            wr,
            budget: Bucket::new(LOG_BURST, LOG_BYTES_PER_SECOND, now),
            dropped: 0,
            throttled: false,
            owed: Vec::new(),
        })
    }

    /// The end a device process gets as its stderr.
    pub fn writer(&self) -> BorrowedFd<'_> {
        self.wr.as_fd()
    }

    /// The end to wait on.
    pub fn reader(&self) -> BorrowedFd<'_> {
        self.rd.as_fd()
    }

    /// Passes on at most one chunk of what is waiting in the pipe to
    /// `out`, within the budget; returns the bytes read.
    pub fn copy(&mut self, out: BorrowedFd<'_>, now: Instant) -> usize {
        let mut buf = [0u8; CHUNK];
        // SAFETY: reads into a buffer of the given size; the read end is
        // non-blocking.
        let n = unsafe { libc::read(self.rd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        let Ok(n) = usize::try_from(n) else { return 0 };
        let Some(read) = buf.get(..n).filter(|b| !b.is_empty()) else {
            return 0;
        };
        let text = sanitize(read);
        let cost = u32::try_from(text.len()).unwrap_or(u32::MAX);
        if !self.budget.take(cost, now) {
            if !self.throttled {
                self.throttled = true;
                self.owe(&format!(
                    "\nskvm: device log: more than {} KiB at once or {} KiB a second: dropping \
                     what follows until it slows down\n",
                    LOG_BURST / 1024,
                    LOG_BYTES_PER_SECOND / 1024
                ));
            }
            self.dropped += n as u64;
            self.pay(out);
            return n;
        }
        self.throttled = false;
        if self.dropped > 0 && self.owed.is_empty() {
            let note = format!("skvm: device log: {} bytes were dropped\n", self.dropped);
            self.dropped = 0;
            self.owe(&note);
        }
        // skvm's own notes go first; what the output does not take now is
        // lost (never waited for).
        let written = if self.pay(out) {
            write_now(out, text.as_bytes())
        } else {
            0
        };
        self.dropped += (text.len() - written) as u64;
        n
    }

    /// Queues one of skvm's own notes (bounded: a note that does not fit
    /// behind those not yet written is left out).
    fn owe(&mut self, note: &str) {
        if self.owed.len() + note.len() <= OWED_MAX {
            self.owed.extend_from_slice(note.as_bytes());
        }
    }

    /// Writes what `out` takes of the notes owed; true when none is left.
    fn pay(&mut self, out: BorrowedFd<'_>) -> bool {
        if !self.owed.is_empty() {
            let n = write_now(out, &self.owed);
            self.owed.drain(..n);
        }
        self.owed.is_empty()
    }
}

/// Writes what `out` takes without blocking (one write, only when poll says
/// it is writable); returns the bytes written.
fn write_now(out: BorrowedFd<'_>, bytes: &[u8]) -> usize {
    let mut pfd = libc::pollfd {
        fd: out.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: polls one valid pollfd without waiting.
    if unsafe { libc::poll(&mut pfd, 1, 0) } != 1 || pfd.revents & libc::POLLOUT == 0 {
        return 0;
    }
    // SAFETY: writes from a valid buffer of the given length.
    let n = unsafe { libc::write(out.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
    usize::try_from(n).unwrap_or(0)
}

/// A copy of `fd` numbered 10 or above, close-on-exec.
fn above_stdio(fd: &OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: duplicates an fd we own; the new one is owned by nothing else.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_replaced() {
        assert_eq!(
            sanitize(b"rng0: ok\tfine\n\x1b[2J\x07\x7f"),
            "rng0: ok\tfine\n?[2J??"
        );
        // C1 controls, as UTF-8, and bytes that are not UTF-8.
        assert_eq!(sanitize("a\u{9b}31m".as_bytes()), "a?31m");
        assert_eq!(sanitize(b"\xff\n"), "\u{fffd}\n");
    }

    #[test]
    fn a_bucket_allows_a_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10, 4, t0);
        assert!(b.take(10, t0));
        assert!(!b.take(1, t0));
        assert!(!b.take(1, t0 + Duration::from_millis(200)));
        assert!(b.take(1, t0 + Duration::from_millis(250)));
        assert!(b.take(4, t0 + Duration::from_millis(1250)));
        assert!(!b.take(1, t0 + Duration::from_millis(1250)));
        // Never more than the capacity, however long the pause.
        let later = t0 + Duration::from_secs(3600);
        assert!(!b.take(11, later));
        assert!(b.take(10, later));
        let mut empty = Bucket::empty_until(10, 4, later + Duration::from_secs(60));
        assert!(!empty.take(1, later));
    }

    /// A pipe standing in for skvm's stderr.
    fn out_pipe() -> (OwnedFd, OwnedFd) {
        sandbox::process::pipe().unwrap()
    }

    fn read_all(fd: &OwnedFd) -> String {
        // SAFETY: fcntl on an fd we own.
        unsafe {
            let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            // SAFETY: reads into a buffer of the given size.
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            let Ok(n) = usize::try_from(n) else { break };
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(out).unwrap()
    }

    /// Fills an output pipe: non-blocking writes until it refuses.
    fn fill(out_wr: &OwnedFd) {
        // SAFETY: fcntl on an fd we own.
        unsafe {
            let fl = libc::fcntl(out_wr.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(out_wr.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        let junk = [b'j'; 4096];
        // SAFETY: writes from a valid buffer until the pipe is full.
        while unsafe { libc::write(out_wr.as_raw_fd(), junk.as_ptr().cast(), junk.len()) } > 0 {}
    }

    fn log_write(log: &DeviceLog, bytes: &[u8]) {
        // SAFETY: writes from a valid buffer.
        let n =
            unsafe { libc::write(log.writer().as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        assert_eq!(usize::try_from(n).unwrap(), bytes.len());
    }

    #[test]
    fn a_flood_is_cut_at_the_budget_and_the_loss_reported() {
        let t0 = Instant::now();
        let mut log = DeviceLog::new(t0).unwrap();
        let (out_rd, out_wr) = out_pipe();
        let line = [b'x'; CHUNK];
        let mut copied = 0;
        // Twice the burst, at one instant: half of it goes through.
        for _ in 0..(2 * LOG_BURST as usize / CHUNK) {
            log_write(&log, &line);
            assert_eq!(log.copy(out_wr.as_fd(), t0), CHUNK);
            copied += read_all(&out_rd).len();
        }
        let note = "\nskvm: device log: more than 64 KiB at once or 16 KiB a second: dropping \
                    what follows until it slows down\n";
        assert_eq!(copied, LOG_BURST as usize + note.len());
        // A second later the budget has room again: the loss is reported
        // before the next line.
        log_write(&log, b"rng0: after\x1b[0m\n");
        log.copy(out_wr.as_fd(), t0 + Duration::from_secs(1));
        let text = read_all(&out_rd);
        assert_eq!(
            text,
            format!("skvm: device log: {LOG_BURST} bytes were dropped\nrng0: after?[0m\n")
        );
        // One chunk per call, however much is waiting.
        log_write(&log, &line);
        log_write(&log, &line);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(log.copy(out_wr.as_fd(), later), CHUNK);
        assert_eq!(log.copy(out_wr.as_fd(), later), CHUNK);
        assert_eq!(log.copy(out_wr.as_fd(), later), 0);
    }

    #[test]
    fn an_output_that_cannot_take_more_is_not_waited_for() {
        let t0 = Instant::now();
        let mut log = DeviceLog::new(t0).unwrap();
        let (_out_rd, out_wr) = out_pipe();
        fill(&out_wr);
        log_write(&log, b"rng0: hello\n");
        // Returns at once with the line read and dropped.
        assert_eq!(log.copy(out_wr.as_fd(), t0), 12);
        assert_eq!(log.dropped, 12);
    }

    #[test]
    fn the_flood_note_waits_for_a_full_output_and_follows_earlier_losses() {
        let t0 = Instant::now();
        let mut log = DeviceLog::new(t0).unwrap();
        let (out_rd, out_wr) = out_pipe();
        fill(&out_wr);
        // The whole burst arrives while the output is full: all of it lost,
        // then the budget runs out.
        let line = [b'x'; CHUNK];
        for _ in 0..=(LOG_BURST as usize / CHUNK) {
            log_write(&log, &line);
            assert_eq!(log.copy(out_wr.as_fd(), t0), CHUNK);
        }
        assert!(!log.owed.is_empty(), "the note is held back");
        // Once the output is read, the notes go out before anything else:
        // the first loss, then the flood.
        let before = read_all(&out_rd);
        assert!(!before.contains("skvm:"), "nothing fitted");
        log_write(&log, &line);
        assert_eq!(log.copy(out_wr.as_fd(), t0), CHUNK);
        let text = read_all(&out_rd);
        assert!(
            text.starts_with("skvm: device log: 4096 bytes were dropped\n\nskvm: device log: more than 64 KiB at once"),
            "{text}"
        );
        assert!(!text.contains('x'), "still over the budget: {text}");
    }
}
