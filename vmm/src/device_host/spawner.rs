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
//! another, in the ipc crate's format (`ipc::wire::spawn`): a request names
//! the device, its kind and its [`Jail`], which the spawner checks, applies
//! the first stage of (namespaces, fds) and hands on to the device process
//! on its command line (`super::jail`).
//!
//! Device processes log on a pipe whose lines the spawner copies to skvm's
//! stderr, sanitized and rate-limited (`super::device_log`), each device's
//! last lines before its exit is reported.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ipc::wait::WaitSet;
use ipc::{seqpacket_pair, Jail, SpawnRequest, SpawnerReply};

use super::device_log::{Bucket, DeviceLog};
use super::{jail, SandboxOpts};
use crate::ctl::SocketFile;
use confine::confine_spawner;
use sandbox::process::Pidfd;

mod confine;

/// argv[0] of device processes; `main` recognises it.
pub const DEVICE_ARGV0: &str = "skvm-dev";
/// The fd a device process finds its control socket on.
pub const DEVICE_CONTROL_FD: RawFd = jail::CONTROL_FD;
/// Largest spawner message.
const MESSAGE_MAX: usize = 256;
/// How long a spawn may take before the VMM gives up on the spawner.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Spawns the spawner serves in a burst, and how many more per second after
/// that: far above what restarts and mem-add rebuilds need (a few a
/// second), far below a fork bomb. Requests above it fail with EAGAIN.
const SPAWN_BURST: u32 = 32;
const SPAWNS_PER_SECOND: u32 = 8;

/// Whether the spawner starts device processes with no confinement at all
/// (`Jail::default()`). Fixed when the spawner is forked, so a compromised
/// VMM cannot ask for an unconfined process later: only `skvm drive
/// --unconfined`, which measures what confinement costs, allows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unconfined {
    /// Refuse such requests (EPERM).
    Refuse,
    /// Serve them.
    Allow,
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

/// Whether `name` is a valid device name: short, lowercase letters and
/// digits, starting with a letter.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= ipc::wire::spawn::MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// The VMM's handle on the spawner process.
pub struct Spawner {
    requests: Mutex<Requests>,
    events: OwnedFd,
    pid: libc::pid_t,
}

impl Spawner {
    /// Forks the spawner, which `single` proves safe. When the VMM ends,
    /// the spawner removes `sockets` (the control socket, a console's)
    /// before it exits.
    pub fn start(
        single: &SingleThreaded,
        sandbox: &SandboxOpts,
        sockets: Vec<SocketFile>,
    ) -> Result<Self> {
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
            spawner_main(vmm, (&req_spawner, &ev_spawner), sandbox, &sockets);
        }
        Ok(Self {
            requests: Mutex::new(Requests {
                sock: req_vmm,
                last_id: 0,
            }),
            events: ev_vmm,
            pid,
        })
    }

    /// Starts device process `name` of kind `kind` with `control` as its
    /// control socket, confined as `jail` says; `share` is the directory a
    /// share root (`jail.root`) is made of. An `io::Error` in the chain is
    /// the errno of the failed fork or clone.
    pub fn spawn(
        &self,
        name: &str,
        kind: &str,
        control: OwnedFd,
        share: Option<BorrowedFd<'_>>,
        jail: &Jail,
    ) -> Result<Pidfd> {
        if !valid_name(name) || !ipc::wire::valid_kind(kind) {
            bail!("invalid device name '{name}' or kind '{kind}'");
        }
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        // Ids start at 1 and skip 0, which answers unreadable requests.
        requests.last_id = requests.last_id.checked_add(1).unwrap_or(1);
        let id = requests.last_id;
        let req = SpawnRequest {
            id,
            name: name.to_owned(),
            kind: kind.to_owned(),
            jail: jail.clone(),
        };
        let bytes = req.encode().context("bad spawn request")?;
        let fds: Vec<BorrowedFd<'_>> = std::iter::once(control.as_fd()).chain(share).collect();
        ipc::fdpass::send(requests.sock.as_fd(), &bytes, &fds)
            .context("cannot reach the spawner")?;
        drop(control);
        let (reply, mut fds) = requests.answer(id)?;
        match reply {
            SpawnerReply::Spawned { pid, .. } => match (fds.pop(), fds.pop(), fds.is_empty()) {
                (Some(status), Some(fd), true) => {
                    Ok(Pidfd::from_parts(pid, fd).with_status(status))
                }
                _ => bail!("the spawner's answer came without the device's pidfd and status file"),
            },
            SpawnerReply::Failed { errno, .. } if errno == libc::EAGAIN => bail!(
                "the spawner refused: more than {SPAWN_BURST} device processes at once or \
                 {SPAWNS_PER_SECOND} a second"
            ),
            SpawnerReply::Failed { errno, .. } if errno == libc::EPERM => {
                bail!("the spawner refused a device process without confinement")
            }
            SpawnerReply::Failed { errno, .. } => {
                let what = if jail.namespaces.is_some() {
                    "cannot create the device process in its namespaces"
                } else {
                    "cannot fork the device process"
                };
                Err(io::Error::from_raw_os_error(errno)).context(what)
            }
            SpawnerReply::Exited { .. } => bail!("bad answer from the spawner"),
        }
    }

    /// The socket exit reports arrive on, to poll.
    pub fn events_fd(&self) -> BorrowedFd<'_> {
        self.events.as_fd()
    }

    /// The next exit report, waiting for it up to `timeout`.
    pub fn wait_exit(&self, timeout: Duration) -> Option<Exited> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(x) = self.next_exit() {
                return Some(x);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The next exit report, if one is waiting.
    pub fn next_exit(&self) -> Option<Exited> {
        let mut buf = [0u8; MESSAGE_MAX];
        let (n, _fds) =
            ipc::fdpass::recv(self.events.as_fd(), &mut buf, 0, Some(Duration::ZERO)).ok()?;
        match SpawnerReply::decode(buf.get(..n)?).ok()? {
            SpawnerReply::Exited { pid, status } => Some(Exited { pid, status }),
            _ => None,
        }
    }
}

/// The request socket and the id of the last request sent on it.
struct Requests {
    sock: OwnedFd,
    last_id: u32,
}

/// The fds a Spawned answer carries: the device's pidfd, then its /proc
/// status file.
const SPAWNED_FDS: usize = 2;

impl Requests {
    /// The spawner's answer to request `id`, within one deadline for the
    /// whole wait. Answers to earlier requests (which came after those
    /// requests timed out) are dropped.
    fn answer(&self, id: u32) -> Result<(SpawnerReply, Vec<OwnedFd>)> {
        let deadline = Instant::now() + SPAWN_TIMEOUT;
        let mut buf = [0u8; MESSAGE_MAX];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (n, mut fds) =
                ipc::fdpass::recv(self.sock.as_fd(), &mut buf, SPAWNED_FDS, Some(left))
                    .context("no answer from the spawner")?;
            let reply = SpawnerReply::decode(buf.get(..n).unwrap_or_default())
                .context("bad answer from the spawner")?;
            let got = match reply {
                SpawnerReply::Spawned { id, .. } | SpawnerReply::Failed { id, .. } => id,
                SpawnerReply::Exited { .. } => return Ok((reply, fds)),
            };
            // Id 0: the spawner could not read the request, which is ours.
            if got == id || got == 0 {
                return Ok((reply, fds));
            }
            if got > id {
                bail!("the spawner answered request {got}, not {id}");
            }
            // A device started for a request that timed out: nobody will
            // greet it; kill it through its pidfd (the first fd) now.
            if let (SpawnerReply::Spawned { pid, .. }, false) = (&reply, fds.is_empty()) {
                let _ = Pidfd::from_parts(*pid, fds.swap_remove(0)).kill();
            }
            crate::log::debug(&format!("spawner: late answer to request {got} dropped"));
        }
    }
}

impl Drop for Spawner {
    /// Hangs up on the spawner, which then exits (taking any device still
    /// alive with it through PR_SET_PDEATHSIG), and reaps it. A spawner that
    /// does not exit within a second is killed.
    fn drop(&mut self) {
        let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: shuts down a socket we own.
        unsafe { libc::shutdown(requests.sock.as_raw_fd(), libc::SHUT_RDWR) };
        for attempt in 0..=100 {
            let mut status = 0;
            // SAFETY: reaps our own child without blocking.
            let rc = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if rc != 0 {
                return;
            }
            if attempt == 100 {
                // SAFETY: kills our own child. Once the VMM has dropped its
                // privileges it may not (the spawner stays root): then the
                // VMM's exit takes the spawner down (PR_SET_PDEATHSIG)
                // rather than a wait that might never end.
                if unsafe { libc::kill(self.pid, libc::SIGKILL) } == 0 {
                    // SAFETY: reaps our own child, killed above.
                    unsafe { libc::waitpid(self.pid, &mut status, 0) };
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The spawner process: serves spawn requests and reports exits until the
/// VMM goes away. Confined (unless `sandbox` is off or unconfined) once it
/// is set up: the VM's unprivileged user if it was root, then its own
/// allowlist ([`confine_spawner`]).
fn spawner_main(
    vmm: libc::pid_t,
    (requests, events): (&OwnedFd, &OwnedFd),
    sandbox: &SandboxOpts,
    sockets: &[SocketFile],
) -> ! {
    let unconfined = sandbox.spawner_unconfined();
    if sandbox::process::die_with_parent(vmm).is_err() {
        // SAFETY: ends this process without unwinding into the VMM's code.
        unsafe { libc::_exit(0) };
    }
    sandbox::process::set_name("skvm-spawner");
    // Not dumpable: a compromised VMM (same uid) cannot open
    // /proc/<spawner>/mem or ptrace it. Children inherit this and set it
    // back (see fork_device).
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        // SAFETY: ends this process without unwinding into the VMM's code.
        unsafe { libc::_exit(1) };
    }
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
    let Ok(mut log) = DeviceLog::new(Instant::now()) else {
        // SAFETY: as above.
        unsafe { libc::_exit(1) };
    };
    // SAFETY: fd 2 stays open for the spawner's life.
    let stderr = unsafe { BorrowedFd::borrow_raw(2) };
    let removal = match confine_spawner(vmm, sandbox, sockets) {
        Ok(r) => r,
        Err(e) => {
            crate::log::error(&format!("the spawner cannot confine itself: {e:#}"));
            // SAFETY: as above.
            unsafe { libc::_exit(1) };
        }
    };
    let mut budget = Bucket::new(SPAWN_BURST, SPAWNS_PER_SECOND, Instant::now());
    let mut wake = WaitSet::with_capacity(3);
    wake.add(requests, Wake::Request);
    wake.add(&sigchld, Wake::Child);
    wake.add(log.reader(), Wake::Log);
    loop {
        let Ok(ready) = wake.wait(None) else {
            continue;
        };
        let (request, child) = (ready.contains(Wake::Request), ready.contains(Wake::Child));
        if child {
            // A device's last words (up to 16 chunks) before its exit.
            for _ in 0..16 {
                if log.copy(stderr, Instant::now()) == 0 {
                    break;
                }
            }
            drain_signalfd(&sigchld);
            report_exits(events);
        } else if ready.contains(Wake::Log) {
            log.copy(stderr, Instant::now());
        }
        if request && !serve_request(requests, Some(log.writer()), unconfined, &mut budget) {
            // The VMM is gone; PR_SET_PDEATHSIG takes the devices down.
            removal.finish();
            // SAFETY: as above.
            unsafe { libc::_exit(0) };
        }
    }
}

/// What wakes the spawner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// A spawn request, or the VMM hung up.
    Request,
    /// A child exited.
    Child,
    /// A device wrote a log line.
    Log,
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
        if let Ok(b) = (SpawnerReply::Exited { pid, status }).encode() {
            let _ = ipc::fdpass::send(events.as_fd(), &b, &[]);
        }
    }
}

/// Serves one request; false when the VMM hung up. `log` becomes the
/// stderr of a device process started. A request is served only if it is
/// well formed, its jail acceptable (and confined unless `unconfined`
/// allows otherwise), and within the rate limit.
fn serve_request(
    requests: &OwnedFd,
    log: Option<BorrowedFd<'_>>,
    unconfined: Unconfined,
    budget: &mut Bucket,
) -> bool {
    let mut buf = [0u8; MESSAGE_MAX];
    let (n, fds) = match ipc::fdpass::recv(requests.as_fd(), &mut buf, 2, None) {
        Ok(r) => r,
        Err(ipc::IpcError::Closed) => return false,
        Err(_) => return true,
    };
    let request = SpawnRequest::decode(buf.get(..n).unwrap_or_default()).ok();
    let mut pidfd = None;
    let reply = match (request, fds.as_slice()) {
        (Some(r), [control, share @ ..])
            if r.id != 0
                && valid_name(&r.name)
                && ipc::wire::valid_kind(&r.kind)
                && jail::acceptable(&r.jail)
                && share_fits(&r.jail, share) =>
        {
            let share = share.first();
            let failed = |errno| SpawnerReply::Failed { id: r.id, errno };
            if r.jail == Jail::default() && unconfined == Unconfined::Refuse {
                failed(libc::EPERM)
            } else if !budget.take(1, Instant::now()) {
                failed(libc::EAGAIN)
            } else {
                // The pidfd is opened before the child can be reaped (this
                // loop reaps), so it names that child and no later one.
                match fork_device(&r, control, share, log).and_then(handle_of) {
                    Ok(p) => {
                        let pid = p.pid();
                        pidfd = Some(p);
                        SpawnerReply::Spawned { id: r.id, pid }
                    }
                    Err(e) => failed(e.raw_os_error().unwrap_or(libc::EIO)),
                }
            }
        }
        (r, _) => SpawnerReply::Failed {
            id: r.map_or(0, |r| r.id),
            errno: libc::EINVAL,
        },
    };
    let fds: Vec<BorrowedFd<'_>> = pidfd
        .iter()
        .flat_map(|p| [Some(p.as_fd()), p.status_fd()])
        .flatten()
        .collect();
    match reply.encode() {
        Ok(b) => ipc::fdpass::send(requests.as_fd(), &b, &fds).is_ok(),
        Err(_) => true,
    }
}

/// Whether `share` is what a request with `jail` must come with: nothing,
/// or for a share root one directory.
fn share_fits(jail: &Jail, share: &[OwnedFd]) -> bool {
    match (jail.root, share) {
        (ipc::Root::Empty, []) => true,
        (ipc::Root::Share { .. }, [dir]) => {
            // SAFETY: fstat into a zeroed stat, on an fd we hold.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            let ok = unsafe { libc::fstat(dir.as_raw_fd(), &mut st) } == 0;
            ok && st.st_mode & libc::S_IFMT == libc::S_IFDIR
        }
        _ => false,
    }
}

/// A pidfd for the child `pid` just started, with its /proc status file
/// (what `skvm ctl status` reads its memory from, with no open in the
/// VMM); the child is killed if there cannot be both (a device the VMM
/// could not kill safely is not started).
fn handle_of(pid: libc::pid_t) -> io::Result<Pidfd> {
    let p = Pidfd::open(pid).inspect_err(|_| {
        // SAFETY: kills our own child, not reaped yet (only this loop
        // reaps), so the pid is still its.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    })?;
    match p.open_status() {
        Ok(status) => Ok(p.with_status(status)),
        Err(e) => {
            let _ = p.kill();
            Err(e)
        }
    }
}

/// Stage 1 of `r.jail`: forks (or, with namespaces, clones) and execs
/// device process `r.name` as `skvm-dev NAME KIND JAIL`. With namespaces,
/// the child waits until its user namespace's id maps are written, then
/// becomes its namespace's root, which is an unprivileged user outside. Its
/// stderr is `log` when given, else the spawner's; a share root's directory
/// is its fd [`jail::ROOT_FD`].
fn fork_device(
    r: &SpawnRequest,
    control: &OwnedFd,
    share: Option<&OwnedFd>,
    log: Option<BorrowedFd<'_>>,
) -> io::Result<libc::pid_t> {
    // Above the fds the child puts them on, so that neither lands on the
    // other's place before it is moved.
    let control = above_device_fds(control)?;
    let share = share.map(above_device_fds).transpose()?;
    let jail_arg = jail::to_arg(&r.jail).map_err(io::Error::other)?;
    let args = [DEVICE_ARGV0, &r.name, &r.kind, &jail_arg]
        .map(|a| CString::new(a).map_err(io::Error::other));
    let [Ok(argv0), Ok(argv1), Ok(argv2), Ok(argv3)] = args else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    let argv = [
        argv0.as_ptr(),
        argv1.as_ptr(),
        argv2.as_ptr(),
        argv3.as_ptr(),
        std::ptr::null(),
    ];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let (sync_rd, sync_wr) = sandbox::process::pipe()?;
    // The child says when it is dumpable again: until then its /proc files
    // belong to root, and an unprivileged spawner could not write its id
    // maps.
    let (ready_rd, ready_wr) = sandbox::process::pipe()?;
    let namespaces = r.jail.namespaces;
    // Both are plain clone(2) calls, the only flags the spawner's filter
    // lets through.
    let flags = if namespaces.is_some() {
        sandbox::jail::NAMESPACES
    } else {
        0
    };
    // SAFETY: the spawner is single-threaded; the child only makes syscalls
    // on memory prepared above and then execs or exits.
    let pid = unsafe { sandbox::jail::clone_into_namespaces(flags)? };
    if pid > 0 {
        drop(sync_rd);
        drop(ready_wr);
        return release_child(pid, &ready_rd, &sync_wr, namespaces);
    }
    let fds = ChildFds {
        ready: ready_wr.as_raw_fd(),
        sync: sync_rd.as_raw_fd(),
        log: log.map(|l| l.as_raw_fd()),
        control: control.as_raw_fd(),
        share: share.as_ref().map(AsRawFd::as_raw_fd),
    };
    // SAFETY: this is the new child of a single-threaded process; `fds`,
    // `argv` and `envp` were prepared before the clone.
    unsafe { become_device(&fds, namespaces.is_some(), r, (&argv, &envp)) }
}

/// The spawner's side of [`fork_device`] once child `pid` exists: waits
/// until it is dumpable again (`ready`), writes its id maps when it has
/// its own namespaces, then lets it go on (`sync`). A child that died, or
/// whose maps cannot be written, is killed and reaped.
fn release_child(
    pid: libc::pid_t,
    ready: &OwnedFd,
    sync: &OwnedFd,
    namespaces: Option<ipc::IdMap>,
) -> io::Result<libc::pid_t> {
    let kill = || {
        // SAFETY: kills and reaps the child this spawner just made.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    };
    let mut byte = 0u8;
    // SAFETY: reads one byte into a valid buffer; EOF means the child died
    // first.
    let got = unsafe { libc::read(ready.as_raw_fd(), std::ptr::from_mut(&mut byte).cast(), 1) };
    if got != 1 {
        kill();
        return Err(io::Error::other("the new device process died at once"));
    }
    if let Some(map) = namespaces {
        // Root inside a container may have no "nobody" to map to: map to
        // itself then.
        // SAFETY: geteuid and getegid cannot fail.
        let (own_uid, own_gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let mapped = sandbox::jail::write_id_maps(pid, map.uid, map.gid)
            .or_else(|_| sandbox::jail::write_id_maps(pid, own_uid, own_gid));
        if let Err(e) = mapped {
            kill();
            return Err(e);
        }
    }
    // SAFETY: writes one byte from a valid buffer.
    unsafe { libc::write(sync.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
    Ok(pid)
}

/// The fds the child of [`fork_device`] works with, as numbers (it makes
/// no allocation and drops nothing before it execs).
struct ChildFds {
    /// Where it says it is dumpable again.
    ready: RawFd,
    /// Where it waits for the spawner (with namespaces: for its id maps).
    sync: RawFd,
    /// Its stderr, when the device's log is a pipe.
    log: Option<RawFd>,
    /// Its control socket, to go on fd 3.
    control: RawFd,
    /// A share root's directory, to go on [`jail::ROOT_FD`].
    share: Option<RawFd>,
}

/// The child's side of [`fork_device`]: dies with the spawner, waits to be
/// let go on, becomes its namespace's root (`namespaces`), puts its fds in
/// place (control socket on fd 3, /dev/null for stdin and stdout, stderr
/// or the log pipe for log lines, nothing else) and execs `argv`.
///
/// # Safety
///
/// Only in the new child of a single-threaded process: it makes plain
/// system calls on memory prepared before the clone and never returns.
unsafe fn become_device(
    fds: &ChildFds,
    namespaces: bool,
    r: &SpawnRequest,
    (argv, envp): (&[*const libc::c_char; 5], &[*const libc::c_char; 1]),
) -> ! {
    // SAFETY: plain syscalls on valid arguments (the caller's contract).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0
            || libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) != 0
            || libc::write(fds.ready, [1u8].as_ptr().cast(), 1) != 1
        {
            libc::_exit(126);
        }
        // Wait for the parent (with namespaces: for the id maps). EOF means
        // the spawner is gone or gave up.
        let mut byte = 0u8;
        if libc::read(fds.sync, std::ptr::from_mut(&mut byte).cast(), 1) != 1 {
            libc::_exit(126);
        }
        if namespaces && (libc::setresgid(0, 0, 0) != 0 || libc::setresuid(0, 0, 0) != 0) {
            libc::_exit(126);
        }
        // A change of effective ids clears the parent-death signal: set it
        // again, or a wedged device would outlive the spawner (and skvm).
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            libc::_exit(126);
        }
        // The log first: it may sit on a place the others take.
        if let Some(log) = fds.log {
            if libc::dup2(log, 2) < 0 {
                libc::_exit(126);
            }
        }
        if libc::dup2(fds.control, DEVICE_CONTROL_FD) < 0 {
            libc::_exit(126);
        }
        if let Some(share) = fds.share {
            if libc::dup2(share, jail::ROOT_FD) < 0 {
                libc::_exit(126);
            }
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
        }
        if sandbox::process::close_fds_except(jail::kept_fds(&r.jail)).is_err() {
            libc::_exit(126);
        }
        libc::execve(c"/proc/self/exe".as_ptr(), argv.as_ptr(), envp.as_ptr());
        libc::_exit(127);
    }
}

/// A copy of `fd` numbered above every fd a device process is given.
fn above_device_fds(fd: &OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC makes a new fd, owned once checked.
    let copy = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, jail::ROOT_FD + 1) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_threaded_process_gets_no_token() {
        // The test harness runs tests in threads.
        let _keep = std::thread::spawn(|| std::thread::sleep(Duration::from_millis(200)));
        assert!(matches!(
            SingleThreaded::claim(),
            Err(ThreadsError::Threads(n)) if n > 1
        ));
    }

    /// What the spawner answers to `req` (sent with one fd, as the VMM
    /// does), served in this process: every case here is refused before
    /// any fork.
    fn serve(req: &SpawnRequest, unconfined: Unconfined, budget: &mut Bucket) -> SpawnerReply {
        let (vmm, spawner) = seqpacket_pair().unwrap();
        let bytes = req.encode().unwrap();
        ipc::fdpass::send(vmm.as_fd(), &bytes, &[vmm.as_fd()]).unwrap();
        assert!(serve_request(&spawner, None, unconfined, budget));
        let mut buf = [0u8; MESSAGE_MAX];
        let (n, _) = ipc::fdpass::recv(vmm.as_fd(), &mut buf, 0, Some(SPAWN_TIMEOUT)).unwrap();
        SpawnerReply::decode(&buf[..n]).unwrap()
    }

    fn request(id: u32, jail: Jail) -> SpawnRequest {
        SpawnRequest {
            id,
            name: "rng0".into(),
            kind: "rng".into(),
            jail,
        }
    }

    #[test]
    fn the_spawner_refuses_what_it_was_not_started_for() {
        let mut budget = Bucket::new(SPAWN_BURST, SPAWNS_PER_SECOND, Instant::now());
        // No confinement at all: only a spawner started for `skvm drive
        // --unconfined` serves it, whatever the request says.
        let unconfined = request(7, Jail::default());
        assert_eq!(
            serve(&unconfined, Unconfined::Refuse, &mut budget),
            SpawnerReply::Failed {
                id: 7,
                errno: libc::EPERM
            }
        );
        // Partly confined, or a namespace root mapped to host root: never.
        let partial = Jail {
            no_new_privs: true,
            ..Jail::default()
        };
        let root = Jail {
            namespaces: Some(ipc::IdMap { uid: 0, gid: 0 }),
            no_new_privs: true,
            drop_capabilities: true,
            seccomp: Some(ipc::SeccompAction::Kill),
            ..Jail::default()
        };
        for (id, jail) in [(8, partial), (9, root)] {
            assert_eq!(
                serve(&request(id, jail), Unconfined::Allow, &mut budget),
                SpawnerReply::Failed {
                    id,
                    errno: libc::EINVAL
                }
            );
        }
        // Id 0 is not a request's.
        let zero = request(0, Jail::default());
        assert!(matches!(
            serve(&zero, Unconfined::Allow, &mut budget),
            SpawnerReply::Failed { id: 0, errno } if errno == libc::EINVAL
        ));
    }

    #[test]
    fn a_share_root_comes_with_one_directory_and_nothing_else_with_one() {
        let fd = |p: &str| OwnedFd::from(std::fs::File::open(p).unwrap());
        let (dir, file) = (fd("/"), fd("/proc/self/status"));
        let share = Jail {
            root: ipc::Root::Share { read_only: true },
            ..Jail::default()
        };
        let empty = Jail::default();
        assert!(share_fits(&empty, &[]));
        assert!(share_fits(&share, std::slice::from_ref(&dir)));
        assert!(!share_fits(&empty, std::slice::from_ref(&dir)));
        assert!(!share_fits(&share, &[]));
        assert!(!share_fits(&share, &[file]));
        assert!(!share_fits(&share, &[dir, fd("/")]));
    }

    #[test]
    fn the_spawner_refuses_spawns_over_its_rate() {
        // Empty, and not refilled for an hour whatever the test's pace.
        let later = Instant::now() + Duration::from_secs(3600);
        let mut budget = Bucket::empty_until(SPAWN_BURST, SPAWNS_PER_SECOND, later);
        let confined = Jail {
            no_new_privs: true,
            drop_capabilities: true,
            seccomp: Some(ipc::SeccompAction::Kill),
            ..Jail::default()
        };
        assert_eq!(
            serve(&request(3, confined), Unconfined::Refuse, &mut budget),
            SpawnerReply::Failed {
                id: 3,
                errno: libc::EAGAIN
            }
        );
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
