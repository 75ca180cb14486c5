//! Escape kinds: `escrng`, `escblk`, `escnet`, `escconsole`, `escvsock`,
//! `escfs` get exactly the confinement of rng, blk, net, console, vsock and
//! fs (their [`Confinement`]: seccomp policy, rlimits; namespaces and a
//! root of their own as every device) around the escape model
//! of [`crate::device`]. With `SKVM_ESCAPE_DEVICE=ACTIONS` they also take
//! the real kind's option (`--rng`, `--disk`) and backend, and request the
//! actions once the guest's driver has activated them, on the vCPU thread
//! that activated them, from a wrapper around the real device handle: the
//! transport knows nothing of it. An action written NAME:ACTION is
//! requested of device NAME only (`escblk1:grow-image`).

use std::os::fd::OwnedFd;
use std::sync::Arc;

use devices::virtio::{VirtioDevice, DEVICE_ID_RNG};
use vmm::kinds::{Confinement, DeviceConfig, DeviceKind, KindError, KindOption};
use vmm::remote::{Hosted, RemoteDevice};
use vmm::virtio_pci::{Backend, BackendError, DeviceDescription, DeviceEvents, QueueLayout};

use crate::device::{Escape, Image, ACTIONS};

/// A kind confined as `real`, serving the escape model.
pub struct EscapeKind {
    name: String,
    real: Arc<dyn DeviceKind>,
    /// The actions a guest's activation sets off (`SKVM_ESCAPE_DEVICE`);
    /// `None`: the kind has no option and is only started by name.
    actions: Option<Vec<String>>,
}

impl EscapeKind {
    /// `esc` + `real`'s name; with `actions`, it takes `real`'s option.
    pub fn new(real: Arc<dyn DeviceKind>, actions: Option<Vec<String>>) -> Self {
        Self {
            name: format!("esc{}", real.name()),
            real,
            actions,
        }
    }
}

impl DeviceKind for EscapeKind {
    fn name(&self) -> &str {
        &self.name
    }

    /// The escape model is an rng-typed device with one queue.
    fn virtio_id(&self) -> u32 {
        DEVICE_ID_RNG
    }

    fn option(&self) -> Option<KindOption> {
        self.actions.as_ref().and(self.real.option())
    }

    fn parse(&self, value: Option<&str>) -> Result<Option<Box<dyn DeviceConfig>>, KindError> {
        self.real.parse(value)
    }

    /// The escape model, whatever the backend; a disk's image (escblk
    /// with `--disk`) is kept for "grow-image", a share's root (escfs) for
    /// the share escapes, other fds are dropped.
    fn model(&self, params: &[u8], fds: Vec<OwnedFd>) -> Result<Box<dyn VirtioDevice>, KindError> {
        let (image, share) = match (self.real.name(), fds.into_iter().next()) {
            ("blk", Some(fd)) => {
                let p = vmm::kinds::blk::decode(params).map_err(KindError::params(&self.name))?;
                let size = p.sectors.saturating_mul(devices::block::SECTOR);
                (Some(Image { fd, size }), None)
            }
            ("fs", share) => (None, share),
            _ => (None, None),
        };
        Ok(Box::new(Escape::new(image, share)))
    }

    fn confinement(&self) -> Option<Confinement> {
        self.real.confinement()
    }

    fn host(&self, device: RemoteDevice) -> Box<dyn Hosted> {
        Box::new(Attacker {
            inner: device,
            actions: self.actions.clone().unwrap_or_default(),
            vmm: std::process::id().cast_signed(),
        })
    }
}

/// A device that, once activated, is asked to attempt its actions.
struct Attacker {
    inner: RemoteDevice,
    actions: Vec<String>,
    /// The VMM's pid, read when the device is attached: the attack runs
    /// on a vCPU thread, whose filter has no getpid.
    vmm: libc::pid_t,
}

impl Attacker {
    /// Requests every action meant for this device (a plain ACTION, or
    /// NAME:ACTION with this device's name) and logs each outcome as
    /// "escape=ACTION device=NAME outcome=...".
    fn attack(&mut self) {
        let me = self.vmm;
        let name = self.inner.name().to_owned();
        for entry in &self.actions {
            let action = match entry.split_once(':') {
                Some((device, action)) if device == name => action,
                Some(_) => continue,
                None => entry.as_str(),
            };
            let Some(index) = ACTIONS.iter().position(|a| *a == action) else {
                vmm::log::error(&format!("SKVM_ESCAPE_DEVICE: unknown action '{action}'"));
                continue;
            };
            let offset = u32::try_from(index).unwrap_or(u32::MAX);
            let outcome = match self.inner.config_write(offset, &me.to_le_bytes()) {
                Ok(()) => "escaped".to_owned(),
                Err(e) => format!("failed reason=\"{e}\""),
            };
            vmm::log::info(&format!("escape={action} device={name} outcome={outcome}"));
        }
    }
}

impl Backend for Attacker {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn description(&self) -> &DeviceDescription {
        self.inner.description()
    }

    fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), BackendError> {
        self.inner.write_config(offset, data)
    }

    fn activate(
        &mut self,
        features: u64,
        queues: &[QueueLayout],
        events: &DeviceEvents,
    ) -> Result<(), BackendError> {
        self.inner.activate(features, queues, events)?;
        self.attack();
        Ok(())
    }

    fn reset(&mut self) -> Result<(), BackendError> {
        self.inner.reset()
    }
}

impl Hosted for Attacker {
    fn remote(&self) -> &RemoteDevice {
        &self.inner
    }
    fn remote_mut(&mut self) -> &mut RemoteDevice {
        &mut self.inner
    }
}
