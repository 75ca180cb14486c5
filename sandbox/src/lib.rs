//! Process confinement for device processes and the VMM, applied in a fixed,
//! documented order: close fds, namespaces, pivot_root, no_new_privs, drop
//! capabilities, rlimits, seccomp last.
//!
//! - [`seccomp`]: syscall allowlists as data (each entry says why it is
//!   needed), compiled with seccompiler; kill-process by default.
//! - [`process`]: the steps before seccomp that apply to a freshly forked
//!   device process (closing fds, the parent-death signal, no_new_privs).

pub mod process;
pub mod seccomp;
