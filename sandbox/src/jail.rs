//! The process-level confinement of a device process, the steps that come
//! before seccomp: namespaces, an empty read-only root, no capabilities, no
//! new privileges, tight resource limits.
//!
//! The order (see docs/ARCHITECTURE.md, "Confinement"):
//!
//! 1. the spawner closes every fd the device is not given;
//! 2. the spawner creates the process in new user, pid, mount, net, ipc and
//!    uts namespaces ([`clone_into_namespaces`]) and maps its root to an
//!    unprivileged host user ([`write_id_maps`]);
//! 3. the device process moves into an empty, read-only root
//!    ([`enter_empty_root`]);
//! 4. sets no_new_privs ([`no_new_privs`]);
//! 5. drops every capability, the bounding and ambient sets included
//!    ([`drop_capabilities`]);
//! 6. lowers its resource limits ([`limit_resources`]);
//! 7. installs its seccomp filter, last ([`crate::seccomp`]).
//!
//! The VMM takes the same steps on itself once its files are open
//! ([`confine_vmm`]): its own mount (ipc, uts) namespaces and empty root, an
//! unprivileged user, no capabilities, no_new_privs; its seccomp filters
//! follow per thread.

use std::ffi::CStr;
use std::io;
use std::os::fd::AsRawFd;

/// The namespaces a device process gets.
pub const NAMESPACES: libc::c_int = libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS;

/// Host user a device's root is mapped to when skvm runs as root: nobody.
pub const UNPRIVILEGED_ID: u32 = 65534;

pub(crate) fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Forks like fork(2), the child in new namespaces `flags`. Returns the
/// child's pid in the parent and 0 in the child.
///
/// # Safety
///
/// As fork: call it from a single-threaded process; the child may only make
/// async-signal-safe calls until it execs or exits.
pub unsafe fn clone_into_namespaces(flags: libc::c_int) -> io::Result<libc::pid_t> {
    // Without a new stack, clone(2) behaves as fork(2) (copy-on-write).
    let raw = libc::c_ulong::try_from(flags | libc::SIGCHLD)
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: the caller upholds fork's rules; no stack or TLS pointers are
    // passed, so the child continues on a copy of this stack.
    let pid = unsafe { libc::syscall(libc::SYS_clone, raw, 0usize, 0usize, 0usize, 0usize) };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// The host user and group a namespaced device's root maps to, and the
/// VMM drops to once its files are open: what [`set_outside_ids`] chose
/// (`skvm run --user`), else nobody when skvm is root, else skvm's own (an
/// unprivileged user can map only itself). Read once: the VMM asks again for
/// every restart, when its filter no longer allows asking the kernel.
pub fn outside_ids() -> (u32, u32) {
    *OUTSIDE.get_or_init(|| {
        // SAFETY: geteuid and getegid cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        if uid == 0 {
            (UNPRIVILEGED_ID, UNPRIVILEGED_ID)
        } else {
            (uid, gid)
        }
    })
}

static OUTSIDE: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();

/// Chooses [`outside_ids`] (before the spawner is forked, so both agree).
/// Root (0) is refused, and so is a change once they were read or chosen.
pub fn set_outside_ids(uid: u32, gid: u32) -> io::Result<()> {
    if uid == 0 || gid == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "user and group 0 would keep root",
        ));
    }
    if OUTSIDE.set((uid, gid)).is_err() && outside_ids() != (uid, gid) {
        return Err(io::Error::other("the unprivileged ids were chosen already"));
    }
    Ok(())
}

/// Writes `data` to an existing /proc file of `pid`, opened write-only
/// without O_CREAT or O_TRUNC (the spawner's filter refuses those).
fn write_proc(pid: libc::pid_t, file: &str, data: &str) -> io::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/{file}"))
        .and_then(|mut f| f.write_all(data.as_bytes()))
        .map_err(|e| io::Error::new(e.kind(), format!("/proc/{pid}/{file}: {e}")))
}

/// Maps root in the user namespace of `pid` to `uid`/`gid` outside (one id
/// each; groups are denied).
pub fn write_id_maps(pid: libc::pid_t, uid: u32, gid: u32) -> io::Result<()> {
    write_proc(pid, "setgroups", "deny")?;
    write_proc(pid, "gid_map", &format!("0 {gid} 1\n"))?;
    write_proc(pid, "uid_map", &format!("0 {uid} 1\n"))
}

pub(crate) fn mount(
    src: &CStr,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    // SAFETY: every pointer is a valid C string or null.
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.map_or(std::ptr::null(), CStr::as_ptr),
            flags,
            data.map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    })
}

/// Makes the mount at `dir` the root of this mount namespace and detaches
/// the old root, leaving the working directory at the new root.
pub(crate) fn pivot_to(dir: &CStr) -> io::Result<()> {
    // SAFETY: chdir on a valid C string.
    check(unsafe { libc::chdir(dir.as_ptr()) })?;
    // pivot_root(".", ".") stacks the old root on the new one; detaching
    // it leaves the new root alone.
    // SAFETY: pivot_root on valid C strings.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: umount2 on a valid C string.
    check(unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) })?;
    // SAFETY: chdir on a valid C string.
    check(unsafe { libc::chdir(c"/".as_ptr()) })
}

/// Makes an empty tmpfs the root of this mount namespace, read-only, with
/// the old root detached: nothing of the host's file systems stays
/// reachable. The process must be in its own mount namespace.
pub fn enter_empty_root() -> io::Result<()> {
    // Mount events must not propagate back to the host.
    mount(c"none", c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)?;
    let base = c"/tmp";
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount(
        c"skvm-empty",
        base,
        Some(c"tmpfs"),
        flags,
        Some(c"size=4k,nr_inodes=2,mode=0555"),
    )?;
    pivot_to(base)?;
    mount(
        c"none",
        c"/",
        None,
        libc::MS_REMOUNT | libc::MS_RDONLY | flags,
        None,
    )
}

/// Sets no_new_privs: exec can never gain privileges again.
pub fn no_new_privs() -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
}

/// Whether no_new_privs is set on the calling thread.
fn no_new_privs_set() -> bool {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1 }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// Drops every capability: the bounding set (as far as the kernel knows
/// capabilities), the ambient set, then effective, permitted and
/// inheritable.
pub fn drop_capabilities() -> io::Result<()> {
    drop_bounding_and_ambient()?;
    clear_capability_sets()
}

/// Empties the bounding and ambient sets (which needs CAP_SETPCAP, so it
/// comes before anything that loses it).
fn drop_bounding_and_ambient() -> io::Result<()> {
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            let e = io::Error::last_os_error();
            // EINVAL: past the last capability this kernel has.
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            // EPERM: no CAP_SETPCAP, as in a device forked without
            // namespaces by a spawner that left root. Such a process holds
            // no capability and runs with no_new_privs, so its bounding set
            // can give it none.
            if e.raw_os_error() == Some(libc::EPERM)
                && !has_capability_sets()?
                && no_new_privs_set()
            {
                break;
            }
            return Err(e);
        }
    }
    // SAFETY: prctl with integer arguments.
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    })
}

/// Empties the effective, permitted and inheritable sets.
fn clear_capability_sets() -> io::Result<()> {
    let header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset reads a header and two data structs of the v3 layout.
    let rc = unsafe { libc::syscall(libc::SYS_capset, std::ptr::from_ref(&header), data.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The namespaces the VMM enters once its files are open (as root; an
/// ordinary user adds a user namespace to be allowed to).
pub const VMM_NAMESPACES: libc::c_int = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;

/// How [`confine_vmm`] left the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmmIdentity {
    /// Real, effective and saved user id.
    pub uid: u32,
    /// Real, effective and saved group id.
    pub gid: u32,
    /// Whether it entered a user namespace of its own (started as an
    /// ordinary user).
    pub own_user_namespace: bool,
}

/// Takes every privilege from the calling process, the VMM, once it holds
/// what it needs as fds (/dev/kvm, guest memory, images, taps, the control
/// socket): with `namespaces`, new mount, ipc and uts namespaces (and a user
/// namespace when not root, mapping only its own ids) with an empty
/// read-only root, so that nothing of the host's file systems is reachable
/// by path; then, as root, user and group `uid`:`gid` with no supplementary
/// groups; every capability dropped (the bounding and ambient sets too,
/// where the process may: an ordinary user without namespaces has no
/// capability to drop); not dumpable; no_new_privs.
///
/// # Safety
///
/// The process must have a single thread: credentials and namespaces
/// change for the calling thread only (threads started later inherit them).
pub unsafe fn confine_vmm(uid: u32, gid: u32, namespaces: bool) -> io::Result<VmmIdentity> {
    // SAFETY: these getters cannot fail.
    let (euid, own_uid, own_gid) = unsafe { (libc::geteuid(), libc::getuid(), libc::getgid()) };
    let root = euid == 0;
    if !root && (uid, gid) != (own_uid, own_gid) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("only root can run as another user ({uid}:{gid})"),
        ));
    }
    let own_user_namespace = namespaces && !root;
    if namespaces && root {
        // SAFETY: unshare with flags only.
        check(unsafe { libc::unshare(VMM_NAMESPACES) })?;
    } else if own_user_namespace {
        // SAFETY: unshare with flags only.
        check(unsafe { libc::unshare(libc::CLONE_NEWUSER | VMM_NAMESPACES) })?;
        std::fs::write("/proc/self/setgroups", "deny")?;
        std::fs::write("/proc/self/uid_map", format!("{uid} {uid} 1\n"))?;
        std::fs::write("/proc/self/gid_map", format!("{gid} {gid} 1\n"))?;
    }
    if namespaces {
        enter_empty_root()?;
    }
    // Without CAP_SETPCAP (an ordinary user outside a user namespace of its
    // own) the bounding set cannot shrink; such a process has no capability.
    if root || own_user_namespace {
        drop_bounding_and_ambient()?;
    }
    if root {
        set_ids(uid, gid)?;
    }
    clear_capability_sets()?;
    let ids_dropped = seal(uid)?;
    let caps_left = if root || own_user_namespace {
        has_capabilities()?
    } else {
        has_capability_sets()?
    };
    if !ids_dropped || caps_left {
        return Err(io::Error::other("privileges remain after dropping them"));
    }
    Ok(VmmIdentity {
        uid,
        gid,
        own_user_namespace,
    })
}

/// Makes the calling thread (root) user `uid` and group `gid` in every
/// id, with no supplementary groups. Leaving uid 0 clears the permitted,
/// effective and ambient capability sets; the bounding set stays as it was.
fn set_ids(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: setgroups with an empty list.
    check(unsafe { libc::setgroups(0, std::ptr::null()) })?;
    // SAFETY: plain ids.
    check(unsafe { libc::setresgid(gid, gid, gid) })?;
    // SAFETY: plain ids.
    check(unsafe { libc::setresuid(uid, uid, uid) })
}

/// The last steps of a privilege drop: not dumpable (a change of ids resets
/// that to the host's suid_dumpable, which may allow dumps), no_new_privs;
/// then whether the real, effective and saved user ids are all `uid`.
fn seal(uid: u32) -> io::Result<bool> {
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) })?;
    no_new_privs()?;
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: getresuid writes three ids.
    check(unsafe { libc::getresuid(&mut r, &mut e, &mut s) })?;
    Ok([r, e, s] == [uid; 3])
}

/// Takes root from the spawner: user `uid`:`gid` (the VM's unprivileged
/// user, [`outside_ids`]), no capabilities, not dumpable, no_new_privs.
/// Its bounding set stays full, because device processes take their
/// capabilities inside their own user namespaces from it at exec (and drop
/// them all once their empty root is built); with no_new_privs and no
/// permitted capabilities, the set can give the spawner nothing.
///
/// # Safety
///
/// The process must have a single thread (ids change for the calling
/// thread only).
pub unsafe fn drop_root_keeping_bounding(uid: u32, gid: u32) -> io::Result<()> {
    if uid == 0 || gid == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "user and group 0 would keep root",
        ));
    }
    set_ids(uid, gid)?;
    clear_capability_sets()?;
    if !seal(uid)? || has_capability_sets()? {
        return Err(io::Error::other("privileges remain after dropping them"));
    }
    Ok(())
}

/// Whether user `uid`:`gid`, without capabilities, may create a user
/// namespace on this host (some hosts allow that to root only, through
/// `kernel.unprivileged_userns_clone`, `user.max_user_namespaces` or an LSM).
/// Tried in a throwaway child; call it while the process has a single
/// thread.
pub fn unprivileged_user_namespaces(uid: u32, gid: u32) -> bool {
    in_child(0, || {
        set_ids(uid, gid)?;
        // SAFETY: unshare with a flag only, in the throwaway child.
        check(unsafe { libc::unshare(libc::CLONE_NEWUSER) })
    })
    .is_ok()
}

/// Whether this process has any capability left in its effective,
/// permitted or bounding set.
pub fn has_capabilities() -> io::Result<bool> {
    if has_capability_sets()? {
        return Ok(true);
    }
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments.
        match unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) } {
            1 => return Ok(true),
            0 => {}
            _ => break,
        }
    }
    Ok(false)
}

/// Whether this process has any capability in its effective or permitted
/// set.
fn has_capability_sets() -> io::Result<bool> {
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capget fills a header and two data structs of the v3 layout.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capget,
            std::ptr::from_mut(&mut header),
            data.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(data.iter().any(|d| d.effective != 0 || d.permitted != 0))
}

/// A resource limit to set (soft and hard).
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    /// `libc::RLIMIT_*`.
    pub resource: libc::__rlimit_resource_t,
    /// The value.
    pub value: u64,
}

/// Sets each limit as both soft and hard limit (it cannot be raised again).
pub fn limit_resources(limits: &[Limit]) -> io::Result<()> {
    for l in limits {
        let r = libc::rlimit {
            rlim_cur: l.value,
            rlim_max: l.value,
        };
        // SAFETY: setrlimit reads one rlimit struct.
        check(unsafe { libc::setrlimit(l.resource, &r) })?;
    }
    Ok(())
}

/// The most private writable memory (RLIMIT_DATA: heap, anonymous and
/// private file mappings, not the stack nor MAP_SHARED mappings, so not
/// guest RAM) a device process may have: 32 MiB. Measured during a guest
/// run that moved data through each kind (docs/ARCHITECTURE.md,
/// "Confinement of device processes"), rng, blk and net processes, which
/// are the dynamically linked skvm binary re-exec'd, stay near 250 KiB
/// (the binary's and libraries' data, glibc's first 132 KiB of heap, a
/// frame or a 64 KiB zero buffer at a time). 32 MiB is over 100 times
/// that, room for a model that grows a little, and still small enough
/// that a device allocating without bound is stopped long before the
/// host notices.
pub const DEVICE_DATA_LIMIT: u64 = 32 << 20;

/// The limits of a device process: at most `max_files` fds (a few for
/// most kinds; a shared directory's nodes), no new processes, no core
/// dumps, [`DEVICE_DATA_LIMIT`] of private memory, and no file written
/// past `max_file_size` bytes (0 for a device that writes no file; a
/// disk's image size). A write at or past that offset raises SIGXFSZ; one
/// that crosses it is cut short.
pub fn device_limits(max_file_size: u64, max_files: u64) -> Vec<Limit> {
    vec![
        Limit {
            resource: libc::RLIMIT_NOFILE,
            value: max_files,
        },
        Limit {
            resource: libc::RLIMIT_NPROC,
            value: 0,
        },
        Limit {
            resource: libc::RLIMIT_CORE,
            value: 0,
        },
        Limit {
            resource: libc::RLIMIT_FSIZE,
            value: max_file_size,
        },
        Limit {
            resource: libc::RLIMIT_DATA,
            value: DEVICE_DATA_LIMIT,
        },
    ]
}

/// One thing `skvm sandbox check` tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// What was tried.
    pub what: &'static str,
    /// Whether it worked.
    pub ok: bool,
    /// The error, if it failed.
    pub detail: String,
}

/// Runs `f` in a forked child and reports whether it returned Ok; the
/// child's error text comes back through a pipe.
pub(crate) fn in_child(
    flags: libc::c_int,
    f: impl FnOnce() -> io::Result<()>,
) -> Result<(), String> {
    let (rd, wr) = crate::process::pipe().map_err(|e| e.to_string())?;
    // SAFETY: callers run this before starting threads (`skvm sandbox
    // check` is single-threaded); the child exits without returning.
    let pid = unsafe { clone_into_namespaces(flags) }.map_err(|e| e.to_string())?;
    if pid == 0 {
        let code = match f() {
            Ok(()) => 0,
            Err(e) => {
                let msg = e.to_string();
                // SAFETY: writes a buffer of its own length.
                unsafe { libc::write(wr.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
                1
            }
        };
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    drop(wr);
    let mut buf = [0u8; 256];
    // SAFETY: reads into a buffer of its size.
    let n = unsafe { libc::read(rd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    drop(rd);
    let mut status = 0;
    // SAFETY: reaps our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        let len = usize::try_from(n).unwrap_or(0);
        Err(String::from_utf8_lossy(buf.get(..len).unwrap_or_default()).into_owned())
    }
}

/// Tries the VMM's confinement ([`confine_vmm`], to [`outside_ids`]) in a
/// throwaway child. Call it while the process has a single thread.
pub fn probe_vmm() -> Probe {
    let (uid, gid) = outside_ids();
    // SAFETY: the child has a single thread (the caller's promise).
    let r = in_child(0, || unsafe { confine_vmm(uid, gid, true) }.map(|_| ()));
    Probe {
        what: "own mount namespace, empty root, unprivileged user, no capabilities",
        ok: r.is_ok(),
        detail: r.err().unwrap_or_default(),
    }
}

/// Tries each step of a device process's confinement in a throwaway child
/// and reports what this host supports. Call it while the process has a
/// single thread.
pub fn probe_host() -> Vec<Probe> {
    let mut out = Vec::new();
    let mut record = |what, r: Result<(), String>| {
        out.push(Probe {
            what,
            ok: r.is_ok(),
            detail: r.err().unwrap_or_default(),
        });
    };
    for (what, flag) in [
        ("user namespace", libc::CLONE_NEWUSER),
        ("pid namespace", libc::CLONE_NEWPID),
        ("mount namespace", libc::CLONE_NEWNS),
        ("net namespace", libc::CLONE_NEWNET),
        ("ipc namespace", libc::CLONE_NEWIPC),
        ("uts namespace", libc::CLONE_NEWUTS),
    ] {
        // Alone as root; inside a new user namespace otherwise.
        // SAFETY: geteuid cannot fail.
        let flags = if flag == libc::CLONE_NEWUSER || unsafe { libc::geteuid() } == 0 {
            flag
        } else {
            flag | libc::CLONE_NEWUSER
        };
        record(what, in_child(flags, || Ok(())));
    }
    record(
        "empty read-only root (pivot_root)",
        in_child(libc::CLONE_NEWUSER | libc::CLONE_NEWNS, enter_empty_root),
    );
    record("all namespaces together", in_child(NAMESPACES, || Ok(())));
    // A device process drops its capabilities inside its user namespace,
    // which is where an ordinary user has any to drop.
    // SAFETY: geteuid cannot fail.
    let own_ns = if unsafe { libc::geteuid() } == 0 {
        0
    } else {
        libc::CLONE_NEWUSER
    };
    record(
        "no_new_privs and dropping capabilities",
        in_child(own_ns, || {
            no_new_privs()?;
            drop_capabilities()?;
            if has_capabilities()? {
                return Err(io::Error::other("capabilities remain"));
            }
            Ok(())
        }),
    );
    record(
        "seccomp filter",
        in_child(0, || {
            no_new_privs()?;
            let p = crate::seccomp::Policy::new(&[]);
            let prog = p
                .compile(crate::seccomp::Violation::Log)
                .map_err(io::Error::other)?;
            seccompiler::apply_filter(&prog).map_err(io::Error::other)
        }),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_limits_cap_file_size_and_private_memory() {
        let value = |v: &[Limit], r| v.iter().find(|l| l.resource == r).map(|l| l.value);
        assert_eq!(value(&device_limits(0, 64), libc::RLIMIT_FSIZE), Some(0));
        assert_eq!(
            value(&device_limits(1 << 20, 64), libc::RLIMIT_FSIZE),
            Some(1 << 20)
        );
        let data = value(&device_limits(0, 64), libc::RLIMIT_DATA);
        assert_eq!(data, Some(DEVICE_DATA_LIMIT));
    }

    #[test]
    fn a_child_under_the_data_limit_cannot_allocate_past_it() {
        // The limit as a device process gets it, in a forked child: a
        // private mapping as large as the limit is refused, and a shared
        // one (as guest RAM is mapped) does not count. (Whether a small
        // one works depends on the test harness's own threads' stacks,
        // which count too.)
        let r = in_child(0, || {
            limit_resources(&device_limits(0, 64))?;
            let map = |len: usize, flags| {
                // SAFETY: an anonymous mapping at an address of the
                // kernel's choice, unmapped at once when it worked.
                unsafe {
                    let p = libc::mmap(
                        std::ptr::null_mut(),
                        len,
                        libc::PROT_READ | libc::PROT_WRITE,
                        flags | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    );
                    if p == libc::MAP_FAILED {
                        return false;
                    }
                    libc::munmap(p, len);
                    true
                }
            };
            let limit = usize::try_from(DEVICE_DATA_LIMIT).map_err(io::Error::other)?;
            if map(limit, libc::MAP_PRIVATE) {
                return Err(io::Error::other("a private mapping past the limit worked"));
            }
            if !map(4 * limit, libc::MAP_SHARED) {
                return Err(io::Error::other("a shared mapping was refused"));
            }
            Ok(())
        });
        assert_eq!(r, Ok(()));
    }

    #[test]
    fn outside_ids_are_never_root() {
        let (uid, gid) = outside_ids();
        assert_ne!(uid, 0);
        assert_ne!(gid, 0);
    }

    #[test]
    fn a_confined_child_sees_an_empty_root_and_has_no_capabilities() {
        // Runs the real steps in a child, as the device process does.
        let r = in_child(NAMESPACES & !libc::CLONE_NEWPID, || {
            enter_empty_root()?;
            no_new_privs()?;
            drop_capabilities()?;
            if has_capabilities()? {
                return Err(io::Error::other("capabilities remain"));
            }
            let entries = std::fs::read_dir("/")?.count();
            if entries != 0 {
                return Err(io::Error::other(format!("{entries} entries in /")));
            }
            if std::fs::File::create("/x").is_ok() {
                return Err(io::Error::other("the root is writable"));
            }
            if std::fs::metadata("/etc/passwd").is_ok() {
                return Err(io::Error::other("/etc/passwd is reachable"));
            }
            Ok(())
        });
        assert_eq!(r, Ok(()));
    }
}
