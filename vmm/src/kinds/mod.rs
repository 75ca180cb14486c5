//! Device kinds: one module per kind owns everything skvm knows about it.
//!
//! A kind ([`DeviceKind`]) holds its `skvm run` option and how it is
//! validated ([`DeviceKind::parse`] into a [`DeviceConfig`]), how its
//! backend is opened in the VMM ([`DeviceConfig::open`]: the parameters in
//! the kind's own versioned encoding and the fds the device gets), how the
//! device process builds its model from them ([`DeviceKind::model`]), its
//! confinement (seccomp allowlist beyond the worker's, rlimits; or `None`
//! for a kind that runs only in a VMM thread), and its PCI ids. Nothing
//! outside a kind's module names the kind: the [`Registry`] lists the
//! kinds, the VM attaches whatever the configuration holds, and the device
//! host looks kinds up by name when a device process starts.
//!
//! Adding a kind: a module here implementing [`DeviceKind`], and one line
//! in [`Registry::standard`].

pub mod blk;
pub mod console;
pub mod fs;
pub mod mem;
pub mod net;
pub mod rng;
pub mod vsock;

use std::fmt::Debug;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use devices::virtio::VirtioDevice;
use sandbox::seccomp::Syscall;

use crate::ctl::PrivateSocket;
use crate::device_host::spawner::SingleThreaded;
use crate::remote::{Hosted, RemoteDevice};
use crate::virtio_pci::PciClass;

/// PCI class "other" (unclassified device), for kinds without a better one.
pub const PCI_CLASS_OTHER: PciClass = [0xff, 0x00, 0x00];

/// A kind's `skvm run` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindOption {
    /// The long option, without the dashes ("disk").
    pub long: &'static str,
    /// Its value's name in the help (`None`: a flag without a value).
    pub value_name: Option<&'static str>,
    /// Whether it may be given more than once (one device each).
    pub repeatable: bool,
    /// Its help text.
    pub help: &'static str,
}

/// How a kind's device process is confined beyond what every device gets
/// (namespaces, an empty root, no capabilities, the worker's syscalls).
#[derive(Debug, Clone, Copy)]
pub struct Confinement {
    /// The syscalls its model needs beyond the worker's, each with why.
    pub syscalls: &'static [Syscall],
    /// Whether it writes a file (a disk image): its file-size limit is then
    /// the size its backend was opened with ([`Opened::file_size`]), else
    /// 0 (no file written at all).
    pub writes_files: bool,
    /// The most fds its process may hold (RLIMIT_NOFILE): [`OPEN_FILES`]
    /// for a device with a few backend fds.
    pub open_files: u64,
}

/// The fd limit of a device process that holds a few backend fds.
pub const OPEN_FILES: u64 = 64;

/// Why a device option, or a device's parameters, were refused.
#[derive(Debug, thiserror::Error)]
pub enum KindError {
    /// A command-line value that does not parse; the message names the
    /// option.
    #[error("{0}")]
    Option(String),
    /// Parameters a kind cannot decode.
    #[error("bad {kind} parameters: {source}")]
    Params {
        /// The kind.
        kind: String,
        /// What was wrong.
        #[source]
        source: ipc::IpcError,
    },
    /// The wrong number of backend fds.
    #[error("a {kind} device needs {expected} backend fds, got {got}")]
    Fds {
        /// The kind.
        kind: String,
        /// How many it needs.
        expected: usize,
        /// How many came.
        got: usize,
    },
    /// The model refused its parameters.
    #[error(transparent)]
    Model(Box<dyn std::error::Error + Send + Sync>),
}

impl KindError {
    /// Wraps a parameter decoding error of `kind`.
    pub fn params(kind: &str) -> impl FnOnce(ipc::IpcError) -> Self + '_ {
        move |source| KindError::Params {
            kind: kind.to_owned(),
            source,
        }
    }
}

/// Takes exactly `N` fds for a device of `kind`.
pub fn take_fds<const N: usize>(kind: &str, fds: Vec<OwnedFd>) -> Result<[OwnedFd; N], KindError> {
    let got = fds.len();
    fds.try_into().map_err(|_| KindError::Fds {
        kind: kind.to_owned(),
        expected: N,
        got,
    })
}

/// What a device needs from the VM while its backend is opened.
#[derive(Debug)]
pub struct OpenContext<'a> {
    /// The VM's name (default MAC addresses derive from it).
    pub vm_name: &'a str,
    /// The device's name ("blk0").
    pub device: &'a str,
    /// The first guest address past boot RAM.
    pub ram_top: u64,
    /// The memory-hotplug region a device reserved: (address, size).
    pub hotplug: Option<(u64, u64)>,
    /// The socket bound for [`DeviceConfig::socket`], for the device to
    /// take.
    pub socket: Option<PrivateSocket>,
    /// Proof that the VMM has one thread: a kind may fork a helper
    /// process (vsock's connector) while it opens its backend.
    pub single: &'a SingleThreaded,
    /// The seccomp action for such helpers' filters
    /// (`SandboxOpts::helper_filter`); `None`: no filter.
    pub helper_seccomp: Option<crate::device_host::SeccompMode>,
    /// Devices run in confined processes (process mode), which reach a
    /// share by its path as skvm's unprivileged user (`sandbox::share`).
    pub confined_processes: bool,
}

/// A backend opened in the VMM: what travels to the device with its hello.
#[derive(Debug, Default)]
pub struct Opened {
    /// The kind's parameters, in its own encoding.
    pub params: Vec<u8>,
    /// The fds the device gets (an image, a tap).
    pub fds: Vec<OwnedFd>,
    /// The size of the file the device writes (a disk's image, as opened),
    /// which becomes its file-size limit for every instance (restarts and
    /// rebuilds too); 0 for a device that writes none.
    pub file_size: u64,
    /// Where the backend is, as `skvm ctl status` shows it (a JSON object),
    /// for kinds whose backend a user looks for (a console's pty).
    pub status: Option<String>,
    /// Its process's root, with namespaces: empty, or (a share the device
    /// serves) `fds[0]`, a directory, which the spawner then hands the
    /// process in place of the hello.
    pub root: ipc::Root,
    /// For a device that takes skvm's terminal (`--console stdio`): the
    /// write end of the pipe it reads its input from, into which the VMM
    /// forwards what the user types (after the escape key).
    pub terminal: Option<OwnedFd>,
}

/// One device as the command line asked for it, validated.
pub trait DeviceConfig: Debug + Send + Sync {
    /// Opens what the device serves, in the VMM. Errors are one line
    /// naming the device's file or interface and the reason.
    fn open(&self, ctx: &mut OpenContext<'_>) -> anyhow::Result<Opened>;
    /// A unix socket the device listens on. skvm binds it before the VMM
    /// starts the process that outlives it (which removes the socket's
    /// file when skvm ends) and hands it to [`DeviceConfig::open`] in
    /// [`OpenContext::socket`].
    fn socket(&self) -> Option<&std::path::Path> {
        None
    }
    /// The kernel parameters that mount this device as the guest's root
    /// file system, given that it is the `index`th device of its kind; `None`
    /// (the default) unless the command line asked for that.
    fn root_params(&self, _index: usize) -> Option<RootParams> {
        None
    }
}

/// How the guest mounts its root from a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootParams {
    /// The kernel parameters (`root=/dev/vda rw`).
    pub params: String,
    /// Whether skvm's initramfs mounts it (a virtio-fs share), rather than
    /// the default kernel itself (a disk).
    pub by_initramfs: bool,
}

/// Everything skvm knows about one kind of device.
pub trait DeviceKind: Send + Sync {
    /// Its name, the prefix of its devices' names ("blk" for blk0).
    fn name(&self) -> &str;
    /// Its virtio device ID.
    fn virtio_id(&self) -> u32;
    /// Its PCI class code.
    fn pci_class(&self) -> PciClass {
        PCI_CLASS_OTHER
    }
    /// Its `skvm run` option, if it has one.
    fn option(&self) -> Option<KindOption>;
    /// One device from one use of its option (`value` is `None` for a
    /// flag); `None` when the value asks for no device.
    fn parse(&self, value: Option<&str>) -> Result<Option<Box<dyn DeviceConfig>>, KindError>;
    /// Every `skvm run` option that adds a device of this kind: its
    /// [`DeviceKind::option`], and for some kinds another that says one
    /// common use in fewer words (`--root DIR`, a share that is the
    /// guest's root).
    fn options(&self) -> Vec<KindOption> {
        self.option().into_iter().collect()
    }
    /// One device from one use of option `long`, one of
    /// [`DeviceKind::options`].
    fn parse_option(
        &self,
        _long: &str,
        value: Option<&str>,
    ) -> Result<Option<Box<dyn DeviceConfig>>, KindError> {
        self.parse(value)
    }
    /// Builds the model, in the device process or thread, from the
    /// parameters and fds its hello carried. Any input must give a model
    /// or an error, never a panic.
    fn model(&self, params: &[u8], fds: Vec<OwnedFd>) -> Result<Box<dyn VirtioDevice>, KindError>;
    /// Its confinement in a device process; `None` if it only runs in a
    /// VMM thread.
    fn confinement(&self) -> Option<Confinement>;
    /// What the device host keeps of a device of this kind (the device
    /// itself, unless the kind wraps it).
    fn host(&self, device: RemoteDevice) -> Box<dyn Hosted> {
        Box::new(device)
    }
}

/// A device to attach: its kind, its name and its configuration.
#[derive(Debug)]
pub struct DeviceSpec {
    /// The kind.
    pub kind: Arc<dyn DeviceKind>,
    /// Its name ("blk0").
    pub name: String,
    /// Its index among the devices of its kind (the 0 of "blk0").
    pub index: usize,
    /// What the command line said.
    pub config: Box<dyn DeviceConfig>,
}

impl Debug for dyn DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The device kinds a program knows, in the order their devices are
/// attached (which is the order of their PCI slots).
#[derive(Clone, Default)]
pub struct Registry {
    kinds: Vec<Arc<dyn DeviceKind>>,
}

impl Registry {
    /// skvm's kinds.
    pub fn standard() -> Self {
        Self::default()
            .with(blk::Blk)
            .with(rng::Rng)
            .with(net::Net)
            .with(console::Console)
            .with(vsock::Vsock)
            .with(fs::Fs)
            .with(mem::Mem)
    }

    /// Adds `kind` at the end.
    pub fn with(mut self, kind: impl DeviceKind + 'static) -> Self {
        self.kinds.push(Arc::new(kind));
        self
    }

    /// Puts `kind` in the place of the kind named `name`.
    pub fn replace(mut self, name: &str, kind: impl DeviceKind + 'static) -> Self {
        let kind: Arc<dyn DeviceKind> = Arc::new(kind);
        match self.kinds.iter_mut().find(|k| k.name() == name) {
            Some(slot) => *slot = kind,
            None => self.kinds.push(kind),
        }
        self
    }

    /// The kind named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn DeviceKind>> {
        self.kinds.iter().find(|k| k.name() == name).cloned()
    }

    /// Every kind, in attach order.
    pub fn kinds(&self) -> impl Iterator<Item = &Arc<dyn DeviceKind>> {
        self.kinds.iter()
    }

    /// The kind of device `name` ("rng0" is an rng): the kind whose name
    /// it is followed by digits only.
    pub fn kind_of(&self, device: &str) -> Option<Arc<dyn DeviceKind>> {
        self.get(device.trim_end_matches(|c: char| c.is_ascii_digit()))
    }

    /// `cmd` with every kind's option added, under the heading "Devices".
    pub fn add_options(&self, mut cmd: clap::Command) -> clap::Command {
        for o in self.kinds.iter().flat_map(|k| k.options()) {
            let mut arg = clap::Arg::new(o.long)
                .long(o.long)
                .help(o.help)
                .help_heading("Devices");
            arg = match (o.value_name, o.repeatable) {
                (None, _) => arg.action(clap::ArgAction::SetTrue),
                (Some(v), true) => arg.value_name(v).action(clap::ArgAction::Append),
                (Some(v), false) => arg.value_name(v).action(clap::ArgAction::Set),
            };
            cmd = cmd.arg(arg);
        }
        cmd
    }

    /// The devices the options in `m` ask for, named by kind and order.
    pub fn configure(&self, m: &clap::ArgMatches) -> Result<Vec<DeviceSpec>, KindError> {
        let mut specs = Vec::new();
        for (kind, o) in self
            .kinds
            .iter()
            .flat_map(|k| k.options().into_iter().map(move |o| (k, o)))
        {
            let values: Vec<Option<&str>> = match o.value_name {
                None => match m.try_get_one::<bool>(o.long) {
                    Ok(Some(true)) => vec![None],
                    _ => Vec::new(),
                },
                Some(_) => m
                    .try_get_many::<String>(o.long)
                    .ok()
                    .flatten()
                    .map(|v| v.map(|s| Some(s.as_str())).collect())
                    .unwrap_or_default(),
            };
            for value in values {
                if let Some(config) = kind.parse_option(o.long, value)? {
                    let index = specs
                        .iter()
                        .filter(|s: &&DeviceSpec| s.kind.name() == kind.name())
                        .count();
                    specs.push(DeviceSpec {
                        kind: kind.clone(),
                        name: format!("{}{index}", kind.name()),
                        index,
                        config,
                    });
                }
            }
        }
        Ok(specs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(args: &[&str]) -> clap::ArgMatches {
        Registry::standard()
            .add_options(clap::Command::new("run"))
            .try_get_matches_from(std::iter::once("run").chain(args.iter().copied()))
            .unwrap()
    }

    #[test]
    fn devices_are_named_by_kind_and_order_and_attached_kind_by_kind() {
        let m = matches(&[
            "--net", "tap=a", "--disk", "x.img", "--rng", "--disk", "y.img,ro",
        ]);
        let specs = Registry::standard().configure(&m).unwrap();
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["blk0", "blk1", "rng0", "net0"]);
    }

    #[test]
    fn a_bad_value_names_its_option() {
        let m = matches(&["--disk", "x.img,cache=none"]);
        let e = Registry::standard().configure(&m).unwrap_err().to_string();
        assert!(e.contains("--disk"), "{e}");
    }

    #[test]
    fn kinds_are_found_by_device_name() {
        let r = Registry::standard();
        assert_eq!(
            r.kind_of("blk12").map(|k| k.name().to_owned()).as_deref(),
            Some("blk")
        );
        assert!(r.kind_of("gpu0").is_none());
        assert!(r.kind_of("rngx").is_none());
    }

    #[test]
    fn every_kind_has_a_distinct_name_and_id() {
        let r = Registry::standard();
        let mut names: Vec<&str> = r.kinds().map(|k| k.name()).collect();
        let mut ids: Vec<u32> = r.kinds().map(|k| k.virtio_id()).collect();
        names.sort_unstable();
        names.dedup();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(names.len(), 7);
        assert_eq!(ids.len(), 7);
        assert!(r.kinds().all(|k| ipc::wire::valid_kind(k.name())));
    }
}
