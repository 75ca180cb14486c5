//! The `skvm run` command line, validated once into a [`VmConfig`]; the
//! guest kernel's command line it leads to is built in [`cmdline`].

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::device_host::{Degraded, DeviceMode, OnFailure, SandboxOpts, SeccompMode};
use crate::kinds::{DeviceSpec, KindError, Registry, RootParams};
pub use crate::memory::parse_size;
use crate::memory::MIN_MEM;
use crate::vmm_sandbox::VmmSandbox;

mod cmdline;
pub use cmdline::{base64, QUIRKS_CMDLINE};

/// Largest vCPU count: APIC IDs must fit the xAPIC's 8 bits (255 is broadcast).
pub const MAX_CPUS: u32 = 254;

/// Who decompresses a bzImage's kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Decompress {
    /// skvm, before the guest starts, when the kernel is LZ4-compressed
    /// (skvm's default kernel and Debian's are); other compressions are
    /// left to the guest.
    Skvm,
    /// Always the kernel's own decompressor, in the guest.
    Guest,
}

/// Whether to apply the workarounds for hosts whose KVM emulates guest
/// kernel code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HostQuirks {
    /// Detect the host (kvm_pvm loaded, or no VMX/SVM).
    Auto,
    /// Always apply them.
    On,
    /// Never apply them.
    Off,
}

/// Whether devices offer VIRTIO_F_RING_EVENT_IDX (`--event-idx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EventIdx {
    /// Offer it: the guest's driver then asks for interrupts and the
    /// device for kicks only where the other side has not seen the last.
    On,
    /// Do not: every completion may interrupt and every request kick.
    Off,
}

/// `skvm run` options, but for the devices': each device kind adds its own
/// (`crate::kinds`).
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Kernel to boot: an ELF vmlinux or a bzImage. Default: the guest built
    /// by scripts/setup.sh (in $SKVM_GUEST_DIR, else ~/.local/share/skvm/guest).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk. Default: the default guest's initramfs
    /// (initramfs.cpio, else initramfs.cpio.gz) when --kernel is not given
    /// and no disk is the root (`--disk PATH,root`), none otherwise.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Extra kernel command-line parameters, appended to skvm's own
    /// (console=ttyS0 panic=-1, and the host quirks).
    #[arg(long, value_name = "PARAMS", default_value = "")]
    pub cmdline: String,
    /// Command for the default initramfs's /init to run instead of a shell;
    /// the guest powers off when it ends. With a root disk (`--disk
    /// PATH,root`) the disk's own init must do it: images built by
    /// scripts/build-rootfs.sh run it once multi-user.target is reached.
    #[arg(long, value_name = "COMMAND")]
    pub run: Option<String>,
    /// Start from a snapshot (`skvm ctl SOCKET snapshot DIR`) instead of
    /// booting: guest memory, vCPUs and devices as they were, each device
    /// in a new process. vCPUs, memory and the devices' options come from
    /// the snapshot; give the same device options again (same kinds, in
    /// the same order, and disks of the same size: the images and taps to
    /// serve). Not with --kernel, --initrd, --cmdline or --run.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["kernel", "initrd", "cmdline", "run"])]
    pub restore: Option<PathBuf>,
    /// Number of vCPUs (1 to 254, and at most what KVM allows).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub cpus: u32,
    /// Guest RAM, with an optional K, M, G or T suffix (binary units). The
    /// guest kernel initialises a page descriptor for every 4 KiB page at
    /// boot, so more memory boots slower where guest kernel code is emulated.
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    pub mem: String,
    /// Back guest RAM (and memory added later with `skvm ctl mem-add`) with
    /// the host's 2 MiB huge pages (hugetlbfs memfds) instead of 4 KiB
    /// pages: fewer page faults to load and touch it, fewer TLB misses for
    /// the guest. The pages come from the host's pool, which root sizes
    /// (/proc/sys/vm/nr_hugepages); skvm reserves all of them before the
    /// guest starts and exits with the pool's figures if it is too small.
    /// --mem (and mem-add's size) must be a multiple of 2 MiB. Also with
    /// --restore (the snapshot's memory is written into huge pages).
    #[arg(long)]
    pub hugepages: bool,
    /// Workarounds for hosts whose KVM emulates guest kernel code: complete
    /// int3, clac/stac, fwait and user-mode SYSCALL in skvm (the last through
    /// a breakpoint on the guest's page-fault handler, which takes the
    /// guest's own hardware breakpoints), and add guest command-line options.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = HostQuirks::Auto)]
    pub host_quirks: HostQuirks,
    /// Who decompresses a bzImage's kernel. `skvm` decodes an LZ4 kernel
    /// before the guest starts and places it as the kernel's own
    /// decompressor would, at random physical and virtual offsets for a
    /// kernel built with KASLR (unless --cmdline has nokaslr); the guest
    /// starts at the kernel's own entry point. `guest` leaves it to the
    /// kernel's decompressor, which runs as guest kernel code (34 s for
    /// the default kernel's bzImage, over 2 minutes for Debian's, where KVM
    /// emulates guest kernel code). Kernels compressed otherwise than with
    /// LZ4 always decompress in the guest.
    #[arg(long, value_enum, value_name = "WHO", default_value_t = Decompress::Skvm)]
    pub decompress: Decompress,
    /// Where the serial console (COM1, ttyS0) goes: `stdio`, skvm's own
    /// terminal (Ctrl-A x quits); `pty`, a new pseudo-terminal whose path
    /// skvm prints and `skvm ctl SOCKET status` gives, served whether or
    /// not anyone has it open; `socket=PATH`, a unix socket (mode 0600)
    /// one client at a time attaches to, and detaches from, getting the
    /// last 64 KiB of output first (`socat -,raw,echo=0 UNIX-CONNECT:PATH`); `file=PATH`,
    /// output appended to PATH, no input; `off`. Ctrl-A x in the input of
    /// any of them stops the VM.
    #[arg(long, value_name = "WHERE", default_value = "stdio")]
    pub serial: crate::console::backend::SerialSpec,
    /// The VM's name: default MAC addresses derive from it, so a VM keeps
    /// its addresses across boots.
    #[arg(long, value_name = "NAME", default_value = "skvm")]
    pub name: String,
    /// Where virtio devices run: each in its own sandboxed process, or as
    /// threads of the VMM (no isolation; to measure what it costs).
    #[arg(long, value_enum, value_name = "MODE", default_value_t = DeviceMode::Process)]
    pub device_mode: DeviceMode,
    /// Adaptive polling: after serving a kick, a device looks at its
    /// queues for more work for up to US microseconds before it sleeps
    /// (0 to 1000; 0, the default, sleeps at once). A sleeping device is
    /// woken by the next kick, which on a host whose idle cores halt can
    /// cost tens of microseconds; polling spends CPU to save it. The window
    /// adapts: it halves after a look that found nothing and grows back
    /// when kicks follow soon after sleeping; looks that find nothing take
    /// at most a quarter of the wall time.
    #[arg(long, value_name = "US", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(ipc::MAX_POLL_US)))]
    pub device_poll_us: u32,
    /// Whether the virtio devices offer event indexes
    /// (VIRTIO_F_RING_EVENT_IDX; on by default). Off is for measuring what
    /// they save: scripts/bench-event-idx.sh compares the two.
    /// A snapshot whose guest took them is refused by `--restore` with
    /// off.
    #[arg(long, value_enum, value_name = "on|off", default_value_t = EventIdx::On)]
    pub event_idx: EventIdx,
    /// When a device process dies: start a new one that carries on where
    /// the old one stopped, without the guest noticing (restart; at most
    /// --restart-limit times a minute per device, and never after a kill
    /// by the device's seccomp filter); keep the guest running with the
    /// device marked as needing a reset (reset; also what restart falls
    /// back to); or stop the VM with an error (exit). A device that says
    /// the guest broke its queues is always marked as needing a reset.
    #[arg(long, value_enum, value_name = "ACTION", default_value_t = OnFailure::Restart)]
    pub on_device_failure: OnFailure,
    /// Most restarts of one device within a minute (--on-device-failure
    /// restart); past it the device is marked as needing a reset.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub restart_limit: u32,
    /// Listen for control commands on this unix socket (`skvm ctl PATH
    /// COMMAND`: status, pause, resume, device-restart NAME, mem-add SIZE,
    /// powerdown, snapshot DIR [--resume], shutdown). The socket is created mode 0600 and removed at exit (by
    /// the spawner, outside the VMM's empty root); a socket file nobody
    /// listens on is replaced, a live one or any other file is refused.
    #[arg(long, value_name = "PATH")]
    pub ctl: Option<PathBuf>,
    /// How device processes are confined.
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// The VMM's own seccomp filter, on all its threads from just before
    /// the vCPUs start: `off`, or `on` with option groups as in QEMU's
    /// -sandbox. `on` always denies what no running VMM needs (mount,
    /// ptrace, module loading, namespaces, bpf, keyrings, clock setting,
    /// reboot, ...) and by default every group too; allow one with
    /// GROUP=allow. obsolete: syscalls modern C libraries never make;
    /// elevateprivileges: set*uid/set*gid and capset (children: the same,
    /// and anything spawned cannot gain privileges); spawn: fork, exec and
    /// process-creating clone; resourcecontrol: scheduling, affinity,
    /// priority and resource limits. A forbidden call follows --seccomp
    /// (kill: skvm dies with SIGSYS). `skvm sandbox show vmm` lists the
    /// filter.
    #[arg(
        long = "sandbox",
        value_name = "on|off[,obsolete=allow|deny][,elevateprivileges=allow|deny|children][,spawn=allow|deny][,resourcecontrol=allow|deny]",
        default_value = "on"
    )]
    pub vmm_sandbox: VmmSandbox,
    /// The unprivileged user and group (numeric, GID defaults to UID) the
    /// VMM becomes once it has opened /dev/kvm, the images, taps and the
    /// control socket, and that device processes' namespace root maps to.
    /// Default: 65534:65534 (nobody) when started as root; started as an
    /// ordinary user, skvm keeps that user (and refuses any other). Give
    /// each VM its own to keep VMs apart. With --sandbox off the VMM keeps
    /// its privileges.
    #[arg(long, value_name = "UID[:GID]", value_parser = parse_user)]
    pub user: Option<(u32, u32)>,
    /// On SIGTERM, skvm presses the guest's ACPI power button (as `skvm ctl
    /// SOCKET powerdown` does) and waits this many seconds for the guest to
    /// power off before it stops the VM (exit status 1 then); 0 stops at
    /// once. A second SIGTERM, SIGINT or SIGHUP always stop at once.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub stop_timeout: u64,
    /// Print debug messages and exit statistics.
    #[arg(long)]
    pub debug: bool,
}

/// `UID[:GID]`, numeric, neither 0.
fn parse_user(s: &str) -> Result<(u32, u32), String> {
    let (u, g) = s.split_once(':').unwrap_or((s, s));
    let num = |v: &str| {
        v.parse::<u32>()
            .map_err(|_| format!("'{s}': expected UID[:GID], numeric"))
    };
    let (uid, gid) = (num(u)?, num(g)?);
    if uid == 0 || gid == 0 {
        return Err(format!("'{s}': 0 would keep root"));
    }
    Ok((uid, gid))
}

/// How device processes are confined (shared by `run` and `drive`).
#[derive(Debug, Clone, Args)]
pub struct SandboxArgs {
    /// What a device's seccomp filter does on a syscall its policy forbids:
    /// kill the device process; or (for debugging) fail the syscall and log
    /// "device NAME (pid N) made forbidden syscall NAME"; or have the kernel
    /// log it and allow it.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = SeccompMode::Kill)]
    pub seccomp: SeccompMode,
    /// Where the host forbids the namespaces device processes need (in a
    /// container, say): refuse to start (deny), or warn and run devices
    /// without namespaces and their empty root (allow).
    #[arg(long, value_enum, value_name = "WHAT", default_value_t = Degraded::Deny)]
    pub sandbox_degraded: Degraded,
}

impl SandboxArgs {
    /// The options as the device host takes them.
    pub fn opts(&self) -> SandboxOpts {
        SandboxOpts {
            seccomp: self.seccomp,
            degraded: self.sandbox_degraded,
            unconfined: false,
            vmm: VmmSandbox::default(),
        }
    }
}

/// Errors in the command line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// --mem could not be parsed.
    #[error("invalid --mem '{0}': expected a size such as 512M or 4G")]
    BadSize(String),
    /// --mem below the minimum.
    #[error("--mem {given} is too small: the minimum is {min} MiB")]
    MemTooSmall {
        /// What was asked.
        given: String,
        /// The minimum in MiB.
        min: u64,
    },
    /// --cpus out of range.
    #[error("--cpus {0} is out of range: give 1 to {MAX_CPUS}")]
    Cpus(u32),
    /// --hugepages with memory that is not whole huge pages.
    #[error("--hugepages: guest memory of {} is not a multiple of 2 MiB (its huge page)", in_units(*.0))]
    HugeMem(u64),
    /// A boot file cannot be read.
    #[error("cannot read {what} {path}")]
    Unreadable {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The path given.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A device option that cannot be parsed.
    #[error(transparent)]
    Device(#[from] KindError),
    /// Two devices asked to be the root file system.
    #[error("{0} and {1} both ask to be the root file system: keep one (`--disk IMAGE,root` or `--root DIR`)")]
    TwoRoots(String, String),
    /// No --kernel and no default guest.
    #[error("no --kernel given and the default guest is not built at {0}: run scripts/setup.sh")]
    NoDefaultGuest(PathBuf),
    /// The snapshot cannot be read or is not one.
    #[error("--restore {0}")]
    Snapshot(PathBuf, #[source] anyhow::Error),
    /// The command line does not match the snapshot.
    #[error("--restore {0}: {1}")]
    SnapshotMismatch(PathBuf, String),
}

/// `bytes` in MiB when whole, else in KiB.
fn in_units(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

/// A snapshot to start from: its directory and its checked state.
pub struct Restore {
    /// The snapshot's directory.
    pub dir: PathBuf,
    /// Its state file, decoded.
    pub snapshot: Box<crate::snapshot::state::VmSnapshot>,
}

impl std::fmt::Debug for Restore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restore").field("dir", &self.dir).finish()
    }
}

/// Reads the snapshot in `dir` and checks the command line against it:
/// --cpus and --mem, when given, must be the snapshot's; the devices must
/// be of the same kinds, with the same names, in the same order.
fn read_restore(
    dir: &std::path::Path,
    m: &clap::ArgMatches,
    args: &RunArgs,
    devices: &[DeviceSpec],
) -> Result<Restore, ConfigError> {
    let snapshot = crate::snapshot::files::read_state(dir)
        .map_err(|e| ConfigError::Snapshot(dir.to_owned(), e))?;
    let mismatch = |why: String| ConfigError::SnapshotMismatch(dir.to_owned(), why);
    let given = |id: &str| m.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
    let info = &snapshot.info;
    // What a command line could not have asked for is not taken from a
    // snapshot either.
    if u32::from(info.cpus) > MAX_CPUS || info.mem < MIN_MEM || !info.mem.is_multiple_of(4096) {
        return Err(mismatch(format!(
            "{} vCPUs and {} bytes of memory: not a machine skvm builds",
            info.cpus, info.mem
        )));
    }
    if given("cpus") && args.cpus != u32::from(info.cpus) {
        return Err(mismatch(format!(
            "--cpus {} given, the snapshot has {} vCPUs",
            args.cpus, info.cpus
        )));
    }
    if given("mem") && parse_size(&args.mem) != Some(info.mem) {
        return Err(mismatch(format!(
            "--mem {} given, the snapshot has {} MiB",
            args.mem,
            info.mem >> 20
        )));
    }
    let here: Vec<(&str, &str)> = devices
        .iter()
        .map(|d| (d.name.as_str(), d.kind.name()))
        .collect();
    let saved: Vec<(&str, &str)> = snapshot
        .devices
        .iter()
        .map(|d| (d.name.as_str(), d.kind.as_str()))
        .collect();
    if here != saved {
        let list = |v: &[(&str, &str)]| {
            let names: Vec<&str> = v.iter().map(|(n, _)| *n).collect();
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        };
        return Err(mismatch(format!(
            "the snapshot's devices are {}, the command line gives {}: give the same \
             device options again",
            list(&saved),
            list(&here)
        )));
    }
    Ok(Restore {
        dir: dir.to_owned(),
        snapshot: Box::new(snapshot),
    })
}

/// A validated VM configuration.
#[derive(Debug)]
pub struct VmConfig {
    /// Kernel image.
    pub kernel: PathBuf,
    /// Optional initrd.
    pub initrd: Option<PathBuf>,
    /// Extra command-line parameters from the user.
    pub extra_cmdline: String,
    /// root= and ro/rw for a device that is the root file system.
    pub root: Option<String>,
    /// Command for the default /init.
    pub run: Option<String>,
    /// vCPU count.
    pub cpus: u8,
    /// RAM in bytes.
    pub mem: u64,
    /// Whether guest RAM is in the host's 2 MiB pages.
    pub hugepages: bool,
    /// Quirks mode.
    pub host_quirks: HostQuirks,
    /// Who decompresses a bzImage.
    pub decompress: Decompress,
    /// Where the serial console goes.
    pub serial: crate::console::backend::SerialSpec,
    /// The devices, in the order they are attached.
    pub devices: Vec<DeviceSpec>,
    /// The VM's name.
    pub name: String,
    /// Where devices run.
    pub device_mode: DeviceMode,
    /// Adaptive polling window of each device, in microseconds (0: off).
    pub device_poll_us: u32,
    /// Whether devices offer VIRTIO_F_RING_EVENT_IDX.
    pub event_idx: EventIdx,
    /// What a device failure does.
    pub on_device_failure: OnFailure,
    /// Most restarts of one device a minute.
    pub restart_limit: u32,
    /// The control socket's path.
    pub ctl: Option<PathBuf>,
    /// How device processes are confined.
    pub sandbox: SandboxOpts,
    /// The VMM's own filter.
    pub vmm_sandbox: VmmSandbox,
    /// `--user`.
    pub user: Option<(u32, u32)>,
    /// How long SIGTERM waits for the guest to power off.
    pub stop_timeout: std::time::Duration,
    /// The snapshot to start from, instead of booting.
    pub restore: Option<Restore>,
}

/// The directory of the default guest.
pub fn default_guest_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SKVM_GUEST_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".local/share/skvm/guest")
}

/// The default guest's initramfs: the uncompressed archive when present (a
/// guest kernel that is emulated inflates gzip slowly: about 50 s against 14 s
/// to copy the plain archive, measured on kvm_pvm), else the gzip'd one.
fn default_initrd(dir: &std::path::Path) -> PathBuf {
    let plain = dir.join("initramfs.cpio");
    if plain.is_file() {
        plain
    } else {
        dir.join("initramfs.cpio.gz")
    }
}

impl VmConfig {
    /// Validates `args`, and the device options of `kinds` in `m` (the
    /// matches `args` came from).
    pub fn from_args(
        args: &RunArgs,
        m: &clap::ArgMatches,
        kinds: &Registry,
    ) -> Result<Self, ConfigError> {
        let mem = parse_size(&args.mem).ok_or_else(|| ConfigError::BadSize(args.mem.clone()))?;
        if mem < MIN_MEM {
            return Err(ConfigError::MemTooSmall {
                given: args.mem.clone(),
                min: MIN_MEM >> 20,
            });
        }
        if args.cpus == 0 || args.cpus > MAX_CPUS {
            return Err(ConfigError::Cpus(args.cpus));
        }
        let cpus = u8::try_from(args.cpus).map_err(|_| ConfigError::Cpus(args.cpus))?;
        let devices = kinds.configure(m)?;
        let root = root_params(&devices)?;
        let restore = args
            .restore
            .as_deref()
            .map(|dir| read_restore(dir, m, args, &devices))
            .transpose()?;
        let (cpus, mem) = match &restore {
            Some(r) => (r.snapshot.info.cpus, r.snapshot.info.mem),
            None => (cpus, mem),
        };
        if args.hugepages && !mem.is_multiple_of(crate::memory::HUGE_PAGE) {
            return Err(ConfigError::HugeMem(mem));
        }
        let (kernel, initrd) = match &args.kernel {
            // A restored guest boots nothing.
            _ if restore.is_some() => (PathBuf::new(), None),
            Some(k) => (k.clone(), args.initrd.clone()),
            None => {
                let dir = default_guest_dir();
                let k = dir.join("vmlinux");
                if !k.is_file() {
                    return Err(ConfigError::NoDefaultGuest(dir));
                }
                // The default kernel has virtio-blk and ext4 built in and
                // mounts a root disk itself; skvm's initramfs mounts a
                // share.
                let i = match (&args.initrd, &root) {
                    (Some(i), _) => Some(i.clone()),
                    (None, Some((_, r))) if !r.by_initramfs => None,
                    (None, _) => Some(default_initrd(&dir)),
                };
                (k, i)
            }
        };
        if restore.is_none() {
            check_readable("kernel", &kernel)?;
        }
        if let Some(i) = &initrd {
            check_readable("initrd", i)?;
        }
        Ok(Self {
            kernel,
            initrd,
            extra_cmdline: args.cmdline.clone(),
            root: root.map(|(_, r)| r.params),
            run: args.run.clone(),
            cpus,
            mem,
            hugepages: args.hugepages,
            host_quirks: args.host_quirks,
            decompress: args.decompress,
            serial: args.serial.clone(),
            devices,
            name: args.name.clone(),
            device_mode: args.device_mode,
            device_poll_us: args.device_poll_us,
            event_idx: args.event_idx,
            on_device_failure: args.on_device_failure,
            restart_limit: args.restart_limit,
            ctl: args.ctl.clone(),
            sandbox: SandboxOpts {
                vmm: args.vmm_sandbox,
                ..args.sandbox.opts()
            },
            vmm_sandbox: args.vmm_sandbox,
            user: args.user,
            stop_timeout: std::time::Duration::from_secs(args.stop_timeout),
            restore,
        })
    }
}

/// The device that is the root file system, by name, and its kernel
/// parameters.
fn root_params(devices: &[DeviceSpec]) -> Result<Option<(String, RootParams)>, ConfigError> {
    let mut root: Option<(String, RootParams)> = None;
    for d in devices {
        if let Some(params) = d.config.root_params(d.index) {
            if let Some((first, _)) = root {
                return Err(ConfigError::TwoRoots(first, d.name.clone()));
            }
            root = Some((d.name.clone(), params));
        }
    }
    Ok(root)
}

/// Fails early, before any VM exists, when a boot file cannot be read.
fn check_readable(what: &'static str, path: &std::path::Path) -> Result<(), ConfigError> {
    let err = |source| ConfigError::Unreadable {
        what,
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(err)?;
    let meta = file.metadata().map_err(err)?;
    if !meta.is_file() {
        return Err(err(std::io::Error::other("not a regular file")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn args() -> RunArgs {
        RunArgs {
            kernel: Some("/proc/self/exe".into()),
            initrd: None,
            cmdline: String::new(),
            run: None,
            restore: None,
            cpus: 1,
            mem: "128M".into(),
            hugepages: false,
            host_quirks: HostQuirks::Auto,
            decompress: Decompress::Skvm,
            serial: crate::console::backend::SerialSpec::Stdio,
            name: "skvm".into(),
            device_mode: DeviceMode::Process,
            device_poll_us: 0,
            event_idx: EventIdx::On,
            on_device_failure: OnFailure::Restart,
            restart_limit: 20,
            ctl: None,
            sandbox: SandboxArgs {
                seccomp: SeccompMode::Kill,
                sandbox_degraded: Degraded::Deny,
            },
            vmm_sandbox: VmmSandbox::default(),
            user: None,
            stop_timeout: 60,
            debug: false,
        }
    }

    #[test]
    fn user_is_numeric_never_root_and_group_defaults_to_user() {
        assert_eq!(parse_user("4242"), Ok((4242, 4242)));
        assert_eq!(parse_user("4242:100"), Ok((4242, 100)));
        for bad in ["", "0", "0:5", "5:0", "nobody", "1:x", "1:2:3", "-1", ":5"] {
            assert!(parse_user(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn zero_cpus_is_an_error() {
        let a = RunArgs { cpus: 0, ..args() };
        assert!(matches!(
            VmConfig::from_args(&a, &clap::ArgMatches::default(), &Registry::standard()),
            Err(ConfigError::Cpus(0))
        ));
    }

    #[test]
    fn huge_pages_take_whole_2_mib_pages_of_memory() {
        let a = RunArgs {
            mem: "129M".into(),
            hugepages: true,
            ..args()
        };
        let e = VmConfig::from_args(&a, &clap::ArgMatches::default(), &Registry::standard());
        assert!(matches!(e, Err(ConfigError::HugeMem(b)) if b == 129 << 20));
        assert_eq!(in_units(129 << 20), "129 MiB");
        assert_eq!(in_units((1 << 20) + 4096), "1028 KiB");
        let a = RunArgs {
            mem: "130M".into(),
            hugepages: true,
            ..args()
        };
        let cfg = VmConfig::from_args(&a, &clap::ArgMatches::default(), &Registry::standard());
        assert!(cfg.is_ok_and(|c| c.hugepages));
    }

    #[test]
    fn tiny_memory_is_an_error() {
        let a = RunArgs {
            mem: "1M".into(),
            ..args()
        };
        assert!(matches!(
            VmConfig::from_args(&a, &clap::ArgMatches::default(), &Registry::standard()),
            Err(ConfigError::MemTooSmall { .. })
        ));
    }

    #[test]
    fn missing_kernel_is_an_error() {
        let a = RunArgs {
            kernel: Some("/nonexistent/vmlinux".into()),
            ..args()
        };
        assert!(matches!(
            VmConfig::from_args(&a, &clap::ArgMatches::default(), &Registry::standard()),
            Err(ConfigError::Unreadable { what: "kernel", .. })
        ));
    }

    #[test]
    fn directory_as_initrd_is_an_error() {
        let a = RunArgs {
            initrd: Some("/".into()),
            ..args()
        };
        assert!(matches!(
            VmConfig::from_args(&a, &clap::ArgMatches::default(), &Registry::standard()),
            Err(ConfigError::Unreadable { what: "initrd", .. })
        ));
    }

    fn disks(values: &[&str]) -> clap::ArgMatches {
        let args = values.iter().flat_map(|v| ["--disk", v]);
        Registry::standard()
            .add_options(clap::Command::new("run"))
            .try_get_matches_from(std::iter::once("run").chain(args))
            .unwrap()
    }

    fn config(a: &RunArgs, m: &clap::ArgMatches) -> Result<VmConfig, ConfigError> {
        VmConfig::from_args(a, m, &Registry::standard())
    }

    #[test]
    fn a_root_disk_goes_on_the_cmdline_by_its_guest_name() {
        let c = config(&args(), &disks(&["a.img", "b.img,ro,root"])).unwrap();
        assert_eq!(
            c.cmdline(false, false),
            "console=ttyS0 panic=-1 root=/dev/vdb ro"
        );
        let a = RunArgs {
            cmdline: "init=/bin/sh".into(),
            ..args()
        };
        let c = config(&a, &disks(&["a.img,root"])).unwrap();
        assert_eq!(
            c.cmdline(false, false),
            "console=ttyS0 panic=-1 root=/dev/vda rw init=/bin/sh"
        );
    }

    #[test]
    fn one_root_at_most() {
        let e = config(&args(), &disks(&["a.img,root", "b.img,root"])).unwrap_err();
        assert!(
            matches!(&e, ConfigError::TwoRoots(a, b) if a == "blk0" && b == "blk1"),
            "{e}"
        );
    }
}
