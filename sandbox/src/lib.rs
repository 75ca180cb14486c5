//! Process confinement for device processes and the VMM, applied in a fixed,
//! documented order: close fds, namespaces, pivot_root, no_new_privs, drop
//! capabilities, rlimits, seccomp last.
