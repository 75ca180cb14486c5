//! The ACPI power button, pressed from outside the guest (`skvm ctl SOCKET
//! powerdown`, or SIGTERM to skvm).
//!
//! A press is an edge on the Generic Event Device's interrupt
//! ([`crate::boot::acpi::POWER_BUTTON_GSI`]), raised through a KVM irqfd so
//! that the main thread needs no ioctl to press it: the DSDT's `_EVT` then
//! notifies `\_SB_.PWRB` and the guest decides what to do (systemd-logind
//! powers off; skvm's default /init runs acpid for the same).

use anyhow::{Context, Result};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use crate::boot::acpi::POWER_BUTTON_GSI;

/// The button's irqfd.
pub struct PowerButton {
    evt: EventFd,
}

impl PowerButton {
    /// Wires a new irqfd to the button's interrupt in `vm`.
    pub fn new(vm: &VmFd) -> Result<Self> {
        let evt = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
            .context("cannot create the power button's eventfd")?;
        vm.register_irqfd(&evt, POWER_BUTTON_GSI)
            .context("cannot register the power button's irqfd")?;
        Ok(Self { evt })
    }

    /// Presses the button once: one edge on its interrupt.
    pub fn press(&self) -> std::io::Result<()> {
        self.evt.write(1)
    }
}
