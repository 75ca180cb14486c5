//! What a run leaves behind when asked: the `--debug` summary and the
//! `SKVM_PROFILE` file.

use std::sync::atomic::Ordering;

use anyhow::{Context, Result};

use crate::vcpu::{self, VcpuStats};
use crate::{host, log};

/// The `--debug` lines at exit: exit statistics, the first KVM_RUN, memory.
pub(super) fn debug_summary(stats: &VcpuStats, own: Option<&host::SelfStatus>) {
    log::info(&stats.summary());
    log::info(&format!(
        "first KVM_RUN at unix-ns {}",
        stats.first_run_unix_ns.load(Ordering::Relaxed)
    ));
    if let Some(m) = own.and_then(host::SelfStatus::memory) {
        log::info(&format!(
            "memory: peak rss {} KiB, guest ram resident {} KiB, vmm overhead {} KiB",
            m.peak_rss_kib,
            m.shmem_kib,
            m.peak_rss_kib.saturating_sub(m.shmem_kib)
        ));
    }
}

/// Creates the `SKVM_PROFILE` file, if asked for one.
pub(super) fn profile_file() -> Result<Option<(std::path::PathBuf, std::fs::File)>> {
    let Some(path) = std::env::var_os("SKVM_PROFILE").map(std::path::PathBuf::from) else {
        return Ok(None);
    };
    let file = std::fs::File::create(&path)
        .with_context(|| format!("SKVM_PROFILE: cannot create {}", path.display()))?;
    Ok(Some((path, file)))
}

/// Writes the profile's "second rip count" lines to `file` (at `path`).
pub(super) fn write_profile(p: &vcpu::Profile, path: &std::path::Path, mut file: std::fs::File) {
    use std::io::Write;
    match file.write_all(p.render().as_bytes()) {
        Ok(()) => log::info(&format!("guest rip profile written to {}", path.display())),
        Err(e) => log::error(&format!("cannot write profile {}: {e}", path.display())),
    }
}
