//! skvm: a multi-process secure KVM hypervisor.
//!
//! `skvm run` boots a Linux guest with a serial console. See
//! docs/ARCHITECTURE.md for the process model and a code map.

mod boot;
mod config;
mod console;
mod exit;
mod host;
mod legacy;
mod log;
mod memory;
mod vcpu;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use config::{RunArgs, VmConfig};
use exit::ExitReason;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(&args),
    }
}

fn run(args: &RunArgs) -> ExitCode {
    log::set_debug(args.debug || std::env::var_os("SKVM_DEBUG").is_some());
    let result = VmConfig::from_args(args)
        .map_err(anyhow::Error::from)
        .and_then(|cfg| vm::run(&cfg, log::debug_enabled()));
    match result {
        Ok(reason) => {
            match &reason {
                ExitReason::GuestPanic(msg) => log::error(&format!("guest kernel panic: {msg}")),
                ExitReason::Fatal(msg) => log::error(msg),
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
