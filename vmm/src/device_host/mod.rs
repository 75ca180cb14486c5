//! Where devices run: the only process-aware code of skvm.
//!
//! Each virtio device instance runs the same worker loop ([`worker`]) over
//! an ipc control channel, either in its own process (`--device-mode
//! process`, the default: started by the [`spawner`], confined by seccomp
//! before it touches guest data) or in a VMM thread (`--device-mode
//! thread`, to measure what isolation costs, and always for kinds without
//! a [`crate::kinds::Confinement`]). The VMM side is a
//! [`crate::remote::RemoteDevice`] behind the device's virtio-pci transport
//! either way; the transport keeps registers, and this module does what
//! the transport must not: supervise, restart and restore.
//!
//! Supervision: the spawner reports every device process exit; the host logs
//! the device, pid and signal, then starts a new instance that carries on
//! from what the VMM knows (`--on-device-failure restart`, the default: see
//! [`DeviceHost::respawn`]), marks the device DEVICE_NEEDS_RESET for the
//! guest (`reset`) or stops the VM (`exit`). A running device can also be
//! paused, saved and replaced on request ([`DeviceHost::restart`]).

mod bulk;
mod device_log;
mod handover;
pub mod jail;
pub mod policy;
mod poll;
mod process;
pub mod spawner;
mod supervisor;
pub mod worker;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use ipc::Channel;
use sandbox::process::Pidfd;

use crate::kinds::DeviceKind;
use crate::log;
use crate::remote::{DeviceMemory, Expected, RemoteDevice};
use crate::vmm_sandbox::{self, VmmSandbox};
pub use process::{process_main, DeviceArgs};
use spawner::Spawner;
pub use supervisor::{DeviceHost, DeviceStatus, RestartTimes, SavedDevice};

/// Where device models run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceMode {
    /// Each device in its own sandboxed process.
    Process,
    /// Each device in a thread of the VMM (no isolation; for comparison).
    Thread,
}

/// What to do when a device process dies or gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnFailure {
    /// Start a new device process that carries on where the old one
    /// stopped (within the restart limit).
    Restart,
    /// Keep the guest running with the device marked DEVICE_NEEDS_RESET.
    Reset,
    /// Stop the VM with an error.
    Exit,
}

/// What a device's seccomp filter does on a syscall its policy forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SeccompMode {
    /// The kernel kills the device process (the default).
    Kill,
    /// The syscall fails with ENOSYS and the device reports it; skvm logs
    /// "device NAME (pid N) made forbidden syscall NAME". For debugging.
    Trap,
    /// The kernel logs the syscall and allows it. For debugging.
    Log,
}

/// Whether devices may run without namespaces where the host forbids them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Degraded {
    /// Refuse to start a device that cannot be fully confined.
    Deny,
    /// Warn, and run it with seccomp, no capabilities and rlimits only.
    Allow,
}

/// How device processes are confined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxOpts {
    /// Seccomp's action on forbidden syscalls.
    pub seccomp: SeccompMode,
    /// Whether to fall back to no namespaces.
    pub degraded: Degraded,
    /// No confinement at all (`skvm drive --unconfined`, to measure the
    /// sandbox's cost; never for `skvm run`).
    pub unconfined: bool,
    /// The VMM's filters (`--sandbox`): a device served in a VMM thread
    /// gets the device-thread allowlist.
    pub vmm: VmmSandbox,
}

impl SandboxOpts {
    /// The seccomp action of the filters skvm's helper processes (the
    /// spawner, the socket remover, vsock's connector) put on themselves;
    /// `None` with `--sandbox off` (the VMM keeps its privileges, and so
    /// do they) or unconfined devices (`skvm drive --unconfined`, whose
    /// processes must run under no filter at all).
    pub fn helper_filter(&self) -> Option<SeccompMode> {
        (self.vmm.on && !self.unconfined).then_some(self.seccomp)
    }

    /// What the spawner is told about unconfined device processes.
    pub fn spawner_unconfined(&self) -> spawner::Unconfined {
        if self.unconfined {
            spawner::Unconfined::Allow
        } else {
            spawner::Unconfined::Refuse
        }
    }
}

impl Default for SandboxOpts {
    fn default() -> Self {
        Self {
            seccomp: SeccompMode::Kill,
            degraded: Degraded::Deny,
            unconfined: false,
            vmm: VmmSandbox::default(),
        }
    }
}

/// Says hello to a device of `kind` just started on `chan` (in `process`,
/// which is killed if the hello fails), handing it its backend.
pub fn greet(
    name: &str,
    (chan, process): (Channel, Option<Pidfd>),
    kind: &dyn DeviceKind,
    (backend, fds): (&ipc::Backend, &[OwnedFd]),
    memory: &DeviceMemory,
    poll_us: u32,
) -> Result<RemoteDevice> {
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
    let expected = Expected {
        device_type: kind.virtio_id(),
    };
    RemoteDevice::connect(
        name,
        (chan, process),
        expected,
        (backend, &borrowed),
        memory.clone(),
        poll_us,
    )
    .with_context(|| format!("device {name}"))
}

/// `e`, device `name`'s failure to answer its hello, with how its process
/// ended when the spawner reports that within a second. A process killed
/// by a filter, or failing at its start, says nothing on its channel: the
/// greeting only meets a closed connection.
pub fn with_early_end(
    e: anyhow::Error,
    spawner: Option<&spawner::Spawner>,
    pid: Option<libc::pid_t>,
) -> anyhow::Error {
    let (Some(s), Some(pid)) = (spawner, pid) else {
        return e;
    };
    match s.wait_exit(Duration::from_secs(1)) {
        Some(x) if x.pid == pid => {
            let hint = if libc::WIFSIGNALED(x.status) && libc::WTERMSIG(x.status) == libc::SIGSYS {
                " (with `--seccomp log` it runs on and the kernel's log names the call)"
            } else {
                ""
            };
            anyhow::anyhow!(
                "{e:#}; its process (pid {pid}) {}{hint}",
                describe_status(x.status)
            )
        }
        _ => e,
    }
}

/// A process's wait status in words: "was killed by signal 9 (SIGKILL)".
pub fn describe_status(status: libc::c_int) -> String {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        format!("was killed by signal {sig} ({})", signal_name(sig))
    } else if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == process::FILE_SIZE_EXIT {
        format!(
            "exited with status {} after a write past its file-size limit (SIGXFSZ)",
            process::FILE_SIZE_EXIT
        )
    } else if libc::WIFEXITED(status) {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else {
        format!("ended (wait status {status:#x})")
    }
}

fn signal_name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGSYS => "SIGSYS, a forbidden syscall",
        libc::SIGABRT => "SIGABRT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGBUS => "SIGBUS",
        _ => "signal",
    }
}

/// What every instance of a device starts from: how its backend was opened
/// ([`crate::kinds::Opened`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Launch<'a> {
    /// The backend's fds.
    pub fds: &'a [OwnedFd],
    /// The file-size limit.
    pub file_size: u64,
    /// The root of its process (a share is `fds[0]`).
    pub root: ipc::Root,
}

/// A device just started: the VMM's end of its control channel and where it
/// runs.
pub struct Started {
    /// The control channel.
    pub chan: Channel,
    /// The device process (process mode).
    pub process: Option<Pidfd>,
    /// The device thread (thread mode).
    pub thread: Option<JoinHandle<()>>,
    /// Whether the process got the backend's first fd as its root.
    pub root_given: bool,
}

impl Started {
    /// The backend as the hello hands it over: without the fd the process
    /// got as its root, which it must not hold a second time (`..` from
    /// the VMM's fd leads out of the share).
    pub fn hello<'b>(
        &self,
        backend: &ipc::Backend,
        fds: &'b [OwnedFd],
    ) -> (ipc::Backend, &'b [OwnedFd]) {
        match (self.root_given, fds.split_first()) {
            (true, Some((_, rest))) => (
                ipc::Backend {
                    fds: backend.fds.saturating_sub(1),
                    ..backend.clone()
                },
                rest,
            ),
            _ => (backend.clone(), fds),
        }
    }
}

/// Starts device `name` of `kind` in a process through `spawner` (process
/// mode) or in a thread of this process. A process gets its namespaces;
/// where the host refuses them, `sandbox.degraded` decides between an
/// error and a warning. `launch` is how its backend was opened, the same
/// for every instance.
pub fn start_device(
    spawner: Option<&Spawner>,
    mode: DeviceMode,
    name: &str,
    kind: Arc<dyn DeviceKind>,
    sandbox: SandboxOpts,
    launch: Launch<'_>,
) -> Result<Started> {
    let (vmm_end, device_end) = Channel::pair().context("cannot create control socket")?;
    let (Some(s), DeviceMode::Process, Some(c)) = (spawner, mode, kind.confinement()) else {
        return Ok(Started {
            chan: vmm_end,
            process: None,
            thread: Some(start_thread(name, kind, device_end, sandbox)?),
            root_given: false,
        });
    };
    let share = match (launch.root, launch.fds.first()) {
        (ipc::Root::Share { .. }, Some(dir)) => Some(dir.as_fd()),
        (ipc::Root::Share { .. }, None) => {
            bail!("device {name}: a share root without its directory")
        }
        (ipc::Root::Empty, _) => None,
    };
    let control = OwnedFd::from(device_end);
    let copy = control
        .try_clone()
        .context("cannot duplicate control socket")?;
    let full = jail::for_kind(&c, launch, sandbox, true);
    let process = match s.spawn(name, kind.name(), control, share, &full) {
        Ok(p) => (p, share.is_some()),
        Err(e) if sandbox.degraded == Degraded::Allow && full.namespaces.is_some() => {
            log::warn(&format!(
                "device {name}: {e:#}; running it WITHOUT namespaces or its \
                 empty root (--sandbox-degraded allow): seccomp, no capabilities and \
                 rlimits only"
            ));
            let degraded = jail::for_kind(&c, launch, sandbox, false);
            let p = s
                .spawn(name, kind.name(), copy, None, &degraded)
                .with_context(|| format!("device {name}: cannot start"))?;
            (p, false)
        }
        Err(e) => {
            return Err(e.context(format!(
                "device {name}: cannot be confined on this host (a container?); \
                 `skvm sandbox check` shows what works, and --sandbox-degraded allow \
                 runs devices without namespaces"
            )))
        }
    };
    Ok(Started {
        chan: vmm_end,
        process: Some(process.0),
        thread: None,
        root_given: process.1,
    })
}

/// Serves device `name` in a VMM thread, which installs the device-thread
/// allowlist of its kind after the hello (none when unconfined or with
/// `--sandbox off`).
fn start_thread(
    name: &str,
    kind: Arc<dyn DeviceKind>,
    chan: Channel,
    sandbox: SandboxOpts,
) -> Result<JoinHandle<()>> {
    let label = name.to_owned();
    let filter = if sandbox.unconfined {
        None
    } else {
        let policy = sandbox
            .vmm
            .device_thread_policy(kind.confinement().as_ref());
        sandbox
            .vmm
            .program(&policy, sandbox.seccomp)
            .with_context(|| format!("device {name}: its thread's filter"))?
    };
    std::thread::Builder::new()
        .name(format!("skvm-dev-{name}"))
        .spawn(move || {
            let confine = || match &filter {
                Some(prog) => vmm_sandbox::install_on_this_thread(prog).map_err(Into::into),
                None => Ok(()),
            };
            if let Err(e) = worker::serve(&chan, kind.as_ref(), &label, None, confine) {
                log::error(&format!("device {label}: {e}"));
            }
        })
        .with_context(|| format!("{name}: cannot start device thread"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_are_described() {
        assert!(describe_status(9).contains("SIGKILL"));
        assert_eq!(describe_status(3 << 8), "exited with status 3");
        assert!(describe_status(153 << 8).contains("file-size limit (SIGXFSZ)"));
    }
}
