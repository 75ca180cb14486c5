//! The `skvm` command line: subcommands, exit statuses and the error chain
//! (one `skvm: error:` line).

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::{RunArgs, VmConfig};
use crate::exit::ExitReason;
use crate::kinds::Registry;
use crate::{ctl, device_host, drive, log, sandbox_cmd, vm};

/// skvm: boot Linux guests on KVM, each virtio device in its own sandboxed
/// process.
#[derive(Debug, Parser)]
#[command(name = "skvm", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot a Linux guest with its console on this terminal (escape: Ctrl-A x).
    ///
    /// Exit status: 0 when the guest powers off or reboots, 2 when the guest
    /// kernel panics, 1 on any error.
    Run(RunArgs),
    /// Drive a device from the host, as a guest driver would, and print
    /// throughput and kick-to-interrupt latency.
    ///
    /// The device is started as `skvm run` starts it (its own confined
    /// process, or a thread with --device-mode thread); no guest runs.
    Drive(drive::DriveArgs),
    /// Inspect device confinement: what this host supports, and each device
    /// kind's seccomp policy.
    #[command(subcommand)]
    Sandbox(sandbox_cmd::SandboxCommand),
    /// Send one command to a running VM's control socket (`skvm run --ctl
    /// SOCKET`) and print its answer, one JSON object.
    ///
    /// Commands: status (the VM's state and each device's pid, state,
    /// restarts and resident memory), pause, resume (vCPUs and devices),
    /// device-restart NAME (save the device, replace its process by a new
    /// one in a new sandbox, restore it; answers the time of each step),
    /// mem-add SIZE (memory hotplug, with `skvm run --hotplug-mem`: back
    /// SIZE more bytes, a multiple of 128M, give every device the new
    /// memory map, then let the guest plug it), powerdown (press the
    /// guest's ACPI power button: a systemd guest, or the default guest's
    /// acpid, shuts down cleanly and skvm exits 0 when it powers off),
    /// shutdown (stop the VM at once, as if the guest powered off). Exit
    /// status: 0 when the answer has
    /// "ok":true, 1 otherwise.
    Ctl(ctl::CtlArgs),
}

/// How a program built on this library runs a VM once its configuration
/// is validated (`skvm`'s is [`vm::run`]; the escape suite adds its steps).
pub type Runner = fn(&VmConfig) -> anyhow::Result<ExitReason>;

/// What `skvm` does with its command line; the exit status to end with.
pub fn main() -> ExitCode {
    main_with(&Registry::standard(), vm::run)
}

/// The `skvm` command line over the device kinds `kinds`, with `runner`
/// running VMs.
pub fn main_with(kinds: &Registry, runner: Runner) -> ExitCode {
    // Device processes are this binary exec'd as `skvm-dev NAME KIND JAIL`.
    let mut args = std::env::args_os();
    if args
        .next()
        .is_some_and(|a| a == device_host::spawner::DEVICE_ARGV0)
    {
        let mut next = || {
            args.next()
                .and_then(|n| n.into_string().ok())
                .unwrap_or_default()
        };
        let (name, kind, jail) = (next(), next(), next());
        device_host::process_main(
            kinds,
            device_host::DeviceArgs {
                name: &name,
                kind: &kind,
                jail: &jail,
            },
        );
    }
    let cmd = Cli::command().mut_subcommand("run", |c| kinds.add_options(c));
    let matches = cmd.get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let sub = |name| {
        matches
            .subcommand_matches(name)
            .cloned()
            .unwrap_or_default()
    };
    match cli.command {
        Command::Run(args) => run(&args, &sub("run"), kinds, runner),
        Command::Sandbox(cmd) => sandbox_cmd::run(&cmd, kinds),
        Command::Ctl(args) => finish(ctl::client(&args)),
        Command::Drive(args) => finish(drive::run(&args, kinds)),
    }
}

/// The exit status of a command that ends with `result`.
fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error(&format!("{e:#}"));
            ExitCode::from(1)
        }
    }
}

fn run(args: &RunArgs, m: &clap::ArgMatches, kinds: &Registry, runner: Runner) -> ExitCode {
    log::set_debug(args.debug || std::env::var_os("SKVM_DEBUG").is_some());
    let result = VmConfig::from_args(args, m, kinds)
        .map_err(anyhow::Error::from)
        .and_then(|cfg| runner(&cfg));
    match result {
        Ok(reason) => {
            match &reason {
                ExitReason::GuestPanic(msg) => log::error(&format!("guest kernel panic: {msg}")),
                ExitReason::Fatal(msg) => log::error(msg),
                ExitReason::Snapshotted => log::info("the VM stopped after its snapshot"),
                ExitReason::Poweroff | ExitReason::Reboot | ExitReason::UserQuit => {
                    log::debug(&format!("guest stopped: {reason:?}"));
                }
            }
            ExitCode::from(u8::try_from(reason.status()).unwrap_or(1))
        }
        Err(e) => {
            log::error(&format!("{e:#}"));
            ExitCode::from(1)
        }
    }
}
