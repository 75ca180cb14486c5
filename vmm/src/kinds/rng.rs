//! virtio-rng (`--rng`): entropy from the host's getrandom, no backend.

use std::os::fd::OwnedFd;

use devices::virtio::{VirtioDevice, DEVICE_ID_RNG};
use sandbox::seccomp::Syscall;

use super::{
    take_fds, Confinement, DeviceConfig, DeviceKind, KindError, KindOption, OpenContext, Opened,
};

const NAME: &str = "rng";
/// Version of its parameters (none beyond the version).
const PARAMS_V1: u8 = 1;

/// What virtio-rng needs beyond the worker's syscalls.
const SYSCALLS: &[Syscall] = &[Syscall {
    nr: libc::SYS_getrandom,
    name: "getrandom",
    why: "the entropy it serves",
    rules: &[],
}];

/// The virtio-rng kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rng;

/// One `--rng`: nothing to configure.
#[derive(Debug, Clone, Copy)]
struct RngConfig;

impl DeviceConfig for RngConfig {
    fn open(&self, _ctx: &mut OpenContext<'_>) -> anyhow::Result<Opened> {
        Ok(Opened {
            params: params(),
            fds: Vec::new(),
            file_size: 0,
            root: ipc::Root::Empty,
            status: None,
            terminal: None,
        })
    }
}

impl DeviceKind for Rng {
    fn name(&self) -> &str {
        NAME
    }

    fn virtio_id(&self) -> u32 {
        DEVICE_ID_RNG
    }

    fn option(&self) -> Option<KindOption> {
        Some(KindOption {
            long: "rng",
            value_name: None,
            repeatable: false,
            help: "Add a virtio-rng device (entropy from the host's getrandom), named rng0",
        })
    }

    fn parse(&self, _value: Option<&str>) -> Result<Option<Box<dyn DeviceConfig>>, KindError> {
        Ok(Some(Box::new(RngConfig)))
    }

    fn model(&self, params: &[u8], fds: Vec<OwnedFd>) -> Result<Box<dyn VirtioDevice>, KindError> {
        ipc::params::Decoder::new(params, PARAMS_V1)
            .and_then(ipc::params::Decoder::end)
            .map_err(KindError::params(NAME))?;
        take_fds::<0>(NAME, fds)?;
        Ok(Box::new(devices::rng::Rng::new()))
    }

    fn confinement(&self) -> Option<Confinement> {
        Some(Confinement {
            syscalls: SYSCALLS,
            writes_files: false,
            open_files: super::OPEN_FILES,
        })
    }
}

/// The parameters an rng device gets (for `skvm drive`).
pub fn params() -> Vec<u8> {
    ipc::params::Encoder::new(PARAMS_V1).finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn its_parameters_round_trip_and_anything_else_is_refused() {
        assert!(Rng.model(&params(), Vec::new()).is_ok());
        assert!(Rng.model(&[], Vec::new()).is_err());
        assert!(Rng.model(&[2], Vec::new()).is_err());
        assert!(Rng.model(&[1, 0], Vec::new()).is_err());
    }
}
