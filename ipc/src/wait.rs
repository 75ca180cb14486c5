//! Waiting for fds: the one event-wait shape of skvm's loops, over poll(2).
//!
//! A [`WaitSet`] holds fds, each registered with a token the caller chooses
//! (a small `Copy` value, typically an enum of what can wake the loop), and
//! waits until one of them is readable, hung up or in error, or until a
//! timeout. The ready fds come back as [`Event`]s carrying their tokens, so
//! a loop matches on what woke it rather than on positions in an array.
//! [`wait_one`] is the one-fd case, for waits with a timeout.
//!
//! The only system call is poll(2): the device processes' seccomp policies
//! allow `poll` and nothing like epoll, ppoll or select.
//!
//! What the wait does not decide for its caller:
//! - A signal ends a wait with an error of kind
//!   [`io::ErrorKind::Interrupted`] (poll(2) is never restarted). Retrying,
//!   and with how much of the timeout, is the caller's choice: the VMM's
//!   main loop goes back to its exit checks, a wait for a peer retries with
//!   what is left of its deadline.
//! - A negative fd can be registered (with [`WaitSet::add_raw`]): poll(2)
//!   skips it and it never becomes ready, so a loop can keep a slot for an
//!   fd it does not want to read just now. Leaving the fd out does the same.
//!
//! Allocation: a set's vectors grow in `add` and are kept by
//! [`WaitSet::clear`], so a loop that refills one set each turn allocates
//! only when the set outgrows its capacity; [`WaitSet::wait`] never
//! allocates, and [`wait_one`] keeps its one entry on the stack.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Duration;

/// Fds to wait for, each with its caller's token.
#[derive(Debug)]
pub struct WaitSet<T> {
    /// What poll(2) reads and writes, in registration order.
    fds: Vec<libc::pollfd>,
    /// `tokens[i]` is the token of `fds[i]`.
    tokens: Vec<T>,
}

/// One ready fd of a wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event<T> {
    /// The token the fd was registered with.
    pub token: T,
    /// There is data to read (`POLLIN`).
    pub readable: bool,
    /// The peer hung up (`POLLHUP`): a read returns what is left, then
    /// end of file.
    pub hungup: bool,
    /// The fd is in error (`POLLERR`) or not open (`POLLNVAL`).
    pub error: bool,
}

/// The outcome of a [`WaitSet::wait`] that was not interrupted: the ready
/// fds, or none when the timeout passed.
#[derive(Debug)]
pub struct Ready<'a, T> {
    fds: &'a [libc::pollfd],
    tokens: &'a [T],
    count: usize,
}

impl<T> Default for WaitSet<T> {
    fn default() -> Self {
        Self {
            fds: Vec::new(),
            tokens: Vec::new(),
        }
    }
}

impl<T: Copy> WaitSet<T> {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty set with room for `n` fds before it allocates again.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            fds: Vec::with_capacity(n),
            tokens: Vec::with_capacity(n),
        }
    }

    /// Waits for `fd` to be readable, reporting it as `token`.
    ///
    /// The set keeps the fd's number only: the caller keeps the fd open
    /// until the wait (a closed one is reported as an error).
    pub fn add(&mut self, fd: impl AsFd, token: T) {
        self.add_raw(fd.as_fd().as_raw_fd(), token);
    }

    /// Waits for the fd numbered `fd` to be readable, reporting it as
    /// `token`; a negative `fd` is skipped by the wait and never ready.
    pub fn add_raw(&mut self, fd: RawFd, token: T) {
        self.fds.push(pollfd(fd));
        self.tokens.push(token);
    }

    /// Waits for the fd numbered `fd` to have room to write (`POLLOUT`),
    /// reporting it as `token` (ready also when it hung up or failed).
    pub fn add_raw_writable(&mut self, fd: RawFd, token: T) {
        let mut p = pollfd(fd);
        p.events = libc::POLLOUT;
        self.fds.push(p);
        self.tokens.push(token);
    }

    /// Whether no fd is registered.
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// Forgets every fd, keeping the room they took.
    pub fn clear(&mut self) {
        self.fds.clear();
        self.tokens.clear();
    }

    /// Waits until an fd of the set is ready or `timeout` has passed
    /// (`None` waits without a limit). A signal ends the wait with an
    /// [`io::ErrorKind::Interrupted`] error.
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<Ready<'_, T>> {
        let count = poll(&mut self.fds, timeout)?;
        Ok(Ready {
            fds: &self.fds,
            tokens: &self.tokens,
            count,
        })
    }
}

impl<'a, T: Copy> Ready<'a, T> {
    /// Whether no fd is ready: the timeout passed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// How many fds are ready.
    pub fn len(&self) -> usize {
        self.count
    }

    /// The ready fds, in registration order.
    pub fn iter(&self) -> impl Iterator<Item = Event<T>> + 'a {
        self.fds
            .iter()
            .zip(self.tokens)
            .filter(|(p, _)| p.revents != 0)
            .map(|(p, &token)| Event::new(token, p.revents))
    }

    /// Whether an fd registered with `token` is ready, in any way
    /// (readable, hung up or in error).
    pub fn contains(&self, token: T) -> bool
    where
        T: PartialEq,
    {
        self.iter().any(|e| e.token == token)
    }
}

impl<T> Event<T> {
    fn new(token: T, revents: libc::c_short) -> Self {
        Self {
            token,
            readable: revents & libc::POLLIN != 0,
            hungup: revents & libc::POLLHUP != 0,
            error: revents & (libc::POLLERR | libc::POLLNVAL) != 0,
        }
    }
}

/// Waits until the fd numbered `fd` is ready (readable, hung up or in
/// error) or `timeout` has passed (`None` waits without a limit); `None`
/// means it timed out. The same wait as a one-fd [`WaitSet`] with
/// [`WaitSet::add_raw`], without its allocation. A signal ends the wait with
/// an [`io::ErrorKind::Interrupted`] error.
pub fn wait_one(fd: RawFd, timeout: Option<Duration>) -> io::Result<Option<Event<()>>> {
    let mut fds = [pollfd(fd)];
    let count = poll(&mut fds, timeout)?;
    let [p] = fds;
    Ok((count > 0).then(|| Event::new((), p.revents)))
}

/// A poll(2) entry asking whether `fd` is readable.
fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// poll(2) in milliseconds: -1 for no limit, otherwise rounded up so that
/// a wait shorter than a millisecond does not become a spin.
fn timeout_ms(timeout: Option<Duration>) -> libc::c_int {
    match timeout {
        None => -1,
        Some(t) => libc::c_int::try_from(t.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX),
    }
}

/// One poll(2) call over `fds`; returns how many are ready.
fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let n = libc::nfds_t::try_from(fds.len())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `fds` is a live slice of `n` pollfd structs that we borrow
    // mutably for the call; the kernel reads them and writes only their
    // `revents`. Any fd number is acceptable to poll(2).
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), n, timeout_ms(timeout)) };
    usize::try_from(rc).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Write;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Token {
        A,
        B,
        Skipped,
    }

    fn pipe() -> (OwnedFd, File) {
        let mut p = [0; 2];
        // SAFETY: pipe2 writes two new fds into the array.
        assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both fds are new and ours.
        unsafe { (OwnedFd::from_raw_fd(p[0]), File::from_raw_fd(p[1])) }
    }

    fn eventfd() -> File {
        // SAFETY: eventfd returns a new fd or -1, checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(fd >= 0);
        // SAFETY: the fd is new and ours.
        unsafe { File::from_raw_fd(fd) }
    }

    fn ready_tokens(set: &mut WaitSet<Token>, timeout: Duration) -> Vec<Token> {
        let ready = set.wait(Some(timeout)).unwrap();
        ready.iter().map(|e| e.token).collect()
    }

    #[test]
    fn a_written_eventfd_is_readable() {
        let mut e = eventfd();
        let mut set = WaitSet::new();
        set.add(&e, Token::A);
        e.write_all(&1u64.to_ne_bytes()).unwrap();
        let ready = set.wait(Some(Duration::from_secs(1))).unwrap();
        let events: Vec<_> = ready.iter().collect();
        assert_eq!(
            events,
            [Event {
                token: Token::A,
                readable: true,
                hungup: false,
                error: false
            }]
        );
    }

    #[test]
    fn only_the_ready_fds_come_back_with_their_tokens() {
        let (ra, _wa) = pipe();
        let (rb, mut wb) = pipe();
        let mut set = WaitSet::new();
        set.add(&ra, Token::A);
        set.add(&rb, Token::B);
        wb.write_all(b"x").unwrap();
        let ready = set.wait(Some(Duration::from_secs(1))).unwrap();
        assert_eq!(ready.len(), 1);
        assert!(ready.contains(Token::B));
        assert!(!ready.contains(Token::A));
    }

    #[test]
    fn fds_sharing_a_token_report_it_once_each() {
        let (ra, mut wa) = pipe();
        let (rb, mut wb) = pipe();
        let mut set = WaitSet::new();
        set.add(&ra, Token::A);
        set.add(&rb, Token::A);
        wa.write_all(b"x").unwrap();
        wb.write_all(b"x").unwrap();
        let got = ready_tokens(&mut set, Duration::from_secs(1));
        assert_eq!(got, [Token::A, Token::A]);
    }

    #[test]
    fn nothing_ready_times_out_after_the_timeout() {
        let (r, _w) = pipe();
        let mut set = WaitSet::new();
        set.add(&r, Token::A);
        let start = Instant::now();
        let ready = set.wait(Some(Duration::from_millis(100))).unwrap();
        let took = start.elapsed();
        assert!(ready.is_empty());
        assert!(
            took >= Duration::from_millis(100) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }

    #[test]
    fn a_zero_timeout_only_looks() {
        let (r, _w) = pipe();
        let mut set = WaitSet::new();
        set.add(&r, Token::A);
        let start = Instant::now();
        assert!(set.wait(Some(Duration::ZERO)).unwrap().is_empty());
        assert!(start.elapsed() < Duration::from_millis(500));
    }

    #[test]
    fn a_short_timeout_is_rounded_up_not_down() {
        assert_eq!(timeout_ms(Some(Duration::from_micros(1))), 1);
        assert_eq!(timeout_ms(Some(Duration::from_millis(250))), 250);
        assert_eq!(timeout_ms(Some(Duration::ZERO)), 0);
        assert_eq!(timeout_ms(None), -1);
        assert_eq!(timeout_ms(Some(Duration::MAX)), libc::c_int::MAX);
    }

    #[test]
    fn a_closed_writer_is_a_hangup_not_data() {
        let (r, w) = pipe();
        drop(w);
        let mut set = WaitSet::new();
        set.add(&r, Token::A);
        let ready = set.wait(Some(Duration::from_secs(1))).unwrap();
        let e = ready.iter().next().unwrap();
        assert_eq!(e.token, Token::A);
        assert!(e.hungup);
        assert!(!e.readable);
        assert!(!e.error);
    }

    #[test]
    fn data_left_after_a_hangup_is_readable_too() {
        let (r, mut w) = pipe();
        w.write_all(b"x").unwrap();
        drop(w);
        let e = wait_one(r.as_raw_fd(), Some(Duration::from_secs(1)))
            .unwrap()
            .unwrap();
        assert!(e.readable && e.hungup);
    }

    #[test]
    fn an_fd_that_is_not_open_is_an_error() {
        // Far above any fd this process opens.
        let mut set = WaitSet::new();
        set.add_raw(1 << 20, Token::A);
        let ready = set.wait(Some(Duration::from_secs(1))).unwrap();
        let e = ready.iter().next().unwrap();
        assert!(e.error && !e.readable);
    }

    #[test]
    fn a_negative_fd_is_skipped() {
        let (r, mut w) = pipe();
        let mut set = WaitSet::new();
        set.add_raw(-1, Token::Skipped);
        assert!(set
            .wait(Some(Duration::from_millis(10)))
            .unwrap()
            .is_empty());
        set.add(&r, Token::A);
        w.write_all(b"x").unwrap();
        let got = ready_tokens(&mut set, Duration::from_secs(1));
        assert_eq!(got, [Token::A]);
    }

    #[test]
    fn a_cleared_set_forgets_its_fds() {
        let (ra, mut wa) = pipe();
        let (rb, mut wb) = pipe();
        let mut set = WaitSet::with_capacity(1);
        set.add(&ra, Token::A);
        wa.write_all(b"x").unwrap();
        wb.write_all(b"x").unwrap();
        assert_eq!(ready_tokens(&mut set, Duration::ZERO), [Token::A]);
        set.clear();
        set.add(&rb, Token::B);
        assert_eq!(ready_tokens(&mut set, Duration::ZERO), [Token::B]);
    }

    #[test]
    fn wait_one_reports_readiness_and_timeouts() {
        let (r, mut w) = pipe();
        assert!(wait_one(r.as_raw_fd(), Some(Duration::from_millis(10)))
            .unwrap()
            .is_none());
        w.write_all(b"x").unwrap();
        let e = wait_one(r.as_raw_fd(), None).unwrap().unwrap();
        assert!(e.readable && !e.hungup && !e.error);
    }

    extern "C" fn ignore(_: libc::c_int) {}

    #[test]
    fn a_signal_ends_the_wait_as_interrupted() {
        // SAFETY: sigaction is plain data; zeroed is an empty mask and no
        // flags (in particular no SA_RESTART, which poll ignores anyway).
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = ignore as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: installs a handler that does nothing for SIGUSR2, which
        // no other test of this crate uses.
        let rc = unsafe { libc::sigaction(libc::SIGUSR2, &act, std::ptr::null_mut()) };
        assert_eq!(rc, 0);
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        let done = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&done);
        // Signals until the wait has ended: one sent before the wait began
        // would be lost.
        let killer = std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                // SAFETY: `me` is the test's thread, alive until it has set
                // `done` and joined this one.
                unsafe { libc::pthread_kill(me, libc::SIGUSR2) };
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        let (r, _w) = pipe();
        let mut set = WaitSet::new();
        set.add(&r, Token::A);
        let got = set.wait(Some(Duration::from_secs(10))).map(|r| r.len());
        done.store(true, Ordering::SeqCst);
        killer.join().unwrap();
        assert_eq!(got.unwrap_err().kind(), io::ErrorKind::Interrupted);
    }
}
