//! Why the VM stops, and the one place every thread reports it.
//!
//! The first reason reported wins; the main thread waits on the eventfd and
//! then stops the vCPUs.

use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off (ACPI S5).
    Poweroff,
    /// The guest asked for a reboot; skvm, like kvmtool, ends the VM.
    Reboot,
    /// The guest kernel panicked; the message is the panic line.
    GuestPanic(String),
    /// The user quit with the console escape key.
    UserQuit,
    /// A snapshot was taken without --resume: the VM stops, its state on
    /// disk.
    Snapshotted,
    /// skvm itself could not go on (vCPU error, unhandled instruction, ...).
    Fatal(String),
}

impl ExitReason {
    /// The process exit status for this reason.
    pub fn status(&self) -> i32 {
        match self {
            ExitReason::Poweroff
            | ExitReason::Reboot
            | ExitReason::UserQuit
            | ExitReason::Snapshotted => 0,
            ExitReason::GuestPanic(_) => 2,
            ExitReason::Fatal(_) => 1,
        }
    }
}

/// Shared by all threads: records the first exit reason and wakes the main
/// thread.
pub struct ExitSignal {
    reason: Mutex<Option<ExitReason>>,
    evt: EventFd,
}

impl ExitSignal {
    /// A new signal with no reason recorded.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Mutex::new(None),
            evt: EventFd::new(libc::EFD_CLOEXEC | libc::EFD_NONBLOCK)?,
        })
    }

    /// Records `reason` unless one is already recorded, and wakes the waiter.
    pub fn request(&self, reason: ExitReason) {
        let mut guard = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            *guard = Some(reason);
        }
        drop(guard);
        // A full counter already wakes the waiter; nothing else can fail here.
        let _ = self.evt.write(1);
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether a reason has been recorded.
    pub fn requested(&self) -> bool {
        self.reason().is_some()
    }

    /// The eventfd that becomes readable on the first request.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let s = ExitSignal::new().unwrap();
        s.request(ExitReason::Poweroff);
        s.request(ExitReason::Fatal("late".into()));
        assert_eq!(s.reason(), Some(ExitReason::Poweroff));
        assert_eq!(s.eventfd().read().unwrap(), 2);
    }

    #[test]
    fn panic_and_fatal_exit_non_zero() {
        assert_ne!(ExitReason::GuestPanic("x".into()).status(), 0);
        assert_ne!(ExitReason::Fatal("x".into()).status(), 0);
        assert_eq!(ExitReason::Reboot.status(), 0);
    }
}
