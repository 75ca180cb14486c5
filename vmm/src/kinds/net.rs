//! virtio-net (`--net`): a tap the VMM opens (or creates); the device
//! process gets that one fd and no other network capability.

pub mod tap;

use std::os::fd::OwnedFd;

use devices::virtio::{VirtioDevice, DEVICE_ID_NET};
use ipc::params::{Decoder, Encoder};
use sandbox::seccomp::{Arg, Syscall};

use super::{
    take_fds, Confinement, DeviceConfig, DeviceKind, KindError, KindOption, OpenContext, Opened,
};
use crate::log;
use crate::virtio_pci::PciClass;
pub use tap::NetSpec;

const NAME: &str = "net";
/// Version of its parameters: the MAC address.
const PARAMS_V1: u8 = 1;

/// virtio-net's own needs: frames on the one tap fd it was given. It
/// cannot open, create sockets or configure interfaces.
const SYSCALLS: &[Syscall] = &[
    Syscall {
        nr: libc::SYS_writev,
        name: "writev",
        why: "transmit: a frame straight from guest memory to the tap",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_ioctl,
        name: "ioctl",
        why: "TUNSETOFFLOAD only: the offloads the driver accepts, at activation and reset",
        rules: &[&[Arg::Eq(1, devices::net::TUNSETOFFLOAD)]],
    },
];

/// The virtio-net kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct Net;

impl DeviceConfig for NetSpec {
    fn open(&self, ctx: &mut OpenContext<'_>) -> anyhow::Result<Opened> {
        let name = ctx.device;
        let tap = tap::open(self).map_err(|e| e.context(format!("device {name}")))?;
        let mac = self
            .mac
            .unwrap_or_else(|| tap::default_mac(ctx.vm_name, name));
        if tap.created {
            log::info(&format!(
                "device {name}: created tap {} (removed when skvm exits)",
                tap.name
            ));
        }
        log::debug(&format!(
            "device {name}: tap {}, MAC {}",
            tap.name,
            tap::format_mac(&mac)
        ));
        Ok(Opened {
            params: encode(mac),
            fds: vec![tap.fd],
            file_size: 0,
            root: ipc::Root::Empty,
            status: None,
            terminal: None,
        })
    }
}

/// The wire form of a card's parameters.
pub fn encode(mac: [u8; 6]) -> Vec<u8> {
    Encoder::new(PARAMS_V1).array(&mac).finish()
}

/// Decodes what [`encode`] made; total over any input.
pub fn decode(b: &[u8]) -> Result<devices::net::NetParams, ipc::IpcError> {
    let mut d = Decoder::new(b, PARAMS_V1)?;
    let mac = d.array()?;
    d.end()?;
    Ok(devices::net::NetParams { mac })
}

impl DeviceKind for Net {
    fn name(&self) -> &str {
        NAME
    }

    fn virtio_id(&self) -> u32 {
        DEVICE_ID_NET
    }

    fn pci_class(&self) -> PciClass {
        // Network controller, Ethernet.
        [0x02, 0x00, 0x00]
    }

    fn option(&self) -> Option<KindOption> {
        Some(KindOption {
            long: "net",
            value_name: Some("tap[=NAME][,mac=MAC]"),
            repeatable: true,
            help: "Add a virtio-net card over a tap device; repeat for more (net0, net1, ...; \
                   the guest's eth0, eth1, ...). `tap=NAME` attaches to an existing tap (`ip \
                   tuntap add NAME mode tap`); `tap` alone creates one named skvmtapN, brings it \
                   up and removes it when skvm exits (needs CAP_NET_ADMIN). skvm opens the tap \
                   and the device process gets only that fd. `mac=MAC`: the guest's address \
                   (default: a locally administered one derived from --name and the device)",
        })
    }

    fn parse(&self, value: Option<&str>) -> Result<Option<Box<dyn DeviceConfig>>, KindError> {
        Ok(Some(Box::new(NetSpec::parse(value.unwrap_or_default())?)))
    }

    fn model(&self, params: &[u8], fds: Vec<OwnedFd>) -> Result<Box<dyn VirtioDevice>, KindError> {
        let params = decode(params).map_err(KindError::params(NAME))?;
        let [tap] = take_fds::<1>(NAME, fds)?;
        Ok(Box::new(devices::net::Net::new(tap, params)))
    }

    fn confinement(&self) -> Option<Confinement> {
        Some(Confinement {
            syscalls: SYSCALLS,
            writes_files: false,
            open_files: super::OPEN_FILES,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_round_trip_and_malformed_ones_are_refused() {
        let mac = [2, 0, 0, 1, 2, 3];
        assert_eq!(decode(&encode(mac)).unwrap().mac, mac);
        let good = encode(mac);
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_err(), "{cut}");
        }
        let mut long = good;
        long.push(9);
        assert!(decode(&long).is_err());
    }
}
