//! virtio-vsock (`--vsock cid=N,socket=PATH`): stream sockets between the
//! guest and host programs, over unix sockets. Its model is
//! `devices::vsock`.
//!
//! The device process holds the listening socket at PATH (host programs
//! connect there and write `CONNECT <port>\n`) and its end of the
//! connector's channel: guest connections to the host (CID 2, port P)
//! reach `PATH_P` through the connector ([`connector`]), a process forked
//! before the VMM confines itself that can connect to nothing else. The
//! device's allowlist has no socket-creating call.

pub mod connector;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use anyhow::Context;
use devices::virtio::VirtioDevice;
use devices::vsock::{VsockBackend, DEVICE_ID_VSOCK};
use ipc::params::{Decoder, Encoder};
use sandbox::seccomp::{Arg, Syscall};

use super::{
    take_fds, Confinement, DeviceConfig, DeviceKind, KindError, KindOption, OpenContext, Opened,
};
use crate::console::backend::backend_status;
use crate::virtio_pci::PciClass;

const NAME: &str = "vsock";
/// Version of its parameters: the guest's CID.
const PARAMS_V1: u8 = 1;
/// The first CID a guest may have (0 to 2 are the hypervisor, the local
/// loopback and the host).
pub const MIN_CID: u64 = 3;
/// The last (u32::MAX is VMADDR_CID_ANY).
pub const MAX_CID: u64 = u32::MAX as u64 - 1;

const ACCEPT_FLAGS: u64 = (libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) as u64;

/// virtio-vsock's own needs beyond the worker's (whose read, write,
/// recvmsg and poll carry the streams' data and the connector's answers).
const SYSCALLS: &[Syscall] = &[
    Syscall {
        nr: libc::SYS_accept4,
        name: "accept4",
        why: "take a host program's connection on the vsock socket (non-blocking, \
              close-on-exec only)",
        rules: &[&[Arg::Eq(3, ACCEPT_FLAGS)]],
    },
    Syscall {
        nr: libc::SYS_shutdown,
        name: "shutdown",
        why: "SHUT_WR only: pass the guest's end of a stream on to its host peer",
        rules: &[&[Arg::Eq(1, libc::SHUT_WR as u64)]],
    },
];

/// The virtio-vsock kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct Vsock;

/// One `--vsock`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct VsockSpec {
    cid: u64,
    socket: PathBuf,
}

impl VsockSpec {
    fn parse(value: &str) -> Result<Self, KindError> {
        let bad = |why: String| KindError::Option(format!("--vsock {why}"));
        let (mut cid, mut socket) = (None, None);
        for part in value.split(',') {
            match part.split_once('=') {
                Some(("cid", v)) => {
                    let n = v
                        .parse::<u64>()
                        .map_err(|_| bad(format!("cid={v}: not a number")))?;
                    if !(MIN_CID..=MAX_CID).contains(&n) {
                        return Err(bad(format!(
                            "cid={n}: a guest's CID is {MIN_CID} to {MAX_CID} \
                             (0-2 are reserved: 2 is the host)"
                        )));
                    }
                    cid = Some(n);
                }
                Some(("socket", v)) if !v.is_empty() => socket = Some(PathBuf::from(v)),
                _ => return Err(bad(format!("'{part}': expected cid=N,socket=PATH"))),
            }
        }
        let (Some(cid), Some(socket)) = (cid, socket) else {
            return Err(bad(format!("'{value}': needs both cid=N and socket=PATH")));
        };
        let shown = socket.display();
        let dir = directory(&socket);
        if !dir.is_dir() {
            return Err(bad(format!(
                "socket={shown}: directory {} does not exist",
                dir.display()
            )));
        }
        let name_len = socket.file_name().map_or(0, |n| n.len());
        if name_len == 0 || name_len > connector::MAX_NAME {
            return Err(bad(format!(
                "socket={shown}: the file name must be 1 to {} bytes \
                 (guest connections go to NAME_<port> beside it)",
                connector::MAX_NAME
            )));
        }
        Ok(Self { cid, socket })
    }
}

/// The directory a socket path is in.
fn directory(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

impl DeviceConfig for VsockSpec {
    fn socket(&self) -> Option<&Path> {
        Some(&self.socket)
    }

    fn open(&self, ctx: &mut OpenContext<'_>) -> anyhow::Result<Opened> {
        let name = ctx.device;
        let shown = self.socket.display();
        let socket = ctx
            .socket
            .take()
            .with_context(|| format!("device {name}: its socket was not bound"))?;
        let listener = socket
            .listener()
            .try_clone()
            .with_context(|| format!("device {name}: --vsock socket={shown}"))?;
        let file_name = self.socket.file_name().unwrap_or_default();
        let connector = connector::start(
            ctx.single,
            directory(&self.socket),
            file_name,
            ctx.helper_seccomp,
        )
        .with_context(|| format!("device {name}: --vsock socket={shown}"))?;
        crate::log::info(&format!(
            "device {name}: guest CID {}; host programs connect to {shown}, guest connections \
             to the host reach {shown}_<port>",
            self.cid
        ));
        Ok(Opened {
            params: params(self.cid),
            fds: vec![listener.into(), connector],
            status: Some(backend_status("socket", Some(&self.socket), None)),
            ..Opened::default()
        })
    }
}

/// The parameters of a vsock device for guest CID `cid`.
pub fn params(cid: u64) -> Vec<u8> {
    Encoder::new(PARAMS_V1).u64(cid).finish()
}

/// The CID of what [`params`] made; total over any input.
fn decode(b: &[u8]) -> Result<u64, ipc::IpcError> {
    let mut d = Decoder::new(b, PARAMS_V1)?;
    let cid = d.u64()?;
    d.end()?;
    Ok(cid)
}

impl DeviceKind for Vsock {
    fn name(&self) -> &str {
        NAME
    }

    fn virtio_id(&self) -> u32 {
        DEVICE_ID_VSOCK
    }

    fn pci_class(&self) -> PciClass {
        // Simple communication controller, other.
        [0x07, 0x80, 0x00]
    }

    fn option(&self) -> Option<KindOption> {
        Some(KindOption {
            long: "vsock",
            value_name: Some("cid=N,socket=PATH"),
            repeatable: false,
            help: "Add a virtio-vsock device (vsock0): stream sockets between the guest (CID N, \
                   3 or more) and host programs. A host program connects to the unix socket \
                   PATH (mode 0600) and writes `CONNECT <port>\\n`; skvm answers \
                   `OK <host port>\\n` once a guest listener on that port accepts. A guest \
                   connection to CID 2, port P, reaches a unix socket listening at PATH_P. \
                   The device process holds only PATH's socket; connections to PATH_P are \
                   made by a connector process confined to that directory",
        })
    }

    fn parse(&self, value: Option<&str>) -> Result<Option<Box<dyn DeviceConfig>>, KindError> {
        let spec = VsockSpec::parse(value.unwrap_or_default())?;
        Ok(Some(Box::new(spec)))
    }

    fn model(&self, params: &[u8], fds: Vec<OwnedFd>) -> Result<Box<dyn VirtioDevice>, KindError> {
        let guest_cid = decode(params).map_err(KindError::params(NAME))?;
        if !(MIN_CID..=MAX_CID).contains(&guest_cid) {
            return Err(KindError::Option(format!(
                "vsock guest CID {guest_cid} is outside {MIN_CID}..={MAX_CID}"
            )));
        }
        let [listener, connector] = take_fds::<2>(NAME, fds)?;
        Ok(Box::new(devices::vsock::Vsock::new(VsockBackend {
            guest_cid,
            listener,
            connector,
        })))
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
    fn values_parse_and_bad_ones_say_what_is_wrong() {
        let dir = std::env::temp_dir();
        let path = dir.join("v.sock");
        let ok = VsockSpec::parse(&format!("cid=3,socket={}", path.display())).unwrap();
        assert_eq!(ok.cid, 3);
        assert_eq!(ok.socket, path);
        for (value, says) in [
            ("cid=2,socket=/tmp/v.sock", "cid=2: a guest's CID is 3"),
            ("cid=x,socket=/tmp/v.sock", "cid=x: not a number"),
            ("cid=4294967295,socket=/tmp/v.sock", "4294967295"),
            ("cid=3", "needs both"),
            (
                "cid=3,socket=/no/such/dir/v.sock",
                "directory /no/such/dir does not exist",
            ),
            ("cid=3,socket=/tmp/v.sock,mode=x", "'mode=x'"),
        ] {
            let e = VsockSpec::parse(value).unwrap_err().to_string();
            assert!(e.starts_with("--vsock "), "{e}");
            assert!(e.contains(says), "{value}: {e}");
        }
    }

    #[test]
    fn parameters_round_trip_and_malformed_ones_are_refused() {
        assert_eq!(decode(&params(7)).unwrap(), 7);
        assert!(decode(&[PARAMS_V1]).is_err());
        let e = Vsock
            .model(&params(2), Vec::new())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("CID 2"), "{e}");
        let e = Vsock
            .model(&params(3), Vec::new())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("needs 2 backend fds, got 0"), "{e}");
    }
}
