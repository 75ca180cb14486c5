//! virtio-console (`--console`): hvc0 in the guest, over a pty, a file or
//! a unix socket that the VMM opens; the device process gets those fds and
//! nothing else. Its model is `devices::console`.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::Context;
use devices::console::ConsoleBackend;
use devices::virtio::{VirtioDevice, DEVICE_ID_CONSOLE};
use ipc::params::{Decoder, Encoder};
use sandbox::seccomp::{Arg, Syscall};

use super::{
    take_fds, Confinement, DeviceConfig, DeviceKind, KindError, KindOption, OpenContext, Opened,
};
use crate::console::backend::{backend_status, open_pty, SerialSpec};
use crate::log;
use crate::virtio_pci::PciClass;

const NAME: &str = "console";
/// Version of its parameters: which backend its fds are.
const PARAMS_V1: u8 = 1;

/// The backends, as its parameters name them.
const PTY: u8 = 0;
const FILE: u8 = 1;
const SOCKET: u8 = 2;
const STDIO: u8 = 3;

/// accept4's flags, the only ones the filter lets through.
const ACCEPT_FLAGS: u64 = (libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) as u64;

/// virtio-console's own needs: clients on the listening socket it was
/// given. Reading and writing its pty, file or client are the worker's
/// read and write.
const SYSCALLS: &[Syscall] = &[Syscall {
    nr: libc::SYS_accept4,
    name: "accept4",
    why: "take a client on the console's listening socket (non-blocking, close-on-exec only)",
    rules: &[&[Arg::Eq(3, ACCEPT_FLAGS)]],
}];

/// The virtio-console kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct Console;

/// One `--console`: where hvc0 goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ConsoleSpec {
    Stdio,
    Pty,
    File(PathBuf),
    Socket(PathBuf),
}

impl ConsoleSpec {
    /// `--console VALUE`; `None` for `off`.
    fn parse(value: &str) -> Result<Option<Self>, KindError> {
        let bad = |why: String| KindError::Option(format!("--console {why}"));
        match value.parse::<SerialSpec>().map_err(bad)? {
            SerialSpec::Stdio => Ok(Some(Self::Stdio)),
            SerialSpec::Pty => Ok(Some(Self::Pty)),
            SerialSpec::File(p) => Ok(Some(Self::File(p))),
            SerialSpec::Socket(p) => Ok(Some(Self::Socket(p))),
            SerialSpec::Off => Ok(None),
        }
    }
}

impl DeviceConfig for ConsoleSpec {
    fn socket(&self) -> Option<&Path> {
        match self {
            Self::Socket(p) => Some(p),
            _ => None,
        }
    }

    fn open(&self, ctx: &mut OpenContext<'_>) -> anyhow::Result<Opened> {
        let name = ctx.device;
        let mut terminal = None;
        let (backend, fds, status, file_size) = match self {
            Self::Stdio => {
                let what = || format!("device {name}: --console stdio");
                let (input, sink) = pipe().with_context(what)?;
                let output = std::io::stdout()
                    .as_fd()
                    .try_clone_to_owned()
                    .with_context(what)?;
                terminal = Some(sink);
                let status = backend_status("stdio", None, None);
                // skvm's output may be a file, which grows without a limit.
                (STDIO, vec![input, output], status, libc::RLIM_INFINITY)
            }
            Self::Pty => {
                let (master, slave, path) =
                    open_pty().with_context(|| format!("device {name}: --console pty"))?;
                log::info(&format!("device {name}: hvc0 on {}", path.display()));
                let status = backend_status("pty", Some(&path), None);
                (PTY, vec![master.into(), slave.into()], status, 0)
            }
            Self::File(path) => {
                let f = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(path)
                    .with_context(|| format!("device {name}: --console file={}", path.display()))?;
                let status = backend_status("file", Some(path), None);
                // Appends without a size limit, as the 8250's file does.
                (FILE, vec![f.into()], status, libc::RLIM_INFINITY)
            }
            Self::Socket(path) => {
                let socket = ctx
                    .socket
                    .take()
                    .with_context(|| format!("device {name}: its socket was not bound"))?;
                let listener = socket.listener().try_clone().with_context(|| {
                    format!("device {name}: --console socket={}", path.display())
                })?;
                let status = backend_status("socket", Some(path), None);
                (SOCKET, vec![listener.into()], status, 0)
            }
        };
        Ok(Opened {
            params: encode(backend),
            fds,
            file_size,
            root: ipc::Root::Empty,
            status: Some(status),
            terminal,
        })
    }
}

/// A pipe whose ends are both non-blocking and close-on-exec: (read,
/// write).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both are new fds this function owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The wire form of a console's parameters.
fn encode(backend: u8) -> Vec<u8> {
    Encoder::new(PARAMS_V1).u8(backend).finish()
}

/// The parameters of a console over a pty's master and slave (`skvm
/// drive` gives it a socket pair's end and a spare fd).
pub fn pty_params() -> Vec<u8> {
    encode(PTY)
}

/// The backend of what [`encode`] made; total over any input.
fn decode(b: &[u8]) -> Result<u8, ipc::IpcError> {
    let mut d = Decoder::new(b, PARAMS_V1)?;
    let backend = d.u8()?;
    d.end()?;
    Ok(backend)
}

impl DeviceKind for Console {
    fn name(&self) -> &str {
        NAME
    }

    fn virtio_id(&self) -> u32 {
        DEVICE_ID_CONSOLE
    }

    fn pci_class(&self) -> PciClass {
        // Simple communication controller, other.
        [0x07, 0x80, 0x00]
    }

    fn option(&self) -> Option<KindOption> {
        Some(KindOption {
            long: "console",
            value_name: Some("stdio|pty|socket=PATH|file=PATH|off"),
            repeatable: true,
            help: "Add a virtio-console device: hvc0 in the guest (usable as console=hvc0), \
                   then hvc1, ...; named console0, console1, .... `stdio`: skvm's terminal \
                   (with --serial other than stdio; Ctrl-A x still quits); `pty`: a new \
                   pseudo-terminal, whose path skvm prints; `socket=PATH`: a unix socket \
                   (mode 0600) that takes one client at a time, who first gets the last 64 KiB \
                   of output; `file=PATH`: output appended, no input. The device process holds \
                   only that terminal, pty, file or socket",
        })
    }

    fn parse(&self, value: Option<&str>) -> Result<Option<Box<dyn DeviceConfig>>, KindError> {
        Ok(ConsoleSpec::parse(value.unwrap_or_default())?
            .map(|s| Box::new(s) as Box<dyn DeviceConfig>))
    }

    fn model(&self, params: &[u8], fds: Vec<OwnedFd>) -> Result<Box<dyn VirtioDevice>, KindError> {
        let backend = match decode(params).map_err(KindError::params(NAME))? {
            PTY => {
                let [master, slave] = take_fds::<2>(NAME, fds)?;
                ConsoleBackend::Pty { master, slave }
            }
            STDIO => {
                let [input, output] = take_fds::<2>(NAME, fds)?;
                ConsoleBackend::Stdio { input, output }
            }
            FILE => {
                let [file] = take_fds::<1>(NAME, fds)?;
                ConsoleBackend::File(file)
            }
            SOCKET => {
                let [listener] = take_fds::<1>(NAME, fds)?;
                ConsoleBackend::Socket {
                    listener,
                    client: None,
                    history: Default::default(),
                }
            }
            other => {
                return Err(KindError::Option(format!(
                    "console backend {other} is none of pty, file or socket"
                )))
            }
        };
        Ok(Box::new(devices::console::Console::new(backend)))
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

    #[test]
    fn values_parse_and_bad_ones_name_the_option() {
        assert_eq!(ConsoleSpec::parse("pty").unwrap(), Some(ConsoleSpec::Pty));
        assert_eq!(
            ConsoleSpec::parse("stdio").unwrap(),
            Some(ConsoleSpec::Stdio)
        );
        assert_eq!(ConsoleSpec::parse("off").unwrap(), None);
        assert_eq!(
            ConsoleSpec::parse("socket=/run/c.sock").unwrap(),
            Some(ConsoleSpec::Socket("/run/c.sock".into()))
        );
        let e = ConsoleSpec::parse("tty").unwrap_err().to_string();
        assert!(e.starts_with("--console 'tty'"), "{e}");
    }

    #[test]
    fn parameters_round_trip_and_malformed_ones_are_refused() {
        assert_eq!(decode(&encode(SOCKET)).unwrap(), SOCKET);
        assert!(decode(&[]).is_err());
        assert!(decode(&[PARAMS_V1]).is_err());
        assert!(decode(&[PARAMS_V1, PTY, 0]).is_err());
        let e = Console
            .model(&encode(7), Vec::new())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("backend 7"), "{e}");
        let e = Console
            .model(&encode(PTY), Vec::new())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("needs 2 backend fds, got 0"), "{e}");
    }
}
