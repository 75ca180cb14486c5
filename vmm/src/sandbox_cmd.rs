//! `skvm sandbox check` and `skvm sandbox show`: what this host supports, and
//! the effective seccomp policy of each device kind.

use std::process::ExitCode;

use clap::Subcommand;
use sandbox::seccomp::{Arg, Policy, Syscall};

use crate::device_host::{policy, SeccompMode};
use crate::kinds::Registry;
use crate::vmm_sandbox::{self, ThreadKind, VmmSandbox};

/// `skvm sandbox` subcommands.
#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Try each confinement step in a throwaway process and report what this
    /// host supports (exit status 1 if anything a device needs is missing).
    Check,
    /// Print an effective seccomp filter: for a device kind, every allowed
    /// syscall with its reason and argument filters, and their count; for
    /// `vmm`, the same for each kind of VMM thread (main, vcpu, device),
    /// and what each --sandbox group adds.
    Show {
        /// Device kind (rng, blk, net), a device name (rng0, blk1, net0), or vmm.
        #[arg(value_name = "DEVICE|vmm")]
        device: String,
        /// The filter as this seccomp mode installs it (trap adds
        /// rt_sigreturn to device policies for their handler).
        #[arg(long, value_enum, value_name = "MODE", default_value_t = SeccompMode::Kill)]
        seccomp: SeccompMode,
        /// For vmm: the --sandbox value to show the filter of.
        #[arg(
            long,
            value_name = "on|off[,GROUP=allow|deny]...",
            default_value = "on"
        )]
        sandbox: VmmSandbox,
    },
}

/// Runs a `skvm sandbox` subcommand over the device kinds `kinds`.
pub fn run(cmd: &SandboxCommand, kinds: &Registry) -> ExitCode {
    // These commands only print: like any listing tool, end quietly when
    // the reader goes away (`skvm sandbox show blk | head -1`) instead of
    // failing on EPIPE.
    // SAFETY: restores the default action of one signal; no handler runs.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    match cmd {
        SandboxCommand::Check => check(),
        SandboxCommand::Show {
            device,
            seccomp,
            sandbox,
        } => {
            if device == "vmm" {
                show_vmm(sandbox, *seccomp)
            } else {
                show(kinds, device, *seccomp)
            }
        }
    }
}

fn check() -> ExitCode {
    let (uid, gid) = sandbox::jail::outside_ids();
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    println!(
        "as {}: device processes' root maps to {uid}:{gid}, the VMM runs as {uid}:{gid}",
        if root { "root" } else { "an ordinary user" }
    );
    let print = |p: &sandbox::jail::Probe| {
        if p.ok {
            println!("  ok    {}", p.what);
        } else {
            println!("  FAIL  {}: {}", p.what, p.detail);
        }
        p.ok
    };
    println!("device processes:");
    // Every probe is printed, failed or not.
    let mut devices = true;
    for p in &sandbox::jail::probe_host() {
        devices &= print(p);
    }
    println!("the VMM, once its files are open:");
    let vmm = print(&sandbox::jail::probe_vmm());
    if root {
        println!("the spawner, once it is set up:");
        // It leaves root only where its user may create the devices' user
        // namespaces; elsewhere it warns and stays root.
        let ok = sandbox::jail::unprivileged_user_namespaces(uid, gid);
        print(&sandbox::jail::Probe {
            what: "leaves root for the VM's user (who must be allowed user namespaces)",
            ok,
            detail: format!(
                "user {uid} may not create user namespaces here: the spawner stays root"
            ),
        });
    }
    if devices {
        println!("device processes can be fully confined on this host");
    } else {
        println!(
            "device processes cannot be fully confined here: `skvm run` refuses to start \
             devices unless given --sandbox-degraded allow"
        );
    }
    if vmm {
        println!("the VMM can give up every privilege on this host");
    } else {
        println!(
            "the VMM cannot leave the host's file system here: `skvm run` refuses to start \
             unless given --sandbox-degraded allow (it then only drops its user and capabilities)"
        );
    }
    if devices && vmm {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn describe(a: &Arg) -> String {
    match a {
        Arg::Eq(i, v) => format!("arg{i} == {v:#x}"),
        Arg::NoBits(i, m) => format!("arg{i} & {m:#x} == 0"),
        Arg::Ne(i, v) => format!("arg{i} != {v:#x}"),
        Arg::AllBits(i, m) => format!("arg{i} & {m:#x} == {m:#x}"),
    }
}

/// The policy of device `name` (or kind) in `mode`.
pub fn policy_of(kinds: &Registry, name: &str, mode: SeccompMode) -> Option<Policy> {
    let mut p = policy::for_kind(kinds.kind_of(name)?.as_ref())?;
    if mode == SeccompMode::Trap {
        p.extend(policy::TRAP_EXTRA);
    }
    Some(p)
}

fn action_text(mode: SeccompMode) -> &'static str {
    match mode {
        SeccompMode::Kill => "kill the process",
        SeccompMode::Trap => "fail with ENOSYS and report to skvm",
        SeccompMode::Log => "log and allow",
    }
}

/// The line for the guard every filter starts with (sandbox::seccomp).
fn x32_line(mode: SeccompMode) -> String {
    let refusal = match mode {
        SeccompMode::Log => "fail with ENOSYS",
        other => action_text(other),
    };
    format!("x32 calls (number | 0x40000000), before any rule: {refusal}")
}

fn rules_text(s: &Syscall) -> String {
    if s.rules.is_empty() {
        return String::new();
    }
    let alts: Vec<String> = s
        .rules
        .iter()
        .map(|alt| alt.iter().map(describe).collect::<Vec<_>>().join(" && "))
        .collect();
    format!(" [only if {}]", alts.join(" || "))
}

/// One line per call `p` allows (with its argument rules), then one per
/// call that fails with ENOSYS; names padded to `width`.
fn print_calls(p: &Policy, width: usize) {
    for s in &p.syscalls() {
        println!("  {:<width$} {}{}", s.name, s.why, rules_text(s));
    }
    for s in p.enosys() {
        println!("  {:<width$} fails with ENOSYS: {}", s.name, s.why);
    }
}

fn show_vmm(sb: &VmmSandbox, mode: SeccompMode) -> ExitCode {
    if !sb.on {
        println!("vmm: --sandbox off: no seccomp filter on the VMM");
        return ExitCode::SUCCESS;
    }
    println!(
        "vmm: --sandbox {sb}: one allowlist per thread kind (x86_64); anything else: {}",
        action_text(mode)
    );
    for kind in [ThreadKind::Main, ThreadKind::Vcpu, ThreadKind::Device] {
        let p = sb.policy_of(kind);
        let list = p.syscalls();
        let note = match kind {
            ThreadKind::Main => "; with --device-mode thread, also what its device threads need",
            ThreadKind::Vcpu => "",
            ThreadKind::Device => "; plus its kind's own calls (`skvm sandbox show KIND`)",
        };
        println!(
            "{} threads: {} syscalls allowed{note}",
            kind.name(),
            list.len()
        );
        print_calls(&p, 20);
    }
    for (what, p) in [
        (
            "spawner process (its device processes keep it under their own until they exit)",
            vmm_sandbox::spawner_policy(),
        ),
        (
            "socket remover process (with --ctl)",
            vmm_sandbox::remover_policy(),
        ),
        (
            "vsock connector process (with --vsock)",
            vmm_sandbox::connector_policy(),
        ),
    ] {
        println!("{what}: {} syscalls allowed", p.syscalls().len());
        print_calls(&p, 20);
    }
    for (group, list) in sb.allowed_groups() {
        println!("{group}=allow adds to every thread's list:");
        for s in list {
            println!("  {:<20} {}", s.name, s.why);
        }
    }
    let denied: Vec<&str> = sb.denied_groups().iter().map(|(n, _)| *n).collect();
    if !denied.is_empty() {
        println!("groups left denied (on no list): {}", denied.join(" "));
    }
    let never: Vec<&str> = vmm_sandbox::NEVER.iter().map(|s| s.name).collect();
    println!(
        "never allowed on a VMM thread, by any group: {}",
        never.join(" ")
    );
    println!("{}", x32_line(mode));
    ExitCode::SUCCESS
}

fn show(kinds: &Registry, name: &str, mode: SeccompMode) -> ExitCode {
    let Some(p) = policy_of(kinds, name, mode) else {
        let confined: Vec<&str> = kinds
            .kinds()
            .filter(|k| k.confinement().is_some())
            .map(|k| k.name())
            .collect();
        crate::log::error(&format!(
            "no seccomp policy for '{name}': device kinds are {}, or vmm",
            confined.join(", ")
        ));
        return ExitCode::from(1);
    };
    let kind = name.trim_end_matches(|c: char| c.is_ascii_digit());
    println!(
        "{kind}: {} syscalls allowed (x86_64); anything else: {}",
        p.syscalls().len(),
        action_text(mode)
    );
    print_calls(&p, 14);
    println!("{}", x32_line(mode));
    ExitCode::SUCCESS
}
