//! `skvm-escape`: skvm with the escape suite's attacks built in, for
//! `guest-tests/tests/escape.rs` only. It is the `vmm` library's command
//! line with three additions, none of them in the `skvm` people run:
//!
//! - device kinds `escrng`, `escblk`, `escnet`, `escconsole`, `escvsock`
//!   and `escfs` ([`kinds`]), confined exactly as rng, blk, net, console,
//!   vsock and fs, whose model attempts a hostile action on request
//!   ([`device`]);
//! - `skvm-escape attempt --device escrng0 [--seccomp MODE] [--share DIR
//!   [--read-only]] ACTION`: starts one as `skvm run` starts a device (escfs
//!   with DIR as its root) and has it attempt ACTION;
//! - `SKVM_ESCAPE_DEVICE=ACTIONS skvm-escape run ...`: the rng and disks are
//!   escape devices that attempt ACTIONS (comma-separated; NAME:ACTION for
//!   device NAME only) when the guest activates them;
//!   `SKVM_ESCAPE_VMM=ACTION|all`: vCPU 0 attempts ACTION under its filter
//!   once the guest has run ([`vmm_attack`]).

mod device;
mod kinds;
mod vmm_attack;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use vmm::config::VmConfig;
use vmm::device_host::spawner::{SingleThreaded, Spawner};
use vmm::device_host::{greet, start_device, DeviceMode, Launch, SandboxOpts, SeccompMode};
use vmm::exit::ExitReason;
use vmm::kinds::Registry;
use vmm::memory::GuestRam;

use kinds::EscapeKind;

/// The kinds: skvm's, and the escape kinds. With `SKVM_ESCAPE_DEVICE` the
/// rng and blk kinds are replaced by escape kinds that take their options.
fn registry() -> Registry {
    let std = Registry::standard();
    let kind = |name: &str| std.get(name);
    let (Some(rng), Some(blk), Some(net), Some(console), Some(vsock), Some(fs)) = (
        kind("rng"),
        kind("blk"),
        kind("net"),
        kind("console"),
        kind("vsock"),
        kind("fs"),
    ) else {
        return std;
    };
    match std::env::var("SKVM_ESCAPE_DEVICE") {
        Ok(list) => {
            let actions: Vec<String> = if list == "all" {
                device::ACTIONS[..device::ESCAPES]
                    .iter()
                    .map(|a| (*a).to_owned())
                    .collect()
            } else {
                list.split(',').map(str::to_owned).collect()
            };
            std.replace("rng", EscapeKind::new(rng, Some(actions.clone())))
                .replace("blk", EscapeKind::new(blk, Some(actions)))
                .with(EscapeKind::new(net, None))
                .with(EscapeKind::new(console, None))
                .with(EscapeKind::new(vsock, None))
                .with(EscapeKind::new(fs, None))
        }
        Err(_) => std
            .with(EscapeKind::new(rng, None))
            .with(EscapeKind::new(blk, None))
            .with(EscapeKind::new(net, None))
            .with(EscapeKind::new(console, None))
            .with(EscapeKind::new(vsock, None))
            .with(EscapeKind::new(fs, None)),
    }
}

/// `vmm::vm::run` with the VMM attack armed on vCPU 0 before the filters.
fn run(cfg: &VmConfig) -> Result<ExitReason> {
    let single = SingleThreaded::claim()?;
    // /proc, for the probe to find the spawner and a device once the VMM
    // has left the host's file system.
    let proc = std::fs::File::open("/proc")?;
    let built = vmm::vm::check_host(cfg)?.spawn(single)?.open()?.build()?;
    vmm_attack::prepare(&proc);
    Ok(built.confine()?.start()?.wait())
}

/// `skvm-escape attempt`.
#[derive(Debug, Parser)]
#[command(name = "skvm-escape attempt")]
struct Attempt {
    /// The escape device: escrng0, escblk0, escnet0, escconsole0,
    /// escvsock0 or escfs0.
    #[arg(long)]
    device: String,
    /// For escfs: the directory it shares, which becomes its root as
    /// `--fs` makes it.
    #[arg(long)]
    share: Option<std::path::PathBuf>,
    /// The share is read-only.
    #[arg(long)]
    read_only: bool,
    /// Its seccomp mode.
    #[arg(long, value_enum, default_value_t = SeccompMode::Kill)]
    seccomp: SeccompMode,
    /// The action (see `device::ACTIONS`).
    action: String,
}

/// Starts the escape device as `skvm run` would start a device, has it
/// attempt the action, and prints "escape=ACTION device=NAME outcome=...".
fn attempt(args: &Attempt, kinds: &Registry) -> Result<()> {
    let index = device::ACTIONS
        .iter()
        .position(|a| *a == args.action)
        .with_context(|| {
            format!(
                "unknown action '{}'; actions: {}",
                args.action,
                device::ACTIONS.join(" ")
            )
        })?;
    let kind = kinds
        .kind_of(&args.device)
        .filter(|k| k.name().starts_with("esc"))
        .context(
            "--device needs an escape device (escrng0, escblk0, escnet0, escconsole0, escvsock0, \
             escfs0)",
        )?;
    let share: Vec<std::os::fd::OwnedFd> = match &args.share {
        Some(dir) => vec![std::fs::File::open(dir)
            .with_context(|| format!("--share {}", dir.display()))?
            .into()],
        None => Vec::new(),
    };
    let root = if share.is_empty() {
        ipc::Root::Empty
    } else {
        ipc::Root::Share {
            read_only: args.read_only,
        }
    };
    let single = SingleThreaded::claim()?;
    let sandbox = SandboxOpts {
        seccomp: args.seccomp,
        ..SandboxOpts::default()
    };
    let spawner = Spawner::start(&single, &sandbox, Vec::new())?;
    let ram = GuestRam::new(1 << 20, false).context("cannot create driver memory")?;
    let started = start_device(
        Some(&spawner),
        DeviceMode::Process,
        &args.device,
        Arc::clone(&kind),
        sandbox,
        Launch {
            fds: &share,
            file_size: 0,
            root,
        },
    )?;
    let backend = ipc::Backend {
        kind: kind.name().to_owned(),
        params: Vec::new(),
        fds: u8::try_from(share.len())?,
    };
    let (backend, fds) = started.hello(&backend, &share);
    let memory = ram.ranges.iter().map(|r| (*r, ram.memfd.clone())).collect();
    let mut dev = greet(
        &args.device,
        (started.chan, started.process),
        kind.as_ref(),
        (&backend, fds),
        &memory,
        0,
    )?;
    // SAFETY: getpid cannot fail.
    let me = unsafe { libc::getpid() };
    let outcome = match dev.config_write(u32::try_from(index)?, &me.to_le_bytes()) {
        Ok(()) => "outcome=escaped".to_owned(),
        Err(e) if !dev.is_dead() => format!("outcome=refused reason=\"{e}\""),
        Err(_) => match spawner.wait_exit(Duration::from_secs(5)).map(|x| x.status) {
            Some(s) if libc::WIFSIGNALED(s) => {
                format!("outcome=killed signal={}", libc::WTERMSIG(s))
            }
            Some(s) => format!("outcome=exited status={}", libc::WEXITSTATUS(s)),
            None => "outcome=unknown".to_owned(),
        },
    };
    // The VMM side carries on: the device is shut down cleanly if alive.
    dev.shutdown();
    println!("escape={} device={} {outcome}", args.action, args.device);
    Ok(())
}

fn main() -> ExitCode {
    let kinds = registry();
    let mut args = std::env::args();
    if args.nth(1).as_deref() == Some("attempt") {
        let parsed = Attempt::parse_from(std::env::args().skip(1));
        return match attempt(&parsed, &kinds) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                vmm::log::error(&format!("{e:#}"));
                ExitCode::from(1)
            }
        };
    }
    vmm::cli::main_with(&kinds, run)
}
