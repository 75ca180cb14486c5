//! Syscall names for reports: "openat" rather than 257.

include!(concat!(env!("OUT_DIR"), "/syscall_names.rs"));

/// The name of x86_64 syscall `nr`, or `None` if unknown.
pub fn name(nr: i64) -> Option<&'static str> {
    SYSCALL_NAMES
        .binary_search_by_key(&nr, |(n, _)| *n)
        .ok()
        .and_then(|i| SYSCALL_NAMES.get(i))
        .map(|(_, name)| *name)
}

/// `nr`'s name, or "syscall NR".
pub fn describe(nr: i64) -> String {
    name(nr).map_or_else(|| format!("syscall {nr}"), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_syscalls_have_names() {
        assert_eq!(name(libc::SYS_openat), Some("openat"));
        assert_eq!(name(libc::SYS_read), Some("read"));
        assert_eq!(describe(100_000), "syscall 100000");
    }
}
