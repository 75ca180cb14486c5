//! The main thread once the guest runs: termination signals, the console's
//! input, device events and the control socket, until an exit reason.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use ipc::wait::WaitSet;

use crate::console::backend::{Console, ConsoleRead};
use crate::console::{TerminalInput, Typed};
use crate::ctl::Control;
use crate::device_host::DeviceHost;
use crate::exit::{ExitReason, ExitSignal};
use crate::legacy::power_button::PowerButton;
use crate::legacy::serial::PanicRecord;
use crate::legacy::LegacyDevices;
use crate::legacy::RxWatch;
use crate::log;
use crate::vcpu;

/// How long a panicked guest may take to reboot itself before skvm stops it.
const PANIC_GRACE: Duration = Duration::from_secs(5);

/// The eventfd a termination signal writes to (-1 until set).
static SIGNAL_EVENT_FD: AtomicI32 = AtomicI32::new(-1);

static SIGNAL_NUMBER: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_terminate(sig: libc::c_int) {
    SIGNAL_NUMBER.store(sig, Ordering::SeqCst);
    let fd = SIGNAL_EVENT_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; the buffer is 8 valid bytes.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

extern "C" fn on_kick(_: libc::c_int) {}

fn install_handler(sig: libc::c_int, handler: extern "C" fn(libc::c_int)) -> Result<()> {
    // SAFETY: sigaction is plain data; zeroed is a valid starting value.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = handler as usize;
    // No SA_RESTART: KVM_RUN must return EINTR when kicked.
    act.sa_flags = 0;
    // SAFETY: installs a handler that only does async-signal-safe work.
    if unsafe { libc::sigaction(sig, &act, std::ptr::null_mut()) } != 0 {
        bail!("cannot install handler for signal {sig}");
    }
    Ok(())
}

/// The termination signals and the vCPU kick signal.
pub(super) fn install_signals(exit: &ExitSignal) -> Result<()> {
    SIGNAL_EVENT_FD.store(exit.eventfd().as_raw_fd(), Ordering::SeqCst);
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        install_handler(sig, on_terminate)?;
    }
    install_handler(vcpu::kick_signal(), on_kick)
}

pub(super) fn lock_panic(
    p: &Mutex<Option<PanicRecord>>,
) -> std::sync::MutexGuard<'_, Option<PanicRecord>> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// What SIGTERM does: press the power button, then stop the VM if the guest
/// has not powered off within `timeout` (zero: stop at once).
pub(crate) struct Powerdown<'a> {
    pub button: &'a PowerButton,
    pub timeout: Duration,
}

impl Powerdown<'_> {
    /// Presses the button for a SIGTERM; the deadline, or `None` when the
    /// VM should stop now.
    fn start(&self) -> Option<Instant> {
        if self.timeout.is_zero() {
            return None;
        }
        if let Err(e) = self.button.press() {
            log::warn(&format!("SIGTERM: cannot press the power button: {e}"));
            return None;
        }
        log::info(&format!(
            "SIGTERM: power button pressed; the VM stops in {} s unless the guest powers off \
             first (SIGTERM again, SIGINT or SIGHUP stop it now)",
            self.timeout.as_secs()
        ));
        Some(Instant::now() + self.timeout)
    }
}

/// What wakes the main thread.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// The exit eventfd: an exit request or a termination signal.
    Exit,
    /// Console input, or its end.
    ConsoleIn,
    /// A client at a console socket.
    ConsoleAccept,
    /// Input on skvm's terminal, which a virtio console has.
    TerminalIn,
    /// A device event: a device process exited, or a device sent a
    /// message of its own.
    Device,
    /// A client on the control socket.
    Control,
}

/// Sets up `wake` with what the main thread waits for: the exit eventfd,
/// the console (its input if `read_input`), the device host's fds and the
/// control socket.
fn fill_wake(
    wake: &mut WaitSet<Wake>,
    exit: &ExitSignal,
    (console, read_input, terminal): (&Console, bool, Option<&TerminalInput>),
    host: &DeviceHost,
    control: Option<&Control>,
) {
    wake.clear();
    wake.add_raw(exit.eventfd().as_raw_fd(), Wake::Exit);
    if let Some(fd) = terminal.and_then(TerminalInput::poll_fd) {
        wake.add_raw(fd, Wake::TerminalIn);
    }
    for (fd, listener) in console.poll_fds(read_input) {
        let token = if listener {
            Wake::ConsoleAccept
        } else {
            Wake::ConsoleIn
        };
        wake.add_raw(fd, token);
    }
    for fd in host.poll_fds() {
        wake.add_raw(fd, Wake::Device);
    }
    if let Some(c) = control {
        wake.add_raw(c.fd(), Wake::Control);
    }
}

/// Forwards console input to the UART, serves device events and the
/// control socket, and waits for an exit reason.
pub(super) fn main_loop(
    exit: &ExitSignal,
    (legacy, console, mut terminal): (&LegacyDevices, &Console, Option<&mut TerminalInput>),
    panic: &Mutex<Option<PanicRecord>>,
    host: &mut DeviceHost,
    mut control: Option<&mut Control>,
    powerdown: &Powerdown<'_>,
) {
    let mut deadline: Option<Instant> = None;
    let mut typed = Typed::default();
    let mut rx = RxWatch::new(Instant::now());
    let mut wake = WaitSet::new();
    loop {
        if must_stop(exit, deadline, panic, powerdown) {
            return;
        }
        if !typed.pending().is_empty() {
            let n = legacy.serial_input(typed.pending());
            rx.queued(n);
            typed.consumed(n);
        }
        let unread = legacy.serial_unread();
        if rx.check(unread, Instant::now()) {
            legacy.reassert_serial_interrupt();
        }
        let forwarding = terminal.as_deref_mut().is_some_and(TerminalInput::flush);
        let read_input = typed.wants_input();
        fill_wake(
            &mut wake,
            exit,
            (console, read_input, terminal.as_deref()),
            host,
            control.as_deref(),
        );
        let timeout =
            Duration::from_millis(match (typed.pending().is_empty() && !forwarding, unread) {
                (false, _) => 5,
                (true, 0) => 250,
                (true, _) => 100,
            });
        // The wait failed, as when a signal ends it: look again (a
        // termination signal's handler has written the exit eventfd).
        let Ok(ready) = wake.wait(Some(timeout)) else {
            continue;
        };
        if ready.contains(Wake::Device) {
            if let Some(reason) = host.service() {
                exit.request(reason);
                return;
            }
        }
        if let Some(c) = control.as_deref_mut() {
            if ready.contains(Wake::Control) {
                c.serve(host, exit);
            }
        }
        if ready.contains(Wake::Exit) {
            if powering_down(exit, &mut deadline, powerdown) {
                continue;
            }
            return;
        }
        if ready.contains(Wake::ConsoleAccept) {
            console.accept();
        }
        if ready.contains(Wake::TerminalIn)
            && terminal.as_deref_mut().is_some_and(TerminalInput::read)
        {
            exit.request(ExitReason::UserQuit);
            return;
        }
        if ready.contains(Wake::ConsoleIn) && read_console(console, &mut typed) {
            exit.request(ExitReason::UserQuit);
            return;
        }
    }
}

/// Whether the main loop must stop before it waits again: an exit was
/// requested, or it is requested here because the guest did not power off
/// by `deadline` or did not reboot within [`PANIC_GRACE`] of a panic.
fn must_stop(
    exit: &ExitSignal,
    deadline: Option<Instant>,
    panic: &Mutex<Option<PanicRecord>>,
    powerdown: &Powerdown<'_>,
) -> bool {
    if exit.requested() {
        return true;
    }
    if deadline.is_some_and(|d| Instant::now() >= d) {
        exit.request(ExitReason::Fatal(format!(
            "the guest did not power off within {} s of SIGTERM",
            powerdown.timeout.as_secs()
        )));
        return true;
    }
    if let Some(p) = lock_panic(panic).as_ref() {
        if p.at.elapsed() > PANIC_GRACE {
            exit.request(ExitReason::GuestPanic(p.message.clone()));
            return true;
        }
    }
    false
}

/// The exit eventfd woke the main loop. A first SIGTERM presses the power
/// button and sets `deadline`: true, the loop goes on. Anything else (an
/// exit request, another signal, a SIGTERM with no graceful power-off)
/// leaves an exit reason requested: false, the loop stops.
fn powering_down(
    exit: &ExitSignal,
    deadline: &mut Option<Instant>,
    powerdown: &Powerdown<'_>,
) -> bool {
    if exit.requested() {
        return false;
    }
    let sig = SIGNAL_NUMBER.load(Ordering::SeqCst);
    if sig == libc::SIGTERM && deadline.is_none() {
        *deadline = powerdown.start();
        if deadline.is_some() {
            // Taken: the next termination signal wakes again.
            let _ = exit.eventfd().read();
            return true;
        }
    }
    exit.request(ExitReason::Fatal(format!("terminated by signal {sig}")));
    false
}

/// Reads what a console client sent into `typed` (or notes that it closed);
/// true if it was the quit sequence.
fn read_console(console: &Console, typed: &mut Typed) -> bool {
    let mut buf = [0u8; 256];
    match console.read(&mut buf) {
        ConsoleRead::Data(len) => typed.feed(buf.get(..len).unwrap_or_default()),
        ConsoleRead::Nothing => false,
        ConsoleRead::Closed => {
            typed.close();
            false
        }
    }
}
