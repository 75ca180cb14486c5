//! Facts about the host skvm runs on: /dev/kvm, memory, and whether KVM
//! emulates guest kernel code (an "emulating host", such as kvm_pvm).

use std::path::Path;

use kvm_ioctls::Kvm;

/// Errors opening KVM.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// /dev/kvm is missing.
    #[error(
        "/dev/kvm does not exist: is the kvm module loaded and is this host able to virtualize?"
    )]
    NoKvm,
    /// /dev/kvm cannot be opened with our credentials.
    #[error("no permission to open /dev/kvm: run as root or as a member of the group owning it")]
    KvmPermission,
    /// Another open failure.
    #[error("cannot open /dev/kvm")]
    KvmOpen(#[source] kvm_ioctls::Error),
    /// The KVM API version is not the one skvm speaks.
    #[error("unsupported KVM API version {0} (need 12)")]
    KvmApi(i32),
}

/// Opens /dev/kvm with a clear message for the usual failures.
pub fn open_kvm() -> Result<Kvm, HostError> {
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENXIO | libc::ENODEV => HostError::NoKvm,
        libc::EACCES | libc::EPERM => HostError::KvmPermission,
        _ => HostError::KvmOpen(e),
    })?;
    let api = kvm.get_api_version();
    if api != 12 {
        return Err(HostError::KvmApi(api));
    }
    Ok(kvm)
}

/// Total host RAM in bytes, from /proc/meminfo.
pub fn host_mem_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo_total(&text)
}

fn parse_meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// This process's memory figures from /proc/self/status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelfMemory {
    /// Peak resident set (VmHWM).
    pub peak_rss_kib: u64,
    /// Resident shared memory now (RssShmem): guest RAM pages touched.
    pub shmem_kib: u64,
}

/// The VMM's own /proc status file, opened before its filter (which has no
/// open for it) and read again from the start for each figure.
pub struct SelfStatus(std::fs::File);

impl SelfStatus {
    /// Opens /proc/self/status.
    pub fn open() -> Option<Self> {
        std::fs::File::open("/proc/self/status").ok().map(Self)
    }

    /// Reads [`SelfMemory`].
    pub fn memory(&self) -> Option<SelfMemory> {
        use std::os::fd::AsFd;
        parse_status(&sandbox::process::read_from_start(self.0.as_fd())?)
    }
}

/// The VMM's /proc/self/task directory, opened before the VMM gives up its
/// view of the host's files, to list its threads and read their status.
pub struct Threads(std::fs::File);

impl Threads {
    /// Opens /proc/self/task.
    pub fn open() -> std::io::Result<Self> {
        std::fs::File::open("/proc/self/task").map(Self)
    }

    /// The ids of this process's threads now.
    pub fn ids(&self) -> std::io::Result<Vec<String>> {
        use std::os::fd::AsRawFd;
        // SAFETY: duplicates an fd we own; fdopendir takes the copy.
        let copy = unsafe { libc::fcntl(self.0.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if copy < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `copy` is an open directory fd that the stream now owns.
        let dir = unsafe { libc::fdopendir(copy) };
        if dir.is_null() {
            let e = std::io::Error::last_os_error();
            // SAFETY: closes the copy fdopendir did not take.
            unsafe { libc::close(copy) };
            return Err(e);
        }
        // The copy shares the file offset of earlier listings.
        // SAFETY: `dir` is a valid stream.
        unsafe { libc::rewinddir(dir) };
        let mut ids = Vec::new();
        loop {
            // SAFETY: `dir` is a valid stream; the entry stays valid until
            // the next readdir on it.
            let entry = unsafe { libc::readdir(dir) };
            if entry.is_null() {
                break;
            }
            // SAFETY: d_name is a NUL-terminated name inside the entry.
            let name = unsafe { std::ffi::CStr::from_ptr((*entry).d_name.as_ptr()) };
            let name = name.to_string_lossy();
            if name.bytes().all(|b| b.is_ascii_digit()) && !name.is_empty() {
                ids.push(name.into_owned());
            }
        }
        // SAFETY: closes the stream and the copy it owns.
        unsafe { libc::closedir(dir) };
        Ok(ids)
    }

    /// Thread `tid`'s status text, if it still exists.
    pub fn status(&self, tid: &str) -> Option<String> {
        use std::os::fd::AsFd;
        sandbox::process::read_under(self.0.as_fd(), &format!("{tid}/status"))
    }
}

/// The number after `key` (e.g. "VmRSS:") in a /proc status text, in KiB.
pub fn status_kib(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn parse_status(text: &str) -> Option<SelfMemory> {
    Some(SelfMemory {
        peak_rss_kib: status_kib(text, "VmHWM:")?,
        shmem_kib: status_kib(text, "RssShmem:")?,
    })
}

/// Whether this host's KVM runs guest kernel code through its instruction
/// emulator: the kvm_pvm module is loaded, or the CPU has neither VMX nor SVM.
pub fn is_emulating_host() -> bool {
    if Path::new("/sys/module/kvm_pvm").exists() {
        return true;
    }
    match std::fs::read_to_string("/proc/cpuinfo") {
        Ok(info) => !cpu_has_hw_virt(&info),
        Err(_) => false,
    }
}

fn cpu_has_hw_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_whitespace())
        .any(|f| f == "vmx" || f == "svm")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_total_is_parsed_in_bytes() {
        let t = "MemTotal:       24576000 kB\nMemFree: 1 kB\n";
        assert_eq!(parse_meminfo_total(t), Some(24_576_000 * 1024));
        assert_eq!(parse_meminfo_total("nothing"), None);
    }

    #[test]
    fn status_memory_fields_are_parsed() {
        let t = "VmHWM:\t  5000 kB\nRssAnon: 1 kB\nRssShmem:\t 3000 kB\n";
        assert_eq!(
            parse_status(t),
            Some(SelfMemory {
                peak_rss_kib: 5000,
                shmem_kib: 3000
            })
        );
    }

    #[test]
    fn hw_virt_flag_is_detected() {
        assert!(cpu_has_hw_virt("flags\t: fpu vmx sse\n"));
        assert!(cpu_has_hw_virt("flags\t: fpu svm\n"));
        assert!(!cpu_has_hw_virt("flags\t: fpu hypervisor sse\n"));
    }
}
