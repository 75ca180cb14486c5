//! Process confinement for device processes and the VMM, applied in a fixed,
//! documented order: close fds, namespaces, pivot_root, no_new_privs, drop
//! capabilities, rlimits, seccomp last.
//!
//! - [`seccomp`]: syscall allowlists as data (each entry says why it is
//!   needed), compiled with seccompiler; kill-process by default.
//! - [`process`]: the steps before seccomp that apply to a freshly forked
//!   device process (closing fds, the parent-death signal, its name).
//! - [`jail`]: namespaces, the empty read-only root, capabilities,
//!   no_new_privs, resource limits, and a probe of what the host supports.
//! - [`share`]: a shared directory as a device's root, in place of the
//!   empty one.
//! - [`syscalls`]: syscall names, for reports.
//! - [`bpf`]: a classic-BPF interpreter, to ask a compiled filter what it
//!   answers without installing it.

pub mod bpf;
pub mod jail;
pub mod process;
pub mod seccomp;
pub mod share;
pub mod syscalls;
