//! Process-level steps that come before seccomp: keeping only the fds a
//! process needs, dying with its parent, and naming it for `ps`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// A process known by a pidfd: signals reach that process and no other,
/// even after it has exited and its pid was given to a new one.
#[derive(Debug)]
pub struct Pidfd {
    pid: libc::pid_t,
    fd: OwnedFd,
    /// The process's /proc status file, opened by its parent before it
    /// could be reaped: read again from the start for fresh figures, with
    /// no path lookup (the VMM's filter has no open for it).
    status: Option<OwnedFd>,
}

impl Pidfd {
    /// A pidfd for `pid`, which the caller knows is its own unreaped child
    /// (so the pid cannot have been reused yet).
    pub fn open(pid: libc::pid_t) -> io::Result<Self> {
        // SAFETY: pidfd_open with integer arguments.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let fd = RawFd::try_from(fd).map_err(|_| io::Error::other("pidfd out of range"))?;
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new fd owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            pid,
            fd,
            status: None,
        })
    }

    /// Adds the process's /proc status file (see [`Pidfd::open_status`]).
    #[must_use]
    pub fn with_status(mut self, status: OwnedFd) -> Self {
        self.status = Some(status);
        self
    }

    /// Opens /proc/PID/status of the unreaped child this names.
    pub fn open_status(&self) -> io::Result<OwnedFd> {
        let f = std::fs::File::open(format!("/proc/{}/status", self.pid))?;
        Ok(OwnedFd::from(f))
    }

    /// The status file, to send on.
    pub fn status_fd(&self) -> Option<BorrowedFd<'_>> {
        self.status.as_ref().map(AsFd::as_fd)
    }

    /// The status file's text now (its first 8 KiB), read from offset 0
    /// with pread; `None` without one or once the process is gone.
    pub fn status_text(&self) -> Option<String> {
        read_from_start(self.status.as_ref()?.as_fd())
    }

    /// Wraps a pidfd received from the process's parent for `pid`.
    pub fn from_parts(pid: libc::pid_t, fd: OwnedFd) -> Self {
        Self {
            pid,
            fd,
            status: None,
        }
    }

    /// The pid (for messages and matching exit reports; never for signals).
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// The pidfd, to send on.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Sends SIGKILL; a process that is gone already is not an error.
    pub fn kill(&self) -> io::Result<()> {
        // SAFETY: pidfd_send_signal on an fd we own, no siginfo.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        Err(e)
    }

    /// Waits up to `timeout` for the process to exit; true if it has.
    pub fn wait_exit(&self, timeout: std::time::Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: polls one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        n == 1 && pfd.revents & libc::POLLIN != 0
    }
}

/// Closes every fd except those in `keep` (close_range(2) over the gaps).
pub fn close_fds_except(keep: &[RawFd]) -> io::Result<()> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|fd| u32::try_from(*fd).ok())
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut first = 0u32;
    for fd in keep {
        if fd > first {
            close_range(first, fd - 1)?;
        }
        first = fd + 1;
    }
    close_range(first, u32::MAX)
}

fn close_range(first: u32, last: u32) -> io::Result<()> {
    // SAFETY: close_range only closes descriptors; no memory is involved.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Has the kernel send SIGKILL to this process when its parent dies, and
/// makes sure the parent `parent` is still there (it may have died before
/// the request).
pub fn die_with_parent(parent: libc::pid_t) -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: getppid cannot fail.
    if unsafe { libc::getppid() } != parent {
        return Err(io::Error::other("parent exited"));
    }
    Ok(())
}

/// A pipe (read end, write end), both close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds are new and owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sets the thread name `ps -o comm` shows (at most 15 bytes are kept).
pub fn set_name(name: &str) {
    let mut buf = [0u8; 16];
    for (d, s) in buf.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    // SAFETY: PR_SET_NAME reads a NUL-terminated buffer of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr(), 0, 0, 0) };
}

/// Sets no_new_privs: execve can never grant privileges again.
pub fn no_new_privs() -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The first 8 KiB of an open /proc file, read with pread from offset 0
/// (such files are generated again on each read from the start).
pub fn read_from_start(fd: BorrowedFd<'_>) -> Option<String> {
    let mut buf = [0u8; 8192];
    // SAFETY: reads into a valid buffer of its length.
    let n = unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    let n = usize::try_from(n).ok()?;
    Some(String::from_utf8_lossy(buf.get(..n)?).into_owned())
}

/// All that `fd` holds from offset 0, whatever its position, read with
/// pread alone (std's readers size a file with statx first, which a
/// device's filter may not allow), at most `max` bytes: more is an error.
pub fn read_whole(fd: BorrowedFd<'_>, max: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        let offset = libc::off_t::try_from(out.len()).map_err(io::Error::other)?;
        // SAFETY: pread into a live buffer of its length.
        let n = unsafe {
            libc::pread(
                fd.as_raw_fd(),
                chunk.as_mut_ptr().cast(),
                chunk.len(),
                offset,
            )
        };
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if out.len() > max {
            return Err(io::Error::other(format!("more than {max} bytes")));
        }
    }
}

/// The text of file `path` under directory `dir` (a /proc directory opened
/// before the process left the host's file system), if it can be opened.
pub fn read_under(dir: BorrowedFd<'_>, path: &str) -> Option<String> {
    use std::io::Read;
    let c = std::ffi::CString::new(path).ok()?;
    // SAFETY: openat relative to an open directory with a valid C string.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pidfd_kills_its_process_and_only_it() {
        // SAFETY: fork in a test; the child only waits to be killed.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: waits in poll with no fds; never returns normally.
            unsafe {
                libc::poll(std::ptr::null_mut(), 0, 10_000);
                libc::_exit(0);
            }
        }
        let p = Pidfd::open(pid).unwrap();
        assert_eq!(p.pid(), pid);
        assert!(!p.wait_exit(std::time::Duration::from_millis(50)));
        p.kill().unwrap();
        assert!(p.wait_exit(std::time::Duration::from_secs(5)));
        let mut status = 0;
        // SAFETY: reaps the child we forked.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL);
        // Reaped, its pid free for reuse: the pidfd still names the old
        // process, and a signal reaches nobody.
        p.kill().unwrap();
        assert!(p.wait_exit(std::time::Duration::ZERO));
    }

    #[test]
    fn close_fds_except_keeps_only_the_listed_fds() {
        // SAFETY: fork in a test; the child only makes syscalls and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let mut p = [0; 2];
            // SAFETY: pipe writes two fds into the array.
            unsafe { libc::pipe(p.as_mut_ptr()) };
            let code = match close_fds_except(&[2, p[1]]) {
                // SAFETY: fcntl on raw numbers only queries them.
                Ok(()) => unsafe {
                    let kept = libc::fcntl(p[1], libc::F_GETFD) >= 0;
                    let closed = libc::fcntl(p[0], libc::F_GETFD) < 0;
                    let stdin_closed = libc::fcntl(0, libc::F_GETFD) < 0;
                    if kept && closed && stdin_closed {
                        0
                    } else {
                        1
                    }
                },
                Err(_) => 2,
            };
            // SAFETY: ends the child.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for our child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status));
        assert_eq!(libc::WEXITSTATUS(status), 0);
    }
}
