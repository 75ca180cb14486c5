//! The spawner: a small process forked from the VMM before any other thread
//! exists, which forks and execs device processes on request and reports
//! their exits.
//!
//! Forking a multi-threaded process is unsafe (another thread may hold a
//! lock the child then needs), so the VMM never forks after its vCPU threads
//! start; it asks the spawner, which stays single-threaded. Each device
//! process is `/proc/self/exe` exec'd as `skvm-dev NAME` with its control
//! socket as fd 3, stdin and stdout on /dev/null, and nothing else; it dies
//! with the spawner, which dies with the VMM (PR_SET_PDEATHSIG), so no
//! device outlives skvm however skvm ends.
//!
//! Requests and replies travel on one SOCK_SEQPACKET socket, exit reports on
//! another; both carry fixed-size records.
//!
//! Device processes log on stderr, skvm's own. When that is a regular file
//! (`skvm run 2>log`), a device process could not write it (its file-size
//! limit is 0), so they get a pipe instead whose lines the spawner copies
//! to the file, each device's last lines before its exit is reported.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sandbox::jail;
use sandbox::seccomp::Violation;

/// argv[0] of device processes; `main` recognises it.
pub const DEVICE_ARGV0: &str = "skvm-dev";
/// The fd a device process finds its control socket on.
pub const DEVICE_CONTROL_FD: RawFd = 3;
const RECORD: usize = 64;
const NAME_MAX: usize = 32;
const KIND_MAX: usize = 16;
const KIND_SPAWN: u32 = 1;
const KIND_SPAWNED: u32 = 2;
const KIND_FAILED: u32 = 3;
const KIND_EXITED: u32 = 4;
/// How long a spawn may take before the VMM gives up on the spawner.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(5);

/// How a device process is confined, as the spawner is asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpawnFlags {
    /// New user, pid, mount, net, ipc and uts namespaces and an empty root.
    pub namespaces: bool,
    /// What the seccomp filter does on a forbidden syscall; `None`: no
    /// confinement at all beyond closing fds (no seccomp, capabilities or
    /// rlimits, and no namespaces), for `skvm drive --unconfined`, which
    /// measures what the sandbox costs.
    pub seccomp: Option<Violation>,
}

impl SpawnFlags {
    fn encode(self) -> i32 {
        let mode = match self.seccomp {
            Some(Violation::Kill) => 0,
            Some(Violation::Trap) => 1,
            Some(Violation::Log) => 2,
            None => 3,
        };
        i32::from(self.namespaces) | mode << 1
    }

    fn decode(v: i32) -> Option<Self> {
        let seccomp = match (v >> 1) & 3 {
            0 => Some(Violation::Kill),
            1 => Some(Violation::Trap),
            2 => Some(Violation::Log),
            _ => None,
        };
        let f = Self {
            namespaces: v & 1 != 0,
            seccomp,
        };
        (v & !7 == 0 && f.valid()).then_some(f)
    }

    /// Unconfined processes get no namespaces either.
    fn valid(self) -> bool {
        self.seccomp.is_some() || !self.namespaces
    }

    /// The arguments after `skvm-dev NAME` that tell the device process.
    pub fn args(self) -> [&'static str; 2] {
        [
            match self.seccomp {
                Some(Violation::Kill) => "kill",
                Some(Violation::Trap) => "trap",
                Some(Violation::Log) => "log",
                None => "unconfined",
            },
            if self.namespaces { "ns" } else { "no-ns" },
        ]
    }

    /// Parses what [`SpawnFlags::args`] produced.
    pub fn from_args(seccomp: &str, ns: &str) -> Option<Self> {
        let seccomp = match seccomp {
            "kill" => Some(Violation::Kill),
            "trap" => Some(Violation::Trap),
            "log" => Some(Violation::Log),
            "unconfined" => None,
            _ => return None,
        };
        let namespaces = match ns {
            "ns" => true,
            "no-ns" => false,
            _ => return None,
        };
        let f = Self {
            namespaces,
            seccomp,
        };
        f.valid().then_some(f)
    }
}

/// Proof that this process has a single thread: forking it is safe. Only
/// [`SingleThreaded::claim`] makes one, once per process, after checking
/// `/proc/self/task`; it cannot be sent to another thread, and starting a
/// VM consumes it where the spawner is forked, so "fork before any thread"
/// is the compiler's to check, not a comment's.
#[derive(Debug)]
pub struct SingleThreaded {
    _not_send: std::marker::PhantomData<*const ()>,
}

/// Why [`SingleThreaded::claim`] refused.
#[derive(Debug, thiserror::Error)]
pub enum ThreadsError {
    /// The process has other threads already.
    #[error("the process has {0} threads: the spawner must be forked before any thread starts")]
    Threads(usize),
    /// The token was claimed before.
    #[error("the single-thread token was claimed already")]
    Claimed,
    /// /proc/self/task could not be read.
    #[error("cannot count this process's threads")]
    Proc(#[source] io::Error),
}

static CLAIMED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl SingleThreaded {
    /// The token, if this process has one thread and nobody claimed it.
    pub fn claim() -> Result<Self, ThreadsError> {
        let threads = std::fs::read_dir("/proc/self/task")
            .map_err(ThreadsError::Proc)?
            .count();
        if threads != 1 {
            return Err(ThreadsError::Threads(threads));
        }
        if CLAIMED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(ThreadsError::Claimed);
        }
        Ok(Self {
            _not_send: std::marker::PhantomData,
        })
    }
}

/// A device process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exited {
    /// Its pid.
    pub pid: libc::pid_t,
    /// Its wait status.
    pub status: libc::c_int,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    kind: u32,
    pid: i32,
    value: i32,
    name: String,
    device_kind: String,
}

impl Record {
    fn encode(&self) -> [u8; RECORD] {
        let mut b = [0u8; RECORD];
        b[0..4].copy_from_slice(&self.kind.to_le_bytes());
        b[4..8].copy_from_slice(&self.pid.to_le_bytes());
        b[8..12].copy_from_slice(&self.value.to_le_bytes());
        let name = self.name.as_bytes();
        let n = name.len().min(NAME_MAX);
        b[12] = u8::try_from(n).unwrap_or(0);
        b[16..16 + n].copy_from_slice(&name[..n]);
        let kind = self.device_kind.as_bytes();
        let k = kind.len().min(KIND_MAX);
        b[13] = u8::try_from(k).unwrap_or(0);
        b[48..48 + k].copy_from_slice(&kind[..k]);
        b
    }

    fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != RECORD {
            return None;
        }
        let word = |i: usize| -> Option<[u8; 4]> { b.get(i..i + 4)?.try_into().ok() };
        let n = usize::from(*b.get(12)?);
        let name = std::str::from_utf8(b.get(16..16 + n.min(NAME_MAX))?).ok()?;
        let k = usize::from(*b.get(13)?);
        let device_kind = std::str::from_utf8(b.get(48..48 + k.min(KIND_MAX))?).ok()?;
        Some(Self {
            kind: u32::from_le_bytes(word(0)?),
            pid: i32::from_le_bytes(word(4)?),
            value: i32::from_le_bytes(word(8)?),
            name: name.to_owned(),
            device_kind: device_kind.to_owned(),
        })
    }
}

/// Whether `name` is a valid device name: short, lowercase letters and
/// digits, starting with a letter.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_MAX
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two new fds into the array.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds are new and owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The VMM's handle on the spawner process.
pub struct Spawner {
    requests: Mutex<OwnedFd>,
    events: OwnedFd,
    pid: libc::pid_t,
}

impl Spawner {
    /// Forks the spawner, which `single` proves safe.
    pub fn start(single: &SingleThreaded) -> Result<Self> {
        let _ = single;
        let (req_vmm, req_spawner) = seqpacket_pair().context("cannot create spawner socket")?;
        let (ev_vmm, ev_spawner) = seqpacket_pair().context("cannot create spawner socket")?;
        // SAFETY: getpid cannot fail.
        let vmm = unsafe { libc::getpid() };
        // SAFETY: `single` proves a single thread, so the child is a
        // consistent copy; it only runs `spawner_main`, which never returns.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            bail!("cannot fork the spawner: {}", io::Error::last_os_error());
        }
        if pid == 0 {
            drop(req_vmm);
            drop(ev_vmm);
            spawner_main(vmm, &req_spawner, &ev_spawner);
        }
        Ok(Self {
            requests: Mutex::new(req_vmm),
            events: ev_vmm,
            pid,
        })
    }

    /// Starts device process `name` of kind `kind` with `control` as its
    /// control socket, confined as `how` says. An `io::Error` in the chain
    /// is the errno of the failed fork or clone.
    pub fn spawn(
        &self,
        name: &str,
        kind: &str,
        control: OwnedFd,
        how: SpawnFlags,
    ) -> Result<libc::pid_t> {
        if !valid_name(name) || !ipc::wire::valid_kind(kind) {
            bail!("invalid device name '{name}' or kind '{kind}'");
        }
        let req = Record {
            kind: KIND_SPAWN,
            pid: 0,
            value: how.encode(),
            name: name.to_owned(),
            device_kind: kind.to_owned(),
        };
        let sock = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        ipc::fdpass::send(sock.as_fd(), &req.encode(), &[control.as_fd()])
            .context("cannot reach the spawner")?;
        drop(control);
        let mut buf = [0u8; RECORD];
        let (n, fds) = ipc::fdpass::recv(sock.as_fd(), &mut buf, 0, Some(SPAWN_TIMEOUT))
            .context("no answer from the spawner")?;
        drop(fds);
        match Record::decode(buf.get(..n).unwrap_or_default()) {
            Some(r) if r.kind == KIND_SPAWNED => Ok(r.pid),
            Some(r) if r.kind == KIND_FAILED => {
                let what = if how.namespaces {
                    "cannot create the device process in its namespaces"
                } else {
                    "cannot fork the device process"
                };
                Err(io::Error::from_raw_os_error(r.value)).context(what)
            }
            _ => bail!("bad answer from the spawner"),
        }
    }

    /// The socket exit reports arrive on, to poll.
    pub fn events_fd(&self) -> BorrowedFd<'_> {
        self.events.as_fd()
    }

    /// The next exit report, if one is waiting.
    pub fn next_exit(&self) -> Option<Exited> {
        let mut buf = [0u8; RECORD];
        let (n, _fds) =
            ipc::fdpass::recv(self.events.as_fd(), &mut buf, 0, Some(Duration::ZERO)).ok()?;
        let r = Record::decode(buf.get(..n)?)?;
        (r.kind == KIND_EXITED).then_some(Exited {
            pid: r.pid,
            status: r.value,
        })
    }
}

impl Drop for Spawner {
    /// Hangs up on the spawner, which then exits (taking any device still
    /// alive with it through PR_SET_PDEATHSIG), and reaps it. A spawner that
    /// does not exit within a second is killed.
    fn drop(&mut self) {
        let sock = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: shuts down a socket we own.
        unsafe { libc::shutdown(sock.as_raw_fd(), libc::SHUT_RDWR) };
        for attempt in 0..=100 {
            let mut status = 0;
            // SAFETY: reaps our own child without blocking.
            let rc = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if rc != 0 {
                return;
            }
            if attempt == 100 {
                // SAFETY: kills and reaps our own child.
                unsafe {
                    libc::kill(self.pid, libc::SIGKILL);
                    libc::waitpid(self.pid, &mut status, 0);
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The spawner process: serves spawn requests and reports exits until the
/// VMM goes away.
fn spawner_main(vmm: libc::pid_t, requests: &OwnedFd, events: &OwnedFd) -> ! {
    if sandbox::process::die_with_parent(vmm).is_err() {
        // SAFETY: ends this process without unwinding into the VMM's code.
        unsafe { libc::_exit(0) };
    }
    sandbox::process::set_name("skvm-spawner");
    // Devices must not keep root's supplementary groups. In a user namespace
    // that denies setgroups this fails, and there are none to drop.
    // SAFETY: geteuid cannot fail; setgroups with an empty list.
    if unsafe { libc::geteuid() } == 0 {
        // SAFETY: as above.
        unsafe { libc::setgroups(0, std::ptr::null()) };
    }
    let keep = [2, requests.as_raw_fd(), events.as_raw_fd()];
    let _ = sandbox::process::close_fds_except(&keep);
    let sigchld = match child_signalfd() {
        Ok(fd) => fd,
        // SAFETY: as above.
        Err(_) => unsafe { libc::_exit(1) },
    };
    let log = log_pipe();
    let log_rd = log.as_ref().map_or(-1, |(rd, _)| rd.as_raw_fd());
    let log_wr = log.as_ref().map(|(_, wr)| wr.as_fd());
    loop {
        let mut fds = [
            libc::pollfd {
                fd: requests.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sigchld.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            // Ignored by poll when negative (no log pipe).
            libc::pollfd {
                fd: log_rd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: polls three valid pollfd structs.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 3, -1) };
        if rc < 0 {
            continue;
        }
        // Log lines first: a device's last words come before its exit.
        if log_rd >= 0 {
            copy_log(log_rd);
        }
        if fds[1].revents != 0 {
            drain_signalfd(&sigchld);
            report_exits(events);
        }
        if fds[0].revents != 0 && !serve_request(requests, log_wr) {
            // The VMM is gone; PR_SET_PDEATHSIG takes the devices down.
            // SAFETY: as above.
            unsafe { libc::_exit(0) };
        }
    }
}

/// A pipe for device processes' stderr (read end non-blocking), when the
/// spawner's own stderr is a regular file.
fn log_pipe() -> Option<(OwnedFd, OwnedFd)> {
    // SAFETY: fstat fills a plain-data struct for fd 2.
    let regular = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(2, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFREG
    };
    if !regular {
        return None;
    }
    let (rd, wr) = sandbox::process::pipe().ok()?;
    // SAFETY: fcntl on an fd we own with valid commands.
    unsafe {
        let flags = libc::fcntl(rd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(rd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    Some((above_stdio(rd)?, above_stdio(wr)?))
}

/// `fd` moved to a number above those a device process's fds take (0-3),
/// so that setting those up cannot overwrite it.
fn above_stdio(fd: OwnedFd) -> Option<OwnedFd> {
    // SAFETY: duplicates an fd we own; the new one is owned by nothing else.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    // SAFETY: as above.
    (n >= 0).then(|| unsafe { OwnedFd::from_raw_fd(n) })
}

/// Copies what device processes wrote to the log pipe `rd` to stderr.
fn copy_log(rd: RawFd) {
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: reads into a buffer of the given size; `rd` is
        // non-blocking.
        let n = unsafe { libc::read(rd, buf.as_mut_ptr().cast(), buf.len()) };
        let Ok(n) = usize::try_from(n) else { return };
        if n == 0 {
            return;
        }
        // The spawner was forked single-threaded: std's stderr lock is free.
        let _ = io::Write::write_all(&mut io::stderr(), buf.get(..n).unwrap_or_default());
    }
}

/// SIGCHLD blocked and delivered through a signalfd.
fn child_signalfd() -> io::Result<OwnedFd> {
    // SAFETY: sigset_t is plain data; the calls only fill it in.
    let fd = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn drain_signalfd(fd: &OwnedFd) {
    let mut info = [0u8; 128];
    // SAFETY: reads into a buffer of the given size until it would block.
    while unsafe { libc::read(fd.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) } > 0 {}
}

fn report_exits(events: &OwnedFd) {
    loop {
        let mut status = 0;
        // SAFETY: reaps any exited child without blocking.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
        let r = Record {
            kind: KIND_EXITED,
            pid,
            value: status,
            name: String::new(),
            device_kind: String::new(),
        };
        let _ = ipc::fdpass::send(events.as_fd(), &r.encode(), &[]);
    }
}

/// Serves one request; false when the VMM hung up. `log` becomes the
/// stderr of a device process started.
fn serve_request(requests: &OwnedFd, log: Option<BorrowedFd<'_>>) -> bool {
    let mut buf = [0u8; RECORD];
    let (n, mut fds) = match ipc::fdpass::recv(requests.as_fd(), &mut buf, 1, None) {
        Ok(r) => r,
        Err(ipc::IpcError::Closed) => return false,
        Err(_) => return true,
    };
    let reply = match (Record::decode(buf.get(..n).unwrap_or_default()), fds.pop()) {
        (Some(r), Some(control))
            if r.kind == KIND_SPAWN
                && valid_name(&r.name)
                && ipc::wire::valid_kind(&r.device_kind) =>
        {
            let result = match SpawnFlags::decode(r.value) {
                Some(how) => fork_device((&r.name, &r.device_kind), &control, how, log),
                None => Err(io::Error::from_raw_os_error(libc::EINVAL)),
            };
            match result {
                Ok(pid) => Record {
                    kind: KIND_SPAWNED,
                    pid,
                    value: 0,
                    name: r.name,
                    device_kind: String::new(),
                },
                Err(e) => Record {
                    kind: KIND_FAILED,
                    pid: 0,
                    value: e.raw_os_error().unwrap_or(libc::EIO),
                    name: r.name,
                    device_kind: String::new(),
                },
            }
        }
        _ => Record {
            kind: KIND_FAILED,
            pid: 0,
            value: libc::EINVAL,
            name: String::new(),
            device_kind: String::new(),
        },
    };
    ipc::fdpass::send(requests.as_fd(), &reply.encode(), &[]).is_ok()
}

/// Forks (or, with namespaces, clones) and execs device process `name`.
/// With namespaces, the child waits until its user namespace's id maps are
/// written, then becomes its namespace's root, which is an unprivileged
/// user outside. Its stderr is `log` when given, else the spawner's.
fn fork_device(
    (name, kind): (&str, &str),
    control: &OwnedFd,
    how: SpawnFlags,
    log: Option<BorrowedFd<'_>>,
) -> io::Result<libc::pid_t> {
    let exe = c"/proc/self/exe";
    let argv0 = CString::new(DEVICE_ARGV0).map_err(io::Error::other)?;
    let argv1 = CString::new(name).map_err(io::Error::other)?;
    let argv2 = CString::new(kind).map_err(io::Error::other)?;
    let [a3, a4] = how.args();
    let argv3 = CString::new(a3).map_err(io::Error::other)?;
    let argv4 = CString::new(a4).map_err(io::Error::other)?;
    let argv = [
        argv0.as_ptr(),
        argv1.as_ptr(),
        argv2.as_ptr(),
        argv3.as_ptr(),
        argv4.as_ptr(),
        std::ptr::null(),
    ];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let (sync_rd, sync_wr) = sandbox::process::pipe()?;
    let (uid, gid) = jail::outside_ids();
    // SAFETY: the spawner is single-threaded; the child only makes syscalls
    // on memory prepared above and then execs or exits.
    let pid = unsafe {
        if how.namespaces {
            jail::clone_into_namespaces(jail::NAMESPACES)?
        } else {
            let pid = libc::fork();
            if pid < 0 {
                return Err(io::Error::last_os_error());
            }
            pid
        }
    };
    if pid > 0 {
        drop(sync_rd);
        if how.namespaces {
            // Root inside a container may have no "nobody" to map to: map
            // to itself then.
            // SAFETY: geteuid and getegid cannot fail.
            let (own_uid, own_gid) = unsafe { (libc::geteuid(), libc::getegid()) };
            let mapped = jail::write_id_maps(pid, uid, gid)
                .or_else(|_| jail::write_id_maps(pid, own_uid, own_gid));
            if let Err(e) = mapped {
                // SAFETY: kills and reaps the child we just made.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                }
                return Err(e);
            }
        }
        // SAFETY: writes one byte from a valid buffer.
        unsafe { libc::write(sync_wr.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        return Ok(pid);
    }
    // The child: die with the spawner, control socket on fd 3, /dev/null
    // for stdin and stdout, stderr (or the log pipe) for log lines, nothing
    // else.
    // SAFETY: plain syscalls on valid arguments; the child never returns.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            libc::_exit(126);
        }
        // Wait for the parent (with namespaces: for the id maps). EOF means
        // the spawner is gone or gave up.
        let mut byte = 0u8;
        if libc::read(sync_rd.as_raw_fd(), std::ptr::from_mut(&mut byte).cast(), 1) != 1 {
            libc::_exit(126);
        }
        if how.namespaces && (libc::setresgid(0, 0, 0) != 0 || libc::setresuid(0, 0, 0) != 0) {
            libc::_exit(126);
        }
        // A change of effective ids clears the parent-death signal: set it
        // again, or a wedged device would outlive the spawner (and skvm).
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            libc::_exit(126);
        }
        if libc::dup2(control.as_raw_fd(), DEVICE_CONTROL_FD) < 0 {
            libc::_exit(126);
        }
        if let Some(log) = log {
            if libc::dup2(log.as_raw_fd(), 2) < 0 {
                libc::_exit(126);
            }
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
        }
        if sandbox::process::close_fds_except(&[0, 1, 2, DEVICE_CONTROL_FD]).is_err() {
            libc::_exit(126);
        }
        libc::execve(exe.as_ptr(), argv.as_ptr(), envp.as_ptr());
        libc::_exit(127);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let r = Record {
            kind: KIND_SPAWN,
            pid: 42,
            value: -1,
            name: "rng0".into(),
            device_kind: "rng".into(),
        };
        assert_eq!(Record::decode(&r.encode()), Some(r));
    }

    #[test]
    fn short_or_bad_records_are_rejected() {
        assert_eq!(Record::decode(&[0; 10]), None);
        let mut b = [0u8; RECORD];
        b[12] = 40;
        b[16..48].fill(0xff);
        b[13] = 0;
        assert_eq!(Record::decode(&b), None);
    }

    #[test]
    fn spawn_flags_round_trip() {
        for namespaces in [false, true] {
            for seccomp in [Violation::Kill, Violation::Trap, Violation::Log] {
                let f = SpawnFlags {
                    namespaces,
                    seccomp: Some(seccomp),
                };
                assert_eq!(SpawnFlags::decode(f.encode()), Some(f));
                let [a, b] = f.args();
                assert_eq!(SpawnFlags::from_args(a, b), Some(f));
            }
        }
        let unconfined = SpawnFlags {
            namespaces: false,
            seccomp: None,
        };
        assert_eq!(SpawnFlags::decode(unconfined.encode()), Some(unconfined));
        assert_eq!(
            SpawnFlags::from_args("unconfined", "no-ns"),
            Some(unconfined)
        );
        // Namespaces without the rest is not a combination skvm asks for.
        assert_eq!(SpawnFlags::decode(7), None);
        assert_eq!(SpawnFlags::from_args("unconfined", "ns"), None);
        assert_eq!(SpawnFlags::decode(8), None);
        assert_eq!(SpawnFlags::from_args("allow", "ns"), None);
    }

    #[test]
    fn a_multi_threaded_process_gets_no_token() {
        // The test harness runs tests in threads.
        let _keep = std::thread::spawn(|| std::thread::sleep(Duration::from_millis(200)));
        assert!(matches!(
            SingleThreaded::claim(),
            Err(ThreadsError::Threads(n)) if n > 1
        ));
    }

    #[test]
    fn device_names_are_checked() {
        assert!(valid_name("rng0"));
        assert!(valid_name("blk12"));
        assert!(!valid_name(""));
        assert!(!valid_name("0rng"));
        assert!(!valid_name("rng 0"));
        assert!(!valid_name("../x"));
        assert!(!valid_name(&"a".repeat(40)));
    }
}
