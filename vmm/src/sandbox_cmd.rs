//! `skvm sandbox check` and `skvm sandbox show`: what this host supports, and
//! the effective seccomp policy of each device kind.

use std::process::ExitCode;

use clap::Subcommand;
use sandbox::seccomp::{Arg, Policy};

use crate::device_host::{policy, SeccompMode};

/// `skvm sandbox` subcommands.
#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Try each confinement step in a throwaway process and report what this
    /// host supports (exit status 1 if anything a device needs is missing).
    Check,
    /// Print the seccomp policy of a device kind: every allowed syscall with
    /// its reason and argument filters, and their count.
    Show {
        /// Device kind (rng, blk) or a device name (rng0, blk1).
        #[arg(value_name = "DEVICE")]
        device: String,
        /// The policy as this seccomp mode installs it (trap adds
        /// rt_sigreturn for its handler).
        #[arg(long, value_enum, value_name = "MODE", default_value_t = SeccompMode::Kill)]
        seccomp: SeccompMode,
    },
}

/// Runs a `skvm sandbox` subcommand.
pub fn run(cmd: &SandboxCommand) -> ExitCode {
    match cmd {
        SandboxCommand::Check => check(),
        SandboxCommand::Show { device, seccomp } => show(device, *seccomp),
    }
}

fn check() -> ExitCode {
    let probes = sandbox::jail::probe_host();
    let mut all = true;
    for p in &probes {
        if p.ok {
            println!("  ok    {}", p.what);
        } else {
            all = false;
            println!("  FAIL  {}: {}", p.what, p.detail);
        }
    }
    if all {
        println!("device processes can be fully confined on this host");
        ExitCode::SUCCESS
    } else {
        println!(
            "device processes cannot be fully confined here: `skvm run` refuses to start \
             devices unless given --sandbox-degraded allow"
        );
        ExitCode::from(1)
    }
}

fn describe(a: &Arg) -> String {
    match a {
        Arg::Eq(i, v) => format!("arg{i} == {v:#x}"),
        Arg::NoBits(i, m) => format!("arg{i} & {m:#x} == 0"),
    }
}

/// The policy of device `name` (or kind) in `mode`.
pub fn policy_of(name: &str, mode: SeccompMode) -> Option<Policy> {
    let mut p = policy::for_kind(crate::device_host::kind_of(name))?;
    if mode == SeccompMode::Trap {
        p.extend(policy::TRAP_EXTRA);
    }
    Some(p)
}

fn show(name: &str, mode: SeccompMode) -> ExitCode {
    let Some(p) = policy_of(name, mode) else {
        crate::log::error(&format!(
            "no seccomp policy for '{name}': device kinds are rng and blk"
        ));
        return ExitCode::from(1);
    };
    let kind = crate::device_host::kind_of(name);
    let action = match mode {
        SeccompMode::Kill => "kill the process",
        SeccompMode::Trap => "fail with ENOSYS and report to skvm",
        SeccompMode::Log => "log and allow",
    };
    let list = p.syscalls();
    println!(
        "{kind}: {} syscalls allowed (x86_64); anything else: {action}",
        list.len()
    );
    for s in &list {
        let rules = if s.rules.is_empty() {
            String::new()
        } else {
            let alts: Vec<String> = s
                .rules
                .iter()
                .map(|alt| alt.iter().map(describe).collect::<Vec<_>>().join(" && "))
                .collect();
            format!(" [only if {}]", alts.join(" || "))
        };
        println!("  {:<14} {}{rules}", s.name, s.why);
    }
    ExitCode::SUCCESS
}
