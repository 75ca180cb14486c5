//! virtio-blk (`--disk`): a raw image (or block device) the VMM opens and
//! locks; the device process gets that one fd.

pub mod disk;

use std::fs::File;
use std::os::fd::OwnedFd;

use devices::block::{DiskParams, ID_BYTES};
use devices::virtio::{VirtioDevice, DEVICE_ID_BLOCK};
use ipc::params::{Decoder, Encoder};
use sandbox::seccomp::{Arg, Syscall};

use super::{
    take_fds, Confinement, DeviceConfig, DeviceKind, KindError, KindOption, OpenContext, Opened,
};
use crate::virtio_pci::PciClass;
pub use disk::DiskSpec;

const NAME: &str = "blk";
/// Version of its parameters: sectors, read-only, direct, serial.
const PARAMS_V1: u8 = 1;

/// virtio-blk's own needs: I/O on the one image fd it was given. It
/// cannot open, stat or truncate anything.
const SYSCALLS: &[Syscall] = &[
    Syscall {
        nr: libc::SYS_preadv,
        name: "preadv",
        why: "guest reads, straight into guest memory",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_pwritev,
        name: "pwritev",
        why: "guest writes, straight from guest memory; zeroes",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_fdatasync,
        name: "fdatasync",
        why: "FLUSH, and every write when the driver did not take FLUSH",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_fallocate,
        name: "fallocate",
        why: "DISCARD and WRITE_ZEROES (punch hole, zero range; never grows the file)",
        rules: &[
            &[Arg::Eq(
                1,
                (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u64,
            )],
            &[Arg::Eq(
                1,
                (libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE) as u64,
            )],
        ],
    },
];

/// The virtio-blk kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct Blk;

impl DeviceConfig for DiskSpec {
    fn open(&self, _ctx: &mut OpenContext<'_>) -> anyhow::Result<Opened> {
        let disk = disk::open(self)?;
        let params = DiskParams {
            sectors: disk.sectors,
            read_only: self.read_only,
            direct: self.direct,
            serial: self.serial.clone().unwrap_or_default().into_bytes(),
        };
        Ok(Opened {
            params: encode(&params),
            fds: vec![disk.fd],
            file_size: disk.size,
            root: ipc::Root::Empty,
            status: None,
            terminal: None,
        })
    }

    fn root_params(&self, index: usize) -> Option<super::RootParams> {
        DiskSpec::root_params(self, index).map(|params| super::RootParams {
            params,
            by_initramfs: false,
        })
    }
}

/// The wire form of a disk's parameters.
pub fn encode(p: &DiskParams) -> Vec<u8> {
    let max = u8::try_from(ID_BYTES).unwrap_or(u8::MAX);
    Encoder::new(PARAMS_V1)
        .u64(p.sectors)
        .bool(p.read_only)
        .bool(p.direct)
        .bytes(&p.serial, max)
        .finish()
}

/// Decodes what [`encode`] made; total over any input.
pub fn decode(b: &[u8]) -> Result<DiskParams, ipc::IpcError> {
    let max = u8::try_from(ID_BYTES).unwrap_or(u8::MAX);
    let mut d = Decoder::new(b, PARAMS_V1)?;
    let p = DiskParams {
        sectors: d.u64()?,
        read_only: d.bool("read-only flag")?,
        direct: d.bool("direct flag")?,
        serial: d.bytes("serial length", max)?,
    };
    d.end()?;
    Ok(p)
}

impl DeviceKind for Blk {
    fn name(&self) -> &str {
        NAME
    }

    fn virtio_id(&self) -> u32 {
        DEVICE_ID_BLOCK
    }

    fn pci_class(&self) -> PciClass {
        // Mass storage, other.
        [0x01, 0x80, 0x00]
    }

    fn option(&self) -> Option<KindOption> {
        Some(KindOption {
            long: "disk",
            value_name: Some("PATH[,ro][,root][,serial=ID][,direct=on]"),
            repeatable: true,
            help: "Add a virtio-blk disk over a raw image file or block device; repeat for \
                   more (blk0, blk1, ... in order; the guest's vda, vdb, ...). skvm opens and \
                   locks the image (exclusively, shared with `ro`) and the device process gets \
                   only that fd. `ro`: the guest cannot write; `serial=ID`: up to 20 characters \
                   the guest reads as the disk's serial; `root`: boot with this disk as the \
                   root file system (root=/dev/vdX rw, or ro with `ro`; with the default \
                   kernel no initramfs is loaded, the kernel mounts it); `direct=on`: bypass the host page \
                   cache (O_DIRECT; the guest sees 4 KiB blocks). The size must be a multiple \
                   of 512 bytes",
        })
    }

    fn parse(&self, value: Option<&str>) -> Result<Option<Box<dyn DeviceConfig>>, KindError> {
        Ok(Some(Box::new(DiskSpec::parse(value.unwrap_or_default())?)))
    }

    fn model(&self, params: &[u8], fds: Vec<OwnedFd>) -> Result<Box<dyn VirtioDevice>, KindError> {
        let params = decode(params).map_err(KindError::params(NAME))?;
        let [image] = take_fds::<1>(NAME, fds)?;
        Ok(Box::new(devices::block::Block::new(
            File::from(image),
            params,
        )))
    }

    fn confinement(&self) -> Option<Confinement> {
        Some(Confinement {
            syscalls: SYSCALLS,
            writes_files: true,
            open_files: super::OPEN_FILES,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> DiskParams {
        DiskParams {
            sectors: 1 << 21,
            read_only: true,
            direct: false,
            serial: b"disk-1".to_vec(),
        }
    }

    #[test]
    fn parameters_round_trip() {
        assert_eq!(decode(&encode(&params())).unwrap(), params());
    }

    #[test]
    fn malformed_parameters_are_refused() {
        let good = encode(&params());
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_err(), "{cut}");
        }
        let mut flag = good.clone();
        flag[9] = 2;
        assert!(decode(&flag).is_err());
        let mut long_serial = good.clone();
        long_serial[11] = 21;
        assert!(decode(&long_serial).is_err());
        let mut trailing = good;
        trailing.push(0);
        assert!(decode(&trailing).is_err());
    }

    #[test]
    fn a_model_needs_exactly_its_image() {
        let e = Blk.model(&encode(&params()), Vec::new()).err().unwrap();
        assert!(e.to_string().contains("needs 1 backend fds, got 0"), "{e}");
    }
}
