//! A device process's confinement as one value ([`ipc::Jail`]) applied in
//! named stages, each failing with a [`JailError`] that says which step:
//!
//! 1. **before exec**, in the spawner's child (`spawner.rs`): the process
//!    is cloned into new user, pid, mount, net, ipc and uts namespaces and
//!    its root mapped to an unprivileged host user; it keeps only
//!    [`DEVICE_FDS`] (stdin and stdout on /dev/null, stderr, the control
//!    socket; and [`ROOT_FD`], a share's directory, for virtio-fs), dies
//!    with the spawner, and execs with an empty environment;
//! 2. **after exec** ([`after_exec`]): every other fd closed again, a root
//!    of its own (the empty read-only one, or the share it serves:
//!    `sandbox::share`), no_new_privs, no capabilities, rlimits;
//! 3. **after hello** ([`after_hello`]): the kind's seccomp policy, last
//!    (the model is built from the hello's backend first).
//!
//! The VMM describes the jail ([`for_kind`]), the spawner checks and
//! carries it, and the device applies it: the description travels over the
//! ipc crate's format, from the spawn request to the device's command line.

use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};

use ipc::{IdMap, Jail, Limit, Root, SeccompAction};
use sandbox::seccomp::{SeccompError, Violation};

use super::policy;
use super::{Launch, SandboxOpts, SeccompMode};
use crate::kinds::{Confinement, DeviceKind};

/// The fd a device process finds its control socket on.
pub const CONTROL_FD: RawFd = 3;
/// The fds a device process keeps: stdin, stdout, stderr, the control
/// socket.
pub const DEVICE_FDS: [RawFd; 4] = [0, 1, 2, CONTROL_FD];
/// The fd a device process whose root is a share finds its directory on,
/// until it has entered it.
pub const ROOT_FD: RawFd = 4;
const SHARE_FDS: [RawFd; 5] = [0, 1, 2, CONTROL_FD, ROOT_FD];

/// A step of the confinement that failed.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// Closing the fds the device must not have.
    #[error("cannot close inherited fds")]
    Fds(#[source] io::Error),
    /// Entering the empty root.
    #[error("cannot enter the empty root")]
    EmptyRoot(#[source] io::Error),
    /// Entering the share as the root.
    #[error("cannot make the shared directory its root")]
    ShareRoot(#[source] io::Error),
    /// Setting no_new_privs.
    #[error("cannot set no_new_privs")]
    NoNewPrivs(#[source] io::Error),
    /// Dropping capabilities.
    #[error("cannot drop capabilities")]
    Capabilities(#[source] io::Error),
    /// Setting resource limits.
    #[error("cannot set resource limits")]
    Limits(#[source] io::Error),
    /// Installing the seccomp filter.
    #[error("cannot install the seccomp filter")]
    Seccomp(#[source] SeccompError),
    /// A jail without a policy asked for seccomp.
    #[error("the {0} kind has no seccomp policy: it never runs in a process")]
    NoPolicy(String),
    /// The description could not be read.
    #[error("bad jail description")]
    Description(#[source] ipc::IpcError),
}

/// The jail of a device with confinement `c` whose backend was opened as
/// `launch` says, as `sandbox` asks: everything, or (`--sandbox-degraded
/// allow` where the host refuses namespaces) everything but the namespaces
/// and the root of its own, or (`skvm drive --unconfined`) nothing. Its
/// file-size limit is the backend's for a kind that writes files, else 0;
/// its root is the backend's (a share) or empty.
pub fn for_kind(
    c: &Confinement,
    launch: Launch<'_>,
    sandbox: SandboxOpts,
    namespaces: bool,
) -> Jail {
    if sandbox.unconfined {
        return Jail::default();
    }
    let (uid, gid) = sandbox::jail::outside_ids();
    Jail {
        namespaces: namespaces.then_some(IdMap { uid, gid }),
        root: if namespaces { launch.root } else { Root::Empty },
        no_new_privs: true,
        drop_capabilities: true,
        limits: sandbox::jail::device_limits(
            if c.writes_files { launch.file_size } else { 0 },
            c.open_files,
        )
        .iter()
        .map(|l| Limit {
            resource: l.resource,
            value: l.value,
        })
        .collect(),
        seccomp: Some(match sandbox.seccomp {
            SeccompMode::Kill => SeccompAction::Kill,
            SeccompMode::Trap => SeccompAction::Trap,
            SeccompMode::Log => SeccompAction::Log,
        }),
    }
}

/// Checks a jail the spawner is asked for: a namespace's root maps to the
/// VM's unprivileged user ([`sandbox::jail::outside_ids`], never root, and
/// no other user a compromised VMM might name), a share root comes with
/// namespaces, and confinement is never partly off. The spawner refuses
/// anything else (EINVAL).
pub fn acceptable(jail: &Jail) -> bool {
    let unconfined = *jail == Jail::default();
    let confined = jail.no_new_privs && jail.drop_capabilities && jail.seccomp.is_some();
    let ours = jail
        .namespaces
        .is_none_or(|m| (m.uid, m.gid) == sandbox::jail::outside_ids() && m.uid != 0);
    let rooted = jail.root == Root::Empty || jail.namespaces.is_some();
    (unconfined || confined) && ours && rooted
}

/// The fds a device process keeps under `jail`: [`DEVICE_FDS`], and
/// [`ROOT_FD`] until its share root is entered.
pub fn kept_fds(jail: &Jail) -> &'static [RawFd] {
    match jail.root {
        Root::Empty => &DEVICE_FDS,
        Root::Share { .. } => &SHARE_FDS,
    }
}

/// Stage 2, in the device process after exec: fds, the root of its own
/// (empty, or the share it serves), no_new_privs, capabilities, rlimits.
/// Returns the share's root, opened, for the model in place of the fd the
/// hello would have carried.
pub fn after_exec(jail: &Jail) -> Result<Option<OwnedFd>, JailError> {
    sandbox::process::close_fds_except(kept_fds(jail)).map_err(JailError::Fds)?;
    let mut share = None;
    match (jail.namespaces, jail.root) {
        (None, _) => {}
        (Some(_), Root::Empty) => {
            sandbox::jail::enter_empty_root().map_err(JailError::EmptyRoot)?;
        }
        (Some(_), Root::Share { read_only }) => {
            // SAFETY: the spawner put the share's directory on this fd for
            // us alone; it is closed once the share is the root.
            let dir = unsafe { OwnedFd::from_raw_fd(ROOT_FD) };
            let root = sandbox::share::enter_share_root(dir.as_fd(), read_only)
                .map_err(JailError::ShareRoot)?;
            share = Some(root);
        }
    }
    if jail.no_new_privs {
        sandbox::jail::no_new_privs().map_err(JailError::NoNewPrivs)?;
    }
    if jail.drop_capabilities {
        sandbox::jail::drop_capabilities().map_err(JailError::Capabilities)?;
    }
    let limits: Vec<sandbox::jail::Limit> = jail
        .limits
        .iter()
        .map(|l| sandbox::jail::Limit {
            resource: l.resource,
            value: l.value,
        })
        .collect();
    sandbox::jail::limit_resources(&limits).map_err(JailError::Limits)?;
    Ok(share)
}

/// Stage 3, after the hello: the seccomp policy of `kind`, last. (The
/// filter's installation sets no_new_privs again, which seccomp requires
/// of an unprivileged process; stage 2 set it already.)
pub fn after_hello(jail: &Jail, kind: &dyn DeviceKind) -> Result<(), JailError> {
    let Some(action) = jail.seccomp else {
        return Ok(());
    };
    let mut p =
        policy::for_kind(kind).ok_or_else(|| JailError::NoPolicy(kind.name().to_owned()))?;
    let violation = match action {
        SeccompAction::Kill => Violation::Kill,
        SeccompAction::Trap => {
            p.extend(policy::TRAP_EXTRA);
            Violation::Trap
        }
        SeccompAction::Log => Violation::Log,
    };
    p.install(violation).map_err(JailError::Seccomp)
}

/// A jail on a command line: lowercase hex of its wire form.
pub fn to_arg(jail: &Jail) -> Result<String, ipc::IpcError> {
    Ok(jail.encode()?.iter().map(|b| format!("{b:02x}")).collect())
}

/// Reads what [`to_arg`] wrote; total over any input.
pub fn from_arg(arg: &str) -> Result<Jail, JailError> {
    let bad = || JailError::Description(ipc::IpcError::BadValue("jail argument"));
    if !arg.len().is_multiple_of(2) || arg.len() > 512 {
        return Err(bad());
    }
    let bytes = (0..arg.len())
        .step_by(2)
        .map(|i| {
            arg.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(bad)?;
    Jail::decode(&bytes).map_err(JailError::Description)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::Registry;

    fn sized(file_size: u64) -> Launch<'static> {
        Launch {
            fds: &[],
            file_size,
            root: Root::Empty,
        }
    }

    fn blk() -> Confinement {
        Registry::standard()
            .get("blk")
            .and_then(|k| k.confinement())
            .unwrap()
    }

    #[test]
    fn a_jail_survives_the_command_line() {
        let j = for_kind(&blk(), sized(1 << 20), SandboxOpts::default(), true);
        assert_eq!(from_arg(&to_arg(&j).unwrap()).unwrap(), j);
        for bad in ["", "0", "zz", &"00".repeat(300)] {
            assert!(from_arg(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn jails_are_whole_or_nothing_and_never_map_root() {
        let full = for_kind(&blk(), sized(1 << 20), SandboxOpts::default(), true);
        assert!(acceptable(&full));
        assert!(acceptable(&Jail::default()));
        let degraded = for_kind(&blk(), sized(1 << 20), SandboxOpts::default(), false);
        assert!(acceptable(&degraded));
        let partial = Jail {
            seccomp: None,
            ..full.clone()
        };
        assert!(!acceptable(&partial));
        let root = Jail {
            namespaces: Some(IdMap { uid: 0, gid: 0 }),
            ..full.clone()
        };
        assert!(!acceptable(&root));
        let (uid, gid) = sandbox::jail::outside_ids();
        let another = Jail {
            namespaces: Some(IdMap { uid: uid + 1, gid }),
            ..full.clone()
        };
        assert!(!acceptable(&another));
        // A share as the root only ever comes with namespaces.
        let share = Launch {
            root: Root::Share { read_only: true },
            ..sized(0)
        };
        let full = for_kind(&blk(), share, SandboxOpts::default(), true);
        assert_eq!(full.root, Root::Share { read_only: true });
        assert!(acceptable(&full));
        let degraded = for_kind(&blk(), share, SandboxOpts::default(), false);
        assert_eq!(degraded.root, Root::Empty);
        let unrooted = Jail {
            namespaces: None,
            ..full
        };
        assert!(!acceptable(&unrooted));
    }

    #[test]
    fn a_disk_may_write_up_to_its_image_size_and_others_nothing() {
        let fsize = |j: &Jail| {
            j.limits
                .iter()
                .find(|l| l.resource == libc::RLIMIT_FSIZE)
                .map(|l| l.value)
        };
        let blk = for_kind(&blk(), sized(1 << 20), SandboxOpts::default(), true);
        assert_eq!(fsize(&blk), Some(1 << 20));
        let rng = Registry::standard()
            .get("rng")
            .and_then(|k| k.confinement())
            .unwrap();
        // A size given to a kind that writes no file does not count.
        let rng = for_kind(&rng, sized(1 << 20), SandboxOpts::default(), true);
        assert_eq!(fsize(&rng), Some(0));
    }

    #[test]
    fn every_device_gets_the_data_limit() {
        let blk = for_kind(&blk(), sized(1 << 20), SandboxOpts::default(), true);
        assert!(blk.limits.iter().any(
            |l| l.resource == libc::RLIMIT_DATA && l.value == sandbox::jail::DEVICE_DATA_LIMIT
        ));
    }

    #[test]
    fn unconfined_is_nothing() {
        let sb = SandboxOpts {
            unconfined: true,
            ..SandboxOpts::default()
        };
        assert_eq!(for_kind(&blk(), sized(1 << 20), sb, true), Jail::default());
    }
}
